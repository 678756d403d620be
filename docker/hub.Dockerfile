# fedhub hub image for zero-to-jupyterhub (`fedhub k8s render --image ...`).
# Build from the repository root:  docker build -f docker/hub.Dockerfile -t REGISTRY/fedhub/hub:TAG .
# Holds no credentials: the database password, S3 keys and site kubeconfigs/JWTs come from
# Kubernetes Secrets at run time (docs/production.md).
FROM python:3.11-slim-bookworm

# configurable-http-proxy (the same version as package.json), tini as PID 1, libpq for psql/pg_dump
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs npm tini postgresql-client \
 && npm install -g configurable-http-proxy@5.3.0 \
 && npm cache clean --force \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src/fedhub
COPY . /src/fedhub
# fedhub with the [hub] extra, held to pyproject's pins (tests/test_k8s_render.py checks they match)
RUN pip install --no-cache-dir -c docker/hub-constraints.txt ".[hub]" \
 && python -c "import fedhub.hub.tracking, fedhub.spawner.federated, jupyterhub, psycopg2"

# z2jh's hub pod runs as uid 1000 with /srv/jupyterhub as its working directory
RUN useradd --uid 1000 --create-home --home-dir /home/jovyan jovyan \
 && mkdir -p /srv/jupyterhub /srv/fedhub/state && chown -R 1000:1000 /srv/jupyterhub /srv/fedhub
USER 1000
WORKDIR /srv/jupyterhub
EXPOSE 8081

ENTRYPOINT ["tini", "--"]
CMD ["jupyterhub", "--config", "/usr/local/etc/jupyterhub/jupyterhub_config.py"]
