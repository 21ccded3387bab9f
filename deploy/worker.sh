#!/usr/bin/env bash
# The worker of the production setup: `loop serve` registers the deployments and automations with
# the Prefect server and runs them when due (inbox every 15 min, daily monitoring and maintenance,
# the weekly cycle and retraining, approval requests). compose.yaml's `worker` service and
# `make test-postgres` both start it with this script.
#
# It talks to the servers as an authenticated client: PREFECT_API_AUTH_STRING (user:password, the
# server's PREFECT_SERVER_API_AUTH_STRING) and MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
set -euo pipefail

: "${PREFECT_API_URL:?set PREFECT_API_URL, e.g. http://prefect:4200/api: without it the deployments would live on a temporary local API}"
: "${PREFECT_API_AUTH_STRING:?set PREFECT_API_AUTH_STRING to the Prefect server user:password}"
: "${MLFLOW_TRACKING_URI:?set MLFLOW_TRACKING_URI, e.g. http://mlflow:5000}"
: "${MLFLOW_TRACKING_USERNAME:?set MLFLOW_TRACKING_USERNAME: the MLflow server requires authentication}"
: "${MLFLOW_TRACKING_PASSWORD:?set MLFLOW_TRACKING_PASSWORD: the MLflow server requires authentication}"
: "${LOOP_PSEUDONYM_KEY:?set LOOP_PSEUDONYM_KEY: the secret that pseudonymises ids before they are stored}"

exec "${PYTHON:-python3}" -m flows.cli serve
