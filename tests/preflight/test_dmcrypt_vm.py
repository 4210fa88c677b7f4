"""dm-crypt/LUKS2 detection in a real kernel with device-mapper: ONE boot of Debian's
kernel under virtme-ng (tests/support/vm.py; the host kernel has no device-mapper).
Inside: a LUKS2 volume on a loop device, PGDATA made by initdb as postgres on it, and
`ebk preflight --json --restore-target <tmpfs dir>` run with postgres.data_directory
configured (no server runs: preflight works from the config alone).  PGDATA and pg_wal
must be dm-crypt LUKS2 with the cipher and key slot read from the header; the tmpfs
restore target must be unencrypted, so the run exits 6."""

from __future__ import annotations

import json
import shlex
import sys
from typing import Any

import pytest

from tests.support.needs import skip_or_fail
from tests.support.vm import VMResult, run_in_vm, script_path, vm_available

pytestmark = [pytest.mark.vm, pytest.mark.slow]

MNT = "/run/ebk-luks"
PGDATA = f"{MNT}/pgdata"


def _script() -> str:
    py = shlex.quote(sys.executable)
    return f"""
set -u
source {shlex.quote(str(script_path("luks_lib.sh")))}
ebk_section setup
ebk_luks_setup {MNT} 96 && echo "setup=ok" || {{ echo "setup=failed"; exit 1; }}
mkdir -p {PGDATA} && chown postgres:postgres {PGDATA} && chmod 700 {PGDATA}
runuser -u postgres -- "$EBK_PG_BIN/initdb" -D {PGDATA} -A trust -E UTF8 --no-sync >/dev/null \
    || {{ echo "initdb failed"; exit 1; }}
mkdir -p /run/plain-spool
cat > "$EBK_VM_SHARED/ebk.toml" <<TOML
[postgres]
data_directory = "{PGDATA}"
port = 1
[preflight]
policy = "require"
cloud = false
kubernetes = false
TOML
ebk_section report
# one ebk run (python start-up is slow under TCG): PGDATA on LUKS2, a restore target on tmpfs
{py} -m ebk --config "$EBK_VM_SHARED/ebk.toml" preflight --json \
    --restore-target /run/plain-spool/restore
rc=$?
ebk_section report_rc
echo "$rc"
ebk_section teardown
ebk_luks_teardown && echo teardown=ok
"""


@pytest.fixture(scope="module")
def vm_run() -> VMResult:
    reason = vm_available()
    if reason is not None:
        skip_or_fail(reason)  # fails under CI=true, where everything must be installed
    res = run_in_vm(_script(), timeout=540)
    print(f"VM run: {res.accel} {res.duration:.1f}s rc={res.returncode}")
    print(res.stdout)
    print(res.stderr, file=sys.stderr)
    return res


def _report(res: VMResult, name: str) -> dict[str, Any]:
    sec = res.sections()
    assert sec.get("setup", "").startswith("setup=ok"), f"{res.stdout}\n{res.stderr}"
    return dict(json.loads(sec[name]))


def test_pgdata_on_luks2_is_encrypted_with_its_cipher(vm_run: VMResult) -> None:
    report = _report(vm_run, "report")
    paths = {p["role"]: p for p in report["paths"]}
    assert set(paths) == {"data_directory", "pg_wal", "restore_target"}
    for role in ("data_directory", "pg_wal"):
        verdict = paths[role]
        assert verdict["status"] == "encrypted", verdict
        assert verdict["mount_point"] == MNT and verdict["fstype"] == "ext4"
        (ev,) = verdict["evidence"]
        assert ev["layer"] == "dm-crypt/LUKS2"
        assert ev["cipher"] == "aes-xts-plain64"
        assert "512-bit key" in ev["detail"]
        assert "1 passphrase/key-file slot(s) in the LUKS2 header" in ev["key_location"]
        stack = verdict["device_stack"]
        assert stack[0].startswith("dm-") and "dm-crypt LUKS2" in stack[0]
        assert stack[1].strip().startswith("loop")


def test_tmpfs_restore_target_in_the_same_vm_is_refused(vm_run: VMResult) -> None:
    report = _report(vm_run, "report")
    assert vm_run.sections()["report_rc"].strip() == "6"  # one path fails: exit 6
    assert report["passed"] is False
    target = next(p for p in report["paths"] if p["role"] == "restore_target")
    assert target["status"] == "unencrypted" and target["fstype"] == "tmpfs"
    assert target["fix"].startswith("restore into a directory on encrypted storage")
