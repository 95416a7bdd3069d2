-- PostgreSQL for alignd (docker-compose.yml): two databases on one server, each owned by its own role.
--   alignd  the event store, projections and audit trail (schema: `alignd db upgrade`, the `migrate` service)
--   mlflow  MLflow's tracking and model-registry store (schema: created by `mlflow server` itself)
-- The postgres image runs this once, on an empty data volume, as the superuser. The roles' passwords are read from
-- the secret files that POSTGRES_ALIGND_PASSWORD_FILE and POSTGRES_MLFLOW_PASSWORD_FILE name (Docker secrets under
-- /run/secrets, made by deploy/make-secrets.sh): they are in neither this file nor any environment variable.

\set ON_ERROR_STOP on

\getenv alignd_password_file POSTGRES_ALIGND_PASSWORD_FILE
\getenv mlflow_password_file POSTGRES_MLFLOW_PASSWORD_FILE

\if :{?alignd_password_file}
\else
DO $$ BEGIN RAISE EXCEPTION 'POSTGRES_ALIGND_PASSWORD_FILE is not set (docker-compose.yml, docs/deployment.md)'; END $$;
\endif
\if :{?mlflow_password_file}
\else
DO $$ BEGIN RAISE EXCEPTION 'POSTGRES_MLFLOW_PASSWORD_FILE is not set (docker-compose.yml, docs/deployment.md)'; END $$;
\endif

-- psql runs the backquoted command and keeps its output; :'name' is the variable quoted for the shell. Trailing
-- line ends are dropped, as alignd's *_FILE settings and the postgres image's POSTGRES_PASSWORD_FILE do.
\set alignd_password `cat -- :'alignd_password_file'`
\set mlflow_password `cat -- :'mlflow_password_file'`
SELECT rtrim(:'alignd_password', E'\r\n') AS alignd_password, rtrim(:'mlflow_password', E'\r\n') AS mlflow_password
\gset
SELECT :'alignd_password' <> '' AS alignd_password_read, :'mlflow_password' <> '' AS mlflow_password_read
\gset

\if :alignd_password_read
\else
\warn 'cannot read a password from' :alignd_password_file '(POSTGRES_ALIGND_PASSWORD_FILE): missing or empty'
DO $$ BEGIN RAISE EXCEPTION 'no password for the alignd role: create the secret file (sh deploy/make-secrets.sh)'; END $$;
\endif
\if :mlflow_password_read
\else
\warn 'cannot read a password from' :mlflow_password_file '(POSTGRES_MLFLOW_PASSWORD_FILE): missing or empty'
DO $$ BEGIN RAISE EXCEPTION 'no password for the mlflow role: create the secret file (sh deploy/make-secrets.sh)'; END $$;
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
