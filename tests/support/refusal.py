"""What every refusal test checks: the exact exit code, no traceback, the message.

A test that asserts only "exited non-zero" passes on a crash too; these pin the
stable exit code of ``ebk --help`` / ebk/errors.py and prove the operator got a
clear message, not a Python traceback.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from click.testing import Result

Outcome = Result | subprocess.CompletedProcess[str] | subprocess.CompletedProcess[bytes]


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def _streams(result: Outcome) -> tuple[int, str, str]:
    if isinstance(result, Result):
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(
                f"the command raised {result.exception!r} instead of refusing "
                f"cleanly:\n{result.output}"
            ) from result.exception
        return result.exit_code, result.stdout, result.stderr
    return result.returncode, _text(result.stdout), _text(result.stderr)


def assert_refused(result: Outcome, exit_code: int, *, mentions: str | Sequence[str] = ()) -> str:
    """Assert a refusal with ``exit_code``, no "Traceback" on stdout or stderr, and every
    fragment of ``mentions`` in the output; returns stdout + stderr for further checks."""
    assert exit_code != 0, "a refusal has a non-zero exit code"
    code, out, err = _streams(result)
    both = f"{out}\n{err}"
    assert code == exit_code, f"exited {code}, expected {exit_code}:\n{both[-4000:]}"
    assert "Traceback" not in both, f"a traceback instead of a clean refusal:\n{both[-4000:]}"
    for fragment in [mentions] if isinstance(mentions, str) else mentions:
        assert fragment in both, f"{fragment!r} is not in the output:\n{both[-4000:]}"
    return both
