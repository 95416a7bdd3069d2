#!/bin/sh
# Entrypoint of the MLflow image (deploy/mlflow.Dockerfile): `mlflow ARGS...`, with the backend database's password
# read from the file PGPASSWORD_FILE names (a Docker secret) into libpq's PGPASSWORD. The password is then in
# neither the compose file, the container's configuration (docker inspect) nor the command line (--backend-store-uri
# names the user alone: postgresql+psycopg://mlflow@postgres:5432/mlflow).
set -eu

if [ -n "${PGPASSWORD_FILE:-}" ]; then
    if [ ! -r "$PGPASSWORD_FILE" ] || [ ! -s "$PGPASSWORD_FILE" ]; then
        echo "mlflow-entrypoint: PGPASSWORD_FILE=$PGPASSWORD_FILE is missing, unreadable or empty;" \
            "create the secret file (sh deploy/make-secrets.sh, docs/deployment.md)" >&2
        exit 1
    fi
    # $(...) drops the trailing newline(s), as alignd's *_FILE settings and PostgreSQL's *_FILE variables do.
    PGPASSWORD="$(cat "$PGPASSWORD_FILE")"
    export PGPASSWORD
    unset PGPASSWORD_FILE
fi

exec mlflow "$@"
