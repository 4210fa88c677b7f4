"""Audit the locked dependency set for known vulnerabilities.

First pip-audit over the hash-pinned locks (its PyPI advisory service). When that service
cannot be reached -- every package comes back "not found", as on a network that serves
packages but not the advisory API -- say so and check the locks against the offline floor
in scripts/audit-floor.txt instead. Exit 1 on any known-vulnerable pin.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCKS = [ROOT / "requirements.lock", ROOT / "requirements-test.lock"]
PIN = re.compile(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;\\]+)", re.MULTILINE)


def pins(lock: Path) -> dict[str, Version]:
    return {
        canonicalize_name(name.split("[")[0]): Version(version)
        for name, version in PIN.findall(lock.read_text())
    }


def offline_floor(locks: list[Path]) -> list[str]:
    """Pins below scripts/audit-floor.txt, as 'name version: requirement (advisory)'."""
    problems = []
    for raw in (ROOT / "scripts" / "audit-floor.txt").read_text().splitlines():
        line, _, note = raw.partition("#")
        if not line.strip():
            continue
        floor = Requirement(line.strip())
        for lock in locks:
            version = pins(lock).get(canonicalize_name(floor.name))
            if version is not None and version not in floor.specifier:
                problems.append(
                    f"{lock.name}: {floor.name} {version} needs {floor} ({note.strip()})"
                )
    return problems


def pip_audit(lock: Path) -> tuple[list[str], bool]:
    """Vulnerable pins found by pip-audit, and whether its advisory service answered."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip_audit",
            "-r",
            str(lock),
            "--require-hashes",
            "--disable-pip",
            "--progress-spinner",
            "off",
            "-f",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    try:
        deps = json.loads(proc.stdout)["dependencies"]
    except (ValueError, KeyError):
        print(proc.stderr[-2000:], file=sys.stderr)
        return [], False
    audited = [d for d in deps if "skip_reason" not in d]
    found = [
        f"{lock.name}: {d['name']} {d['version']}: {v['id']} "
        f"(fixed in {', '.join(v['fix_versions']) or 'no release yet'})"
        for d in audited
        for v in d.get("vulns", [])
    ]
    return found, bool(audited)


def main() -> int:
    problems: list[str] = []
    reachable = True
    for lock in LOCKS:
        found, answered = pip_audit(lock)
        problems += found
        reachable = reachable and answered
    if reachable:
        print(f"audit: pip-audit checked {len(LOCKS)} locks against the advisory service")
    else:
        print(
            "audit: pip-audit's advisory service is unreachable from here; checked the locks "
            "against the offline floor (scripts/audit-floor.txt) instead"
        )
        problems += offline_floor(LOCKS)
    for problem in problems:
        print(f"audit: VULNERABLE {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
