# syntax=docker/dockerfile:1
#
# The MLflow tracking and registry server of docker-compose.yml, in an image of its own: MLflow and PostgreSQL's
# driver on python:3.11-slim, without alignd, torch or the models (alignd's image is several times larger).
#
#   docker build -t alignd-mlflow:local -f deploy/mlflow.Dockerfile deploy
#
# MLFLOW_VERSION and PSYCOPG_VERSION are pinned within pyproject.toml's constraints on mlflow and psycopg, so the
# server and alignd's MLflow client share a major version (tests/unit/test_deployment.py checks it). The entrypoint
# reads the backend database's password from the file PGPASSWORD_FILE names (deploy/mlflow-entrypoint.sh).

FROM python:3.11-slim

ARG MLFLOW_VERSION=3.17.2
ARG PSYCOPG_VERSION=3.3.9

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN python -m pip install "mlflow==${MLFLOW_VERSION}" "psycopg[binary]==${PSYCOPG_VERSION}" \
 && mlflow --version

# /mlartifacts: the artifact store (`--artifacts-destination`), owned by the unprivileged user so that a named volume
# mounted there starts out writable by it.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/mlflow --shell /usr/sbin/nologin mlflow \
 && mkdir -p /mlartifacts \
 && chown mlflow:mlflow /mlartifacts

COPY --chmod=0755 mlflow-entrypoint.sh /usr/local/bin/mlflow-entrypoint

WORKDIR /home/mlflow
USER mlflow

EXPOSE 5000

# python:3.11-slim has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]

ENTRYPOINT ["mlflow-entrypoint"]
CMD ["server", "--host", "0.0.0.0", "--port", "5000"]
