# syntax=docker/dockerfile:1
# The frontend image: python -m frontend as uid 10001, nothing but its pinned run-time packages.
#   docker build -f docker/frontend.Dockerfile -t codedserve/frontend:0.1.0 .
# Build stage: a venv with the pinned requirements, then the project itself (--no-deps: nothing unpinned).
# The project's build (setup.py) generates the gRPC stubs from protos/ with grpcio-tools; no stub is copied in.
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements-serve.txt requirements-coding.txt ./
RUN python -m venv /opt/venv && /opt/venv/bin/pip install -r requirements-serve.txt
COPY . .
RUN /opt/venv/bin/pip install --no-deps . && rm -rf build

# Run stage: the same base (the venv's interpreter), the venv, no compiler, no source tree, not root.
FROM python:3.11.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /tmp
EXPOSE 8100 8103 9100
ENTRYPOINT ["/opt/venv/bin/python", "-m", "frontend"]
