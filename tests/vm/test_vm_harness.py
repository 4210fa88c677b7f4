"""Smoke test of the VM harness: ONE boot of Debian's kernel under virtme-ng, in which
scripts/vm/luks_demo.sh builds a LUKS2 volume on a loop device, runs the host venv's python,
and starts PostgreSQL 15 with its data dir on the volume. The tests below all read that one
result. Skips without vng/qemu/kernel, except under CI=true where it fails (vm_available)."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from tests.support.needs import skip_or_fail
from tests.support.vm import (
    VMResult,
    find_kernel,
    host_pg_template,
    run_in_vm,
    script_path,
    vm_available,
)

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def demo() -> VMResult:
    reason = vm_available()
    if reason is not None:
        skip_or_fail(reason)  # fails under CI=true, where everything must be installed
    script = (
        f"bash {script_path('luks_demo.sh')} --python {sys.executable}"
        ' --postgres --pg-template "$EBK_VM_SHARED/pgtemplate.tar"\n'
    )
    res = run_in_vm(script, timeout=480, prepare=host_pg_template)
    print(f"VM run: {res.accel} {res.duration:.1f}s rc={res.returncode}")
    print(res.stdout)
    print(res.stderr, file=sys.stderr)
    return res


def _sections(res: VMResult) -> dict[str, str]:
    sec = res.sections()
    assert "setup" in sec, f"luks_demo.sh did not run:\n{res.stdout}\n{res.stderr}"
    assert sec["setup"].startswith("setup=ok"), f"LUKS setup failed:\n{res.stderr}"
    return sec


def test_luks2_volume_is_seen_as_crypt(demo: VMResult) -> None:
    sec = _sections(demo)
    kernel = find_kernel()
    assert kernel is not None and sec["kernel"].strip() == kernel[1]

    tree: dict[str, Any] = json.loads(sec["lsblk"])
    loops = [d for d in tree["blockdevices"] if d["type"] == "loop" and d.get("children")]
    assert len(loops) == 1, sec["lsblk"]
    assert loops[0]["fstype"] == "crypto_LUKS"
    (crypt,) = loops[0]["children"]
    assert crypt["type"] == "crypt"
    assert crypt["fstype"] == "ext4"
    assert crypt["mountpoint"] == "/run/ebk-luks"

    uuids = [line.split() for line in sec["dm_uuid"].splitlines() if line.strip()]
    assert [(name, uuid.startswith("CRYPT-LUKS2-")) for _, name, uuid in uuids] == [
        (crypt["name"], True)
    ]

    table = sec["dmsetup_table"].split()
    assert table[0] == f"{crypt['name']}:"
    assert table[3:5] == ["crypt", "aes-xts-plain64"], sec["dmsetup_table"]

    assert "type:    LUKS2" in sec["cryptsetup_status"]
    assert "hello.txt" in sec["write"]
    assert sec["teardown"].strip() == "teardown=ok"


def test_host_venv_python_runs_in_vm(demo: VMResult) -> None:
    sec = _sections(demo)
    assert sec["python"].startswith("python-ok "), sec.get("python")


def test_postgres_runs_with_data_dir_on_luks(demo: VMResult) -> None:
    sec = _sections(demo)
    pg = sec["postgres"].splitlines()
    assert pg[0].startswith("pg-ok|15."), sec["postgres"]
    assert pg[0].endswith("|/run/ebk-luks/pgdata")
    assert "rows|1000" in pg
    assert demo.returncode == 0, demo.stderr
