#!/usr/bin/env bash
# Runs INSIDE the virtme-ng VM (as root): builds a file-backed loop device, formats it as
# LUKS2 (key file, fast pbkdf2), opens it, mkfs.ext4, mounts it, writes files, and prints
# what the kernel reports about it, in sections marked "@@EBK-SECTION@@ NAME" (parsed by
# tests/support/vm.py:parse_sections).
#
#   luks_demo.sh [--postgres] [--pg-template TAR] [--python PATH]
#     --postgres     also initdb + start PostgreSQL 15 with its data dir on the LUKS mount
#     --pg-template TAR  unpack this host-made fresh cluster instead of running initdb
#     --python PATH  also run PATH (e.g. the host venv's python) and import ebk with it
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=luks_lib.sh
source "$HERE/luks_lib.sh"

WITH_PG=0
PG_TEMPLATE=""
PYTHON=""
while [ $# -gt 0 ]; do
    case "$1" in
        --postgres) WITH_PG=1 ;;
        --pg-template) PG_TEMPLATE="$2"; shift ;;
        --python) PYTHON="$2"; shift ;;
        *) echo "luks_demo.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

# /mnt is on the read-only shared root; /run is a tmpfs in the guest.
MNT="${EBK_LUKS_MOUNTPOINT:-/run/ebk-luks}"
rc=0

ebk_section kernel
uname -r

ebk_section setup
if ! ebk_luks_setup "$MNT" 192; then
    echo "setup=failed"
    exit 1
fi
echo "setup=ok loop=$EBK_LOOP_DEV dev=$EBK_LUKS_DEV mount=$MNT"

ebk_section write
echo "hello from the LUKS volume" > "$MNT/hello.txt"
dd if=/dev/urandom of="$MNT/blob.bin" bs=1M count=4 status=none
sync
ls -l "$MNT"
sha256sum "$MNT/blob.bin"

ebk_section lsblk
lsblk -J -o NAME,TYPE,FSTYPE,MOUNTPOINT

ebk_section dm_uuid
for d in /sys/block/dm-*; do
    [ -e "$d/dm/uuid" ] || continue
    echo "$(basename "$d") $(cat "$d/dm/name") $(cat "$d/dm/uuid")"
done

ebk_section dmsetup_table
if command -v dmsetup >/dev/null 2>&1; then
    dmsetup table
else
    echo "dmsetup-missing"
fi

ebk_section cryptsetup_status
cryptsetup status "$EBK_LUKS_NAME"

ebk_section findmnt
findmnt -J -o TARGET,SOURCE,FSTYPE "$MNT"

if [ -n "$PYTHON" ]; then
    ebk_section python
    if "$PYTHON" -c 'import sys, ebk; print("python-ok", sys.version.split()[0], ebk.__file__)'; then
        :
    else
        echo "python-failed rc=$?"
        rc=1
    fi
fi

if [ "$WITH_PG" = 1 ]; then
    ebk_section postgres
    PGD="$MNT/pgdata"
    if ebk_pg_start "$PGD" "$PG_TEMPLATE"; then
        runuser -u postgres -- "$EBK_PG_BIN/psql" -h "$PGHOST" -d postgres -Atc \
            "select 'pg-ok', current_setting('server_version'), current_setting('data_directory')" \
            || rc=1
        runuser -u postgres -- "$EBK_PG_BIN/psql" -h "$PGHOST" -d postgres -Atc \
            "create table t(x int); insert into t select generate_series(1,1000); checkpoint;
             select 'rows', count(*) from t" || rc=1
        df -P "$PGD" | tail -n 1
        ebk_pg_stop "$PGD" || rc=1
    else
        echo "pg-failed"
        rc=1
    fi
fi

ebk_section teardown
ebk_luks_teardown && echo "teardown=ok"
exit "$rc"
