#!/usr/bin/env bash
# The MLflow tracking server and model registry of the production setup: PostgreSQL for runs and
# registry, a proxied artifact store, basic authentication, loopback by default.
#
# compose.yaml's `mlflow` service and `make test-postgres` both start the server with this script.
#   MLFLOW_BACKEND_STORE_URI       postgresql+psycopg2://mlflow@HOST:5432/mlflow (no password in the URI)
#   LOOP_MLFLOW_AUTH_DB_URI        postgresql+psycopg2://mlflow@HOST:5432/mlflow_auth: users and permissions
#   PGPASSWORD                     the mlflow database role's password (libpq reads it; it stays out
#                                  of URIs, the command line and the auth config file)
#   MLFLOW_ARTIFACTS_DESTINATION   where artifacts are stored (a mounted folder or s3://bucket/path);
#                                  clients upload and download through the server, with their credentials
#   MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD   the admin created on the first start
#   MLFLOW_FLASK_SERVER_SECRET_KEY a random secret (CSRF protection of the user admin pages)
#   LOOP_MLFLOW_DEFAULT_PERMISSION what a signed-in user may do without a grant (NO_PERMISSIONS)
#   LOOP_MLFLOW_HOST / LOOP_MLFLOW_PORT / LOOP_MLFLOW_WORKERS   127.0.0.1, 5000, 2
#   MLFLOW_SERVER_ALLOWED_HOSTS    Host headers accepted besides localhost and private addresses
set -euo pipefail

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI, e.g. postgresql+psycopg2://mlflow@postgres:5432/mlflow}"
: "${LOOP_MLFLOW_AUTH_DB_URI:?set LOOP_MLFLOW_AUTH_DB_URI, e.g. postgresql+psycopg2://mlflow@postgres:5432/mlflow_auth}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION: a folder or s3://bucket/path for run artifacts and models}"
: "${MLFLOW_AUTH_ADMIN_USERNAME:?set MLFLOW_AUTH_ADMIN_USERNAME: the production MLflow server does not run without authentication}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?set MLFLOW_AUTH_ADMIN_PASSWORD: the production MLflow server does not run without authentication}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SERVER_SECRET_KEY to a long random secret}"
for uri in "$MLFLOW_BACKEND_STORE_URI" "$LOOP_MLFLOW_AUTH_DB_URI"; do
  case "$uri" in
    postgresql+psycopg2://*:*@*)
      echo "mlflow-server: keep the password out of the database URI (it would show in the process list); give it in PGPASSWORD" >&2
      exit 2 ;;
    postgresql+psycopg2://*) ;;
    *) # SQLAlchemy 2.1 maps a plain postgresql:// to psycopg 3; requirements-server.txt installs psycopg2.
      echo "mlflow-server: the production MLflow server runs on PostgreSQL through psycopg2: give postgresql+psycopg2://USER@HOST:PORT/DB, not '${uri%%://*}://...'" >&2
      exit 2 ;;
  esac
done
: "${PGPASSWORD:?set PGPASSWORD: the password of the mlflow database role}"

# The auth app reads its database from a config file: written to a private folder, with no secret in it.
config_dir="$(mktemp -d)"
chmod 700 "$config_dir"
cat > "$config_dir/basic_auth.ini" <<INI
[mlflow]
default_permission = ${LOOP_MLFLOW_DEFAULT_PERMISSION:-NO_PERMISSIONS}
database_uri = ${LOOP_MLFLOW_AUTH_DB_URI}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH="$config_dir/basic_auth.ini"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
export MLFLOW_DISABLE_TELEMETRY="${MLFLOW_DISABLE_TELEMETRY:-true}"

exec "${PYTHON:-python3}" -m mlflow server --app-name basic-auth \
  --host "${LOOP_MLFLOW_HOST:-127.0.0.1}" --port "${LOOP_MLFLOW_PORT:-5000}" --workers "${LOOP_MLFLOW_WORKERS:-2}"
