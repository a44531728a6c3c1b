# syntax=docker/dockerfile:1
# The kchat worker image: docker build -t kchat-faust:0.1.0 .
# Builder stage: a virtual environment with the package installed from pyproject.toml.
# Final stage: the same slim Python with that environment only, no compilers, a non-root user.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# Compilers for any dependency without a wheel for this platform; they stay in this stage.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kchat_faust ./kchat_faust
COPY cli ./cli
RUN pip install . \
    && python -c "import kchat_faust"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    KCHAT_DATADIR=/var/lib/kchat
RUN groupadd --system --gid 10001 kchat \
    && useradd --system --uid 10001 --gid kchat --home-dir /var/lib/kchat --no-create-home \
       --shell /usr/sbin/nologin kchat \
    && mkdir -p /var/lib/kchat \
    && chown kchat:kchat /var/lib/kchat
COPY --from=builder /opt/venv /opt/venv
WORKDIR /var/lib/kchat
USER 10001:10001
EXPOSE 6066
CMD ["faust", "-A", "kchat_faust", "worker", "-l", "info", "--web-port", "6066"]
