"""A bounded coverage-guided run in the slow tier: no input crashes a parser."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz import targets
from tests.support.needs import skip_or_fail

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
RUNS = 20_000


def test_atheris_finds_no_crash(tmp_path: Path) -> None:
    try:
        import atheris  # noqa: F401
    except ImportError:
        skip_or_fail("atheris is not installed (pip install atheris; x86_64 only)")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "manifest").write_bytes(targets.json_seed())
    (corpus / "key").write_bytes(json.dumps({"format": "ebk-key-object", "version": 1}).encode())
    (corpus / "stream").write_bytes(b"EBK1" + bytes(60))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz.atheris_main",
            f"-atheris_runs={RUNS}",
            "-max_len=4096",
            "-rss_limit_mb=1024",
            "-timeout=10",
            str(corpus),
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    tail = proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    assert not list(tmp_path.glob("crash-*")), tail
    assert "Done" in tail and str(RUNS) in tail, tail
