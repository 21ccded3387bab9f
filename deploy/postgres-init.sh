#!/usr/bin/env bash
# Creates the roles and databases of the production setup in a fresh PostgreSQL cluster.
#
# The one script both paths run: the official postgres image runs it on its first start
# (compose.yaml mounts it into /docker-entrypoint-initdb.d/), and `make test-postgres` runs it
# against its throw-away cluster. Connection by the usual libpq variables (PGHOST, PGPORT,
# PGUSER, PGPASSWORD; inside the image: the local socket as POSTGRES_USER). The roles'
# passwords come from LOOP_PREFECT_DB_PASSWORD and LOOP_MLFLOW_DB_PASSWORD and are read by
# psql's \getenv, so they never appear on a command line or in the process list.
set -euo pipefail

: "${LOOP_PREFECT_DB_PASSWORD:?set LOOP_PREFECT_DB_PASSWORD: the password of the prefect database role}"
: "${LOOP_MLFLOW_DB_PASSWORD:?set LOOP_MLFLOW_DB_PASSWORD: the password of the mlflow database role}"

psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "${PGUSER:-${POSTGRES_USER:-postgres}}" \
     --dbname "${PGDATABASE:-${POSTGRES_DB:-postgres}}" <<'SQL'
\getenv prefect_password LOOP_PREFECT_DB_PASSWORD
\getenv mlflow_password LOOP_MLFLOW_DB_PASSWORD
CREATE ROLE prefect LOGIN PASSWORD :'prefect_password';
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE prefect OWNER prefect;
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow;
-- Each server reaches its own databases only: a leaked Prefect password does not open the registry.
REVOKE ALL ON DATABASE prefect, mlflow, mlflow_auth FROM PUBLIC;
SQL
echo "postgres-init: roles prefect, mlflow and databases prefect, mlflow, mlflow_auth created"
