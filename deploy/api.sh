#!/usr/bin/env bash
# The scoring service of the production setup: `loop api` (decisions and outcomes over HTTP).
# compose.yaml's `api` service and `make test-postgres` both start it with this script.
#
# LOOP_API_HOST / LOOP_API_PORT say where it listens (127.0.0.1:8000 unless told otherwise); here a
# bearer token (LOOP_API_TOKEN) is required even on loopback, as every caller of a production
# service should authenticate. It reads the champions from the MLflow server with
# MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
set -euo pipefail

: "${LOOP_API_TOKEN:?set LOOP_API_TOKEN: the production scoring service requires a bearer token}"
: "${MLFLOW_TRACKING_URI:?set MLFLOW_TRACKING_URI, e.g. http://mlflow:5000}"
: "${MLFLOW_TRACKING_USERNAME:?set MLFLOW_TRACKING_USERNAME: the MLflow server requires authentication}"
: "${MLFLOW_TRACKING_PASSWORD:?set MLFLOW_TRACKING_PASSWORD: the MLflow server requires authentication}"
: "${LOOP_PSEUDONYM_KEY:?set LOOP_PSEUDONYM_KEY: the secret that pseudonymises ids before they are stored}"

exec "${PYTHON:-python3}" -m flows.cli api
