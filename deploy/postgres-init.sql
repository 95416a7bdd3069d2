-- PostgreSQL for alignd (docker-compose.yml): two databases on one server, each owned by its own role.
--   alignd  the event store, projections and audit trail (schema: `alignd db upgrade`, the `migrate` service)
--   mlflow  MLflow's tracking and model-registry store (schema: created by `mlflow server` itself)
-- The postgres image runs this once, on an empty data volume, as the superuser. The passwords come from the
-- container's environment (psql's \getenv), so they live in deploy/alignd.env and nowhere in this file.

\set ON_ERROR_STOP on

\getenv alignd_password POSTGRES_ALIGND_PASSWORD
\getenv mlflow_password POSTGRES_MLFLOW_PASSWORD

\if :{?alignd_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'POSTGRES_ALIGND_PASSWORD is not set (see deploy/alignd.env.example)'; END $$;
\endif
\if :{?mlflow_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'POSTGRES_MLFLOW_PASSWORD is not set (see deploy/alignd.env.example)'; END $$;
\endif

CREATE ROLE alignd LOGIN PASSWORD :'alignd_password';
CREATE DATABASE alignd OWNER alignd;
REVOKE ALL ON DATABASE alignd FROM PUBLIC;
GRANT ALL ON DATABASE alignd TO alignd;

CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
GRANT ALL ON DATABASE mlflow TO mlflow;
-- (Each owner may create tables in its database's public schema: since PostgreSQL 15 that schema belongs to
-- pg_database_owner.)
