"""`ebk bench volume` on real volumes: fscrypt (ext4 -O encrypt loop image) against a
plain directory on the same filesystem, and the refusals of bad directories."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ebk.bench.volume import render
from tests.support.ebkenv import make_env
from tests.support.encrypted_fs import add_raw_key, loop_ext4, remove_key, set_v2_policy
from tests.support.needs import need_root
from tests.support.postgres import PG_BIN, make_postgres_dir
from tests.support.refusal import assert_refused

pytestmark = [pytest.mark.slow, pytest.mark.root]

SIDE_FIELDS = {"rate", "rounds", "latency_ms_p50", "latency_ms_p99"}


@pytest.fixture
def volumes() -> Iterator[tuple[Path, Path]]:
    """(plain, encrypted): two empty directories on one ext4 -O encrypt loop image, the
    second under an fscrypt v2 policy; readable by the postgres user."""
    need_root()
    base = make_postgres_dir("ebk-bench-")
    with loop_ext4(base / "fs.img", base / "mnt", size_mb=1600, encrypt=True) as mnt:
        mnt.chmod(0o755)
        ident = add_raw_key(mnt, bytes(range(64)))
        try:
            plain = mnt / "plain"
            plain.mkdir()
            encrypted = mnt / "encrypted"
            set_v2_policy(encrypted, ident)
            yield plain, encrypted
        finally:
            remove_key(mnt, ident)
    subprocess.run(["rm", "-rf", str(base)], check=False)


def _bench(tmp_path: Path, *args: str, expect: int | None = 0) -> str:
    env = make_env(tmp_path / "ebk", None, init=False)
    result = env.run("bench", "volume", "--bin-dir", str(PG_BIN), *args, expect=expect)
    return str(result.stdout)


def _no_server_left(directory: Path) -> None:
    assert not list(directory.iterdir()), f"left behind in {directory}: {list(directory.iterdir())}"
    ps = subprocess.run(["pgrep", "-f", f"postgres -D {directory}"], capture_output=True)
    assert ps.returncode == 1, "a benchmark PostgreSQL is still running"


def test_fscrypt_against_plain_reports_every_field(
    volumes: tuple[Path, Path], tmp_path: Path
) -> None:
    plain, encrypted = volumes
    out = _bench(
        tmp_path,
        "--plain",
        str(plain),
        "--encrypted",
        str(encrypted),
        "--duration",
        "1",
        "--rounds",
        "2",
        "--scale",
        "1,2",
        "--clients",
        "2",
        "--json",
    )
    report = json.loads(out)
    assert report["kind"] == "ebk-bench-volume" and report["version"] == 1
    assert report["volumes"]["encrypted"]["status"] == "encrypted"
    assert "fscrypt" in " ".join(report["volumes"]["encrypted"]["encrypted_by"])
    assert report["volumes"]["plain"]["status"] != "encrypted"
    assert report["postgres"]["settings"]["fsync"] == "on"
    for key in (
        "cpus",
        "ram_bytes",
        "cpu_aes",
        "crypto_drivers",
        "load_average_start",
        "load_average_end",
        "kernel",
    ):
        assert key in report["host"]
    assert report["parameters"]["rounds"] == 2 and report["parameters"]["interleaved"]
    cases = {(r["dataset"], r["workload"]) for r in report["results"]}
    assert cases == {
        ("in_cache", "tpcb"),
        ("in_cache", "select_only"),
        ("bulk_load", "copy"),
        ("out_of_cache", "tpcb"),
        ("out_of_cache", "select_only"),
    }
    for result in report["results"]:
        for side in ("plain", "encrypted"):
            assert set(result[side]) >= SIDE_FIELDS
            assert len(result[side]["rounds"]) == 2
            assert all(rate > 0 for rate in result[side]["rounds"])
            if result["workload"] != "copy":
                lat = result[side]["latency_ms_p99"]
                assert 0 < result[side]["latency_ms_p50"]["median"] <= lat["median"]
        ratio = result["ratio"]
        assert ratio["rounds"] == 2 and ratio["ratio"] > 0
        assert ratio["ci95_low"] <= ratio["ratio"] <= ratio["ci95_high"]
        assert result["verdict"] in {"within", "exceeds", "inconclusive"}
    assert report["verdict"] in {"within", "exceeds", "inconclusive"}
    table = "\n".join(render(report))
    assert "in_cache/tpcb" in table and "verdict:" in table
    _no_server_left(plain)
    _no_server_left(encrypted)


def test_same_kind_of_volume_twice_is_refused(tmp_path: Path) -> None:
    base = make_postgres_dir("ebk-bench-")
    try:
        (base / "a").mkdir()
        (base / "b").mkdir()
        _bench(tmp_path, "--plain", str(base / "a"), "--encrypted", str(base / "b"), expect=2)
        result = make_env(tmp_path / "e2", None, init=False).run(
            "bench",
            "volume",
            "--plain",
            str(base / "a"),
            "--encrypted",
            str(base / "b"),
            expect=None,
        )
        assert_refused(result, 2, mentions="same kind of volume")
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_swapped_and_doubly_encrypted_are_refused(
    volumes: tuple[Path, Path], tmp_path: Path
) -> None:
    plain, encrypted = volumes
    env = make_env(tmp_path / "ebk", None, init=False)
    swapped = env.run(
        "bench", "volume", "--plain", str(encrypted), "--encrypted", str(plain), expect=None
    )
    assert_refused(swapped, 2, mentions="swap")
    (encrypted / "a").mkdir()
    (encrypted / "b").mkdir()
    both = env.run(
        "bench",
        "volume",
        "--plain",
        str(encrypted / "a"),
        "--encrypted",
        str(encrypted / "b"),
        expect=None,
    )
    assert_refused(both, 2, mentions="both directories are on encrypted volumes")
    nested = env.run(
        "bench",
        "volume",
        "--plain",
        str(encrypted),
        "--encrypted",
        str(encrypted / "a"),
        expect=None,
    )
    assert_refused(nested, 2, mentions="must be two separate directories")


def test_non_empty_directory_is_refused(volumes: tuple[Path, Path], tmp_path: Path) -> None:
    plain, encrypted = volumes
    (encrypted / "precious.dat").write_text("keep me")
    env = make_env(tmp_path / "ebk", None, init=False)
    result = env.run(
        "bench", "volume", "--plain", str(plain), "--encrypted", str(encrypted), expect=None
    )
    assert_refused(result, 2, mentions=["not empty", "precious.dat"])
    assert (encrypted / "precious.dat").read_text() == "keep me"


def test_unwritable_directory_is_refused(volumes: tuple[Path, Path], tmp_path: Path) -> None:
    plain, encrypted = volumes
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(plain)], check=True)
    try:
        env = make_env(tmp_path / "ebk", None, init=False)
        result = env.run(
            "bench", "volume", "--plain", str(plain), "--encrypted", str(encrypted), expect=None
        )
        assert_refused(result, 2, mentions=["not writable", str(plain)])
    finally:
        subprocess.run(["umount", str(plain)], check=True)


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    env = make_env(tmp_path / "ebk", None, init=False)
    result = env.run(
        "bench",
        "volume",
        "--plain",
        str(tmp_path / "nope"),
        "--encrypted",
        str(tmp_path / "nope2"),
        expect=None,
    )
    assert_refused(result, 2, mentions="is not a directory")


def test_sigterm_stops_both_servers_and_cleans_up(
    volumes: tuple[Path, Path], tmp_path: Path
) -> None:
    plain, encrypted = volumes
    env = make_env(tmp_path / "ebk", None, init=False)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ebk",
            "--config",
            str(env.config_path),
            "bench",
            "volume",
            "--bin-dir",
            str(PG_BIN),
            "--plain",
            str(plain),
            "--encrypted",
            str(encrypted),
            "--duration",
            "30",
            "--rounds",
            "1",
            "--scale",
            "1,0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (encrypted / "pgdata" / "postmaster.pid").exists():
            assert time.monotonic() < deadline, "the encrypted side's server never started"
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    _no_server_left(plain)
    _no_server_left(encrypted)
