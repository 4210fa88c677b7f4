#!/bin/bash
# What the official image's entrypoint does, for the variables the Compose file sets.
set -euo pipefail
if [[ "${1:-}" != postgres ]]; then exec "$@"; fi
: "${PGDATA:?}"
if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
    password="${POSTGRES_PASSWORD:-}"
    if [[ -n "${POSTGRES_PASSWORD_FILE:-}" ]]; then password="$(< "$POSTGRES_PASSWORD_FILE")"; fi
    if [[ -z "$password" ]]; then
        echo "docker-entrypoint: no POSTGRES_PASSWORD(_FILE): refusing to initdb" >&2
        exit 1
    fi
    pwfile="$(mktemp)"
    printf '%s\n' "$password" > "$pwfile"
    # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a list of options
    initdb --username="${POSTGRES_USER:-postgres}" --pwfile="$pwfile" \
        ${POSTGRES_INITDB_ARGS:-} -D "$PGDATA"
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    if [[ "${POSTGRES_DB:-postgres}" != postgres ]]; then
        postgres --single -D "$PGDATA" postgres <<<"CREATE DATABASE \"$POSTGRES_DB\";" >/dev/null
    fi
fi
chmod 0700 "$PGDATA"
shift
exec postgres -c listen_addresses='*' "$@"
