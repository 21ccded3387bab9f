# The project image of the production setup (compose.yaml): the loop (worker, scoring service, CLI)
# and the Prefect and MLflow servers, with the exact versions of requirements.lock plus the servers'
# extras (requirements-server.txt: the PostgreSQL driver and MLflow's auth app).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY requirements.lock requirements-server.txt ./
RUN pip install -r requirements.lock -r requirements-server.txt

COPY pyproject.toml ./
COPY features features
COPY flows flows
COPY models models
COPY service service
COPY simulator simulator
COPY data/specs data/specs
COPY deploy deploy
RUN pip install --no-deps . \
 && useradd --uid 10001 --create-home loop \
 && mkdir -p /data/loop /data/inbox /data/prefect /data/mlflow-artifacts \
 && chown -R loop:loop /data

# Installed as a package, the code no longer sits next to data/: say where the specs are.
ENV LOOP_SPECS_DIR=/app/data/specs LOOP_HOME=/data/loop
USER loop
# compose.yaml gives each service its deploy/ script as the command.
CMD ["deploy/worker.sh"]
