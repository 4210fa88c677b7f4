# shellcheck shell=bash
# Helpers for scripts that run INSIDE the virtme-ng VM (tests/support/vm.py) as root.
# Source this file; every function prints what it does to stderr and fails loudly.
#
#   source /work/main/scripts/vm/luks_lib.sh
#   ebk_luks_setup /run/ebk-luks 192          # loop file -> LUKS2 -> ext4, mounted
#   ebk_pg_start /run/ebk-luks/pgdata         # initdb + pg_ctl start as postgres
#   ...
#   ebk_pg_stop /run/ebk-luks/pgdata; ebk_luks_teardown
#
# The loop file lives on a fresh tmpfs (the guest's RAM), so nothing touches the host.
# Mount points must be in a writable tree: /run, /tmp, /var, /etc, /home, /opt, /srv, /usr
# (tmpfs or overlays); the rest of / (e.g. /mnt, /work) is the read-only host root.

EBK_LUKS_NAME="${EBK_LUKS_NAME:-ebkcrypt}"
EBK_LUKS_SCRATCH="${EBK_LUKS_SCRATCH:-/run/ebk-vm-scratch}"
EBK_PG_BIN="${EBK_PG_BIN:-/usr/lib/postgresql/15/bin}"
EBK_PG_SOCKDIR="${EBK_PG_SOCKDIR:-/run/ebk-pg-sock}"

_ebk_log() { echo "[luks_lib] $*" >&2; }

# ebk_section NAME: print a marker line that tests/support/vm.py:parse_sections() splits on,
# and the guest uptime to stderr (where the time goes under slow TCG emulation).
ebk_section() {
    echo "@@EBK-SECTION@@ $1"
    echo "[luks_lib] t=$(cut -d' ' -f1 /proc/uptime)s section $1" >&2
}

# ebk_luks_setup MOUNTPOINT [SIZE_MB]
# Creates $EBK_LUKS_SCRATCH/disk.img, attaches a loop device, luksFormat --type luks2 with a
# key file (fast pbkdf2), opens it as /dev/mapper/$EBK_LUKS_NAME, mkfs.ext4 and mounts it.
# Exports EBK_LOOP_DEV, EBK_LUKS_DEV, EBK_LUKS_KEYFILE, EBK_LUKS_MOUNT.
ebk_luks_setup() {
    local mnt="${1:?mountpoint}" size="${2:-192}"
    modprobe loop && modprobe dm_mod && modprobe dm_crypt || { _ebk_log "modprobe failed"; return 1; }
    mkdir -p "$EBK_LUKS_SCRATCH"
    mountpoint -q "$EBK_LUKS_SCRATCH" || mount -t tmpfs -o size=$((size + 32))m ebkscratch "$EBK_LUKS_SCRATCH"
    local img="$EBK_LUKS_SCRATCH/disk.img"
    EBK_LUKS_KEYFILE="$EBK_LUKS_SCRATCH/luks.key"
    head -c 64 /dev/urandom > "$EBK_LUKS_KEYFILE"
    chmod 600 "$EBK_LUKS_KEYFILE"
    truncate -s "${size}M" "$img"
    EBK_LOOP_DEV="$(losetup --find --show "$img")" || return 1
    _ebk_log "loop device $EBK_LOOP_DEV"
    cryptsetup luksFormat --batch-mode --type luks2 \
        --cipher aes-xts-plain64 --key-size 512 \
        --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
        --key-file "$EBK_LUKS_KEYFILE" "$EBK_LOOP_DEV" || return 1
    cryptsetup open --type luks2 --key-file "$EBK_LUKS_KEYFILE" "$EBK_LOOP_DEV" "$EBK_LUKS_NAME" \
        || return 1
    EBK_LUKS_DEV="/dev/mapper/$EBK_LUKS_NAME"
    mkfs.ext4 -q -F -L ebkdata "$EBK_LUKS_DEV" || return 1
    mkdir -p "$mnt"
    mount -t ext4 "$EBK_LUKS_DEV" "$mnt" || return 1
    EBK_LUKS_MOUNT="$mnt"
    export EBK_LOOP_DEV EBK_LUKS_DEV EBK_LUKS_KEYFILE EBK_LUKS_MOUNT
    _ebk_log "LUKS2 volume $EBK_LUKS_DEV on $EBK_LOOP_DEV mounted at $mnt"
}

ebk_luks_teardown() {
    [ -n "${EBK_LUKS_MOUNT:-}" ] && umount "$EBK_LUKS_MOUNT" 2>/dev/null
    cryptsetup close "$EBK_LUKS_NAME" 2>/dev/null
    [ -n "${EBK_LOOP_DEV:-}" ] && losetup -d "$EBK_LOOP_DEV" 2>/dev/null
    return 0
}

# ebk_pg_start DATADIR [TEMPLATE_TAR]: create the cluster if DATADIR has none, and start
# PostgreSQL 15 as the postgres user, listening only on a unix socket in $EBK_PG_SOCKDIR.
# Exports PGHOST/PGDATA/PGUSER for psql. With TEMPLATE_TAR (a tar of a fresh initdb made on the
# host, see tests/support/vm.py:host_pg_template) the cluster is unpacked instead of initdb'd:
# initdb under TCG emulation takes ~1 min, unpacking a few seconds.
ebk_pg_start() {
    local data="${1:?datadir}" template="${2:-}"
    mkdir -p "$data" "$EBK_PG_SOCKDIR"
    chown postgres:postgres "$data" "$EBK_PG_SOCKDIR"
    chmod 700 "$data"
    if [ ! -f "$data/PG_VERSION" ]; then
        if [ -n "$template" ]; then
            tar -xf "$template" -C "$data" || { _ebk_log "unpacking $template failed"; return 1; }
            chown -R postgres:postgres "$data"
        else
            runuser -u postgres -- "$EBK_PG_BIN/initdb" -D "$data" -A trust -E UTF8 \
                --locale=C.UTF-8 --no-sync >/dev/null || { _ebk_log "initdb failed"; return 1; }
        fi
    fi
    runuser -u postgres -- "$EBK_PG_BIN/pg_ctl" -D "$data" -l "$data/ebk-vm.log" -w -t 120 \
        -o "-k $EBK_PG_SOCKDIR -c listen_addresses='' -c fsync=off" start >/dev/null \
        || { _ebk_log "pg_ctl start failed"; cat "$data/ebk-vm.log" >&2; return 1; }
    export PGHOST="$EBK_PG_SOCKDIR" PGDATA="$data" PGUSER=postgres
}

ebk_pg_stop() {
    local data="${1:?datadir}"
    runuser -u postgres -- "$EBK_PG_BIN/pg_ctl" -D "$data" -m fast -w stop >/dev/null
}
