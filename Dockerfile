# ebk in a container: `ebk daemon` by default, or any ebk command (`ebk backup` for a
# Kubernetes CronJob: exit 0 means a backup was listed; see `ebk --help` for the codes).
#
#   docker build -t ebk .
#   docker run -d --name ebk --network host \
#       -v /etc/ebk:/etc/ebk:ro -v /srv/ebk-repo:/srv/ebk-repo ebk          # the daemon
#   docker run --rm --network host -v /etc/ebk:/etc/ebk:ro \
#       -v /srv/ebk-repo:/srv/ebk-repo ebk backup --type logical          # a one-shot
#
# The config is read from /etc/ebk/ebk.toml (or --config / EBK_CONFIG); every key can be
# set as EBK_<SECTION>__<KEY>.  The container runs as user ebk (uid/gid 10001): the key
# file (mode 0600) and a local repository directory must be readable/writable by it.
# The daemon's HTTP probes listen on daemon.listen, 127.0.0.1:9187 by default; with a
# bridge network publish them with -e EBK_DAEMON__LISTEN=0.0.0.0:9187 -p 9187:9187, and
# if the port changes, set EBK_HEALTH_URL for the HEALTHCHECK below.
#
# Where no registry is reachable (this project's test machines), build on the base image
# that tests/support/docker_image.py makes with debootstrap + docker import:
#
#   docker build --network host --build-arg BASE_IMAGE=ebk-base:bookworm -t ebk:dev .
#
# Only plain Dockerfile syntax: builds with the legacy builder and with BuildKit.

# Debian bookworm: Python 3.11 and postgresql-client-15 from the same archive.  Both
# stages use the same base, so the venv's python symlink (/usr/bin/python3) and the
# shared libraries of the binary wheels match in the runtime stage.
ARG BASE_IMAGE=debian:bookworm-slim

# --------------------------------------------------------------------------------------
# build: a venv at /opt/ebk with ebk and its dependencies.  All dependencies ship binary
# wheels for CPython 3.11 on x86_64/aarch64: no compiler needed.
# --------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/ebk
WORKDIR /src
# Dependencies first, in their own layer: only a lock change rebuilds it.  They come from
# requirements.lock (every version pinned, every file's sha256: scripts/lock.sh).
# .ebk-build-ca.pem is optional (the wildcard may match nothing): the test harness adds
# the host's CA bundle there, for networks where HTTPS to PyPI is intercepted by a proxy
# whose CA only the host trusts.  It lives in this build stage only.
COPY requirements.lock .ebk-build-ca.pe[m] ./
RUN if [ -f .ebk-build-ca.pem ]; then printf '[global]\ncert = /src/.ebk-build-ca.pem\n' > /etc/pip.conf; fi \
 && /opt/ebk/bin/pip install --require-hashes -r requirements.lock
# The package folders of [tool.setuptools] package-dir, one COPY each (a multi-source
# COPY of folders would merge their contents).  Keep in step with pyproject.toml.
COPY pyproject.toml README.md ./
COPY ebk/ ./ebk/
COPY daemon/ ./daemon/
COPY storage/ ./storage/
COPY keys/ ./keys/
COPY restore/ ./restore/
# Then pip and setuptools leave the venv (nothing needs them at run time; less to patch),
# and every backend module must still import (from /: in /src, `import ebk` would find
# the source folder): a dependency that silently relied on setuptools (pkg_resources)
# fails the build here, not a backup at 02:00.
RUN /opt/ebk/bin/pip install --no-deps . \
 && /opt/ebk/bin/pip uninstall -y -q pip setuptools \
 && cd / && /opt/ebk/bin/python -c "import ebk.cli, ebk.daemon.service, ebk.storage.s3, ebk.storage.gcs, ebk.storage.azure, ebk.keys.vault, ebk.keys.awskms, ebk.restore.physical, ebk.restore.logical, azure.identity" \
 && /opt/ebk/bin/ebk --version

# --------------------------------------------------------------------------------------
# runtime: python3, the PostgreSQL client tools and the venv, as user ebk
# --------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
# The PostgreSQL client tools' major version must be the server's, and never older:
# pg_dump/pg_dumpall refuse a server of a newer major version, and pg_restore/psql/
# pg_verifybackup of restores should match what made the backup.  (Physical backups
# speak the replication protocol from Python and need no tool.)  ebk picks the tools in
# /usr/lib/postgresql/<server major>/bin.  Debian bookworm ships 15 only; for another
# major add the PGDG repository (apt.postgresql.org) to this stage and set PG_MAJOR.
ARG PG_MAJOR=15
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        python3 "postgresql-client-${PG_MAJOR}" ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old \
        /var/log/apt /var/log/dpkg.log /var/log/alternatives.log \
 && test -x "/usr/lib/postgresql/${PG_MAJOR}/bin/pg_dump"
# A fixed uid/gid, so volumes can be prepared for it.  Its home holds the daemon's
# state_dir (/var/lib/ebk/daemon by default).  Next to a postgres container whose
# preflight must read the 0700 PGDATA, run it as the postgres uid instead
# (infra/docker/prod and infra/kubernetes do: runAsUser 999).
RUN groupadd --system --gid 10001 ebk \
 && useradd --system --no-log-init --uid 10001 --gid ebk --home-dir /var/lib/ebk \
        --create-home --shell /usr/sbin/nologin ebk
COPY --from=build /opt/ebk /opt/ebk
ENV PATH=/opt/ebk/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Proves the venv runs on this stage's Python and libraries.
RUN ebk --version
LABEL org.opencontainers.image.title="ebk" \
      org.opencontainers.image.description="Encrypted backup and restore daemon for PostgreSQL" \
      org.opencontainers.image.licenses="Apache-2.0"
USER ebk
WORKDIR /var/lib/ebk
# The daemon's /healthz (200 while its scheduler runs; urlopen raises on 503 or no
# answer, so the probe exits 1).  One-shot commands (`backup`, CronJobs) do not serve
# it: run those with --no-healthcheck, Kubernetes ignores it anyway.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('EBK_HEALTH_URL') or 'http://127.0.0.1:9187/healthz', timeout=5)"]
ENTRYPOINT ["ebk"]
CMD ["daemon"]

# --------------------------------------------------------------------------------------
# verify: the runtime plus the PostgreSQL server of PG_MAJOR, for `ebk verify --level
# restore` (infra/kubernetes/ebk-verify-cronjob.yaml), which starts a throwaway server
# on the restored copy.  Build it with --target verify:
#   docker build --target verify -t ebk-verify .
# Debian's postgresql-common would create a "main" cluster on install: switched off, the
# image holds no database of its own.
# --------------------------------------------------------------------------------------
FROM runtime AS verify
ARG PG_MAJOR=15
USER root
RUN mkdir -p /etc/postgresql-common/createcluster.d \
 && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/ebk.conf \
 && apt-get update \
 && apt-get install -y --no-install-recommends "postgresql-${PG_MAJOR}" \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old \
        /var/log/apt /var/log/dpkg.log /var/log/alternatives.log \
 && test -x "/usr/lib/postgresql/${PG_MAJOR}/bin/postgres" \
 && test ! -e "/var/lib/postgresql/${PG_MAJOR}/main"
USER ebk

# --------------------------------------------------------------------------------------
# The default target: the runtime image (no PostgreSQL server in it).
# --------------------------------------------------------------------------------------
FROM runtime
