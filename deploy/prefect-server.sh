#!/usr/bin/env bash
# The Prefect API and UI of the production setup: PostgreSQL, basic authentication, loopback by default.
#
# compose.yaml's `prefect` service and `make test-postgres` both start the server with this script.
# Settings are Prefect's own variables:
#   PREFECT_SERVER_DATABASE_HOST, _PORT, _USER, _NAME, _PASSWORD   the PostgreSQL database (asyncpg)
#   PREFECT_SERVER_API_AUTH_STRING   "user:password" every API and UI request must carry (basic auth);
#                                    clients (`loop serve`, `loop` commands) send PREFECT_API_AUTH_STRING
#   PREFECT_SERVER_API_HOST / _PORT  where to listen (127.0.0.1:4200 unless told otherwise)
#   PREFECT_UI_API_URL               the API address as the browser sees it (behind a port mapping or proxy)
set -euo pipefail

: "${PREFECT_SERVER_API_AUTH_STRING:?set PREFECT_SERVER_API_AUTH_STRING to user:password: the production Prefect server does not run without authentication}"
case "$PREFECT_SERVER_API_AUTH_STRING" in
  ?*:?*) ;;
  *) echo "prefect-server: PREFECT_SERVER_API_AUTH_STRING must look like user:password" >&2; exit 2 ;;
esac
: "${PREFECT_SERVER_DATABASE_HOST:?set PREFECT_SERVER_DATABASE_HOST (and _PORT, _USER, _NAME, _PASSWORD): the production Prefect server runs on PostgreSQL, not on a SQLite file}"
: "${PREFECT_SERVER_DATABASE_PASSWORD:?set PREFECT_SERVER_DATABASE_PASSWORD: the password of the prefect database role}"

export PREFECT_SERVER_DATABASE_DRIVER=postgresql+asyncpg
export PREFECT_SERVER_DATABASE_USER="${PREFECT_SERVER_DATABASE_USER:-prefect}"
export PREFECT_SERVER_DATABASE_NAME="${PREFECT_SERVER_DATABASE_NAME:-prefect}"
export PREFECT_SERVER_API_HOST="${PREFECT_SERVER_API_HOST:-127.0.0.1}"
export PREFECT_SERVER_API_PORT="${PREFECT_SERVER_API_PORT:-4200}"
export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
# A server started for clients elsewhere must not talk to itself through a client-side API URL.
unset PREFECT_API_URL

exec "${PYTHON:-python3}" -m prefect server start --analytics-off
