"""The environment of every child process ebk starts: an allow-list, no secrets.

ebk runs beside KMS tokens and cloud credentials (VAULT_TOKEN,
AWS_SECRET_ACCESS_KEY, ...).  A child (pg_dump, pg_restore, psql,
pg_verifybackup, zfs, cryptsetup) needs none of them, and anything in its
environment is readable by the same user through /proc/<pid>/environ and may
end up in a core dump.  So a child gets only the variables named below; the
PostgreSQL password reaches libpq through a PGPASSFILE of mode 0600 in a
private 0700 directory that exists only while the child runs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from ebk.errors import ConfigError

# Locale, time zone and where programs are: what any tool needs to behave.
_BASE = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR")
# libpq settings that are not secrets (paths and modes; never PGPASSWORD).
_LIBPQ = (
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGSYSCONFDIR",
    "PGSSLMODE",
    "PGSSLNEGOTIATION",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGSSLCRL",
    "PGSSLCRLDIR",
    "PGSSLSNI",
    "PGSSLCERTMODE",
    "PGSSLMINPROTOCOLVERSION",
    "PGSSLMAXPROTOCOLVERSION",
    "PGREQUIREPEER",
    "PGREQUIREAUTH",
    "PGCHANNELBINDING",
    "PGGSSENCMODE",
    "PGKRBSRVNAME",
    "PGGSSLIB",
    "PGTARGETSESSIONATTRS",
    "PGLOADBALANCEHOSTS",
    "PGCLIENTENCODING",
    "PGTZ",
    "PGDATESTYLE",
)
# Never passed on, even if a future allow-list entry would match them.
_NEVER = ("PGPASSWORD",)


def child_env(extra: Mapping[str, str] | None = None, *, libpq: bool = False) -> dict[str, str]:
    """The allow-listed part of ebk's environment, plus ``extra``.

    ``libpq``: also pass the non-secret PG* settings (TLS files, service file).
    """
    allowed = set(_BASE) | (set(_LIBPQ) if libpq else set())
    env = {
        name: value
        for name, value in os.environ.items()
        if (name in allowed or name.startswith("LC_")) and name not in _NEVER
    }
    env.setdefault("PATH", os.defpath)
    env.update(extra or {})
    for name in _NEVER:
        if name in env:
            raise ValueError(f"{name} must not be given to a child process")
    return env


def _pgpass_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def _private_parent() -> str | None:
    """Prefer a memory-backed directory, so the password is never written to a disk."""
    for candidate in (os.environ.get("XDG_RUNTIME_DIR"), "/dev/shm"):  # noqa: S108 (0700 dir)
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK | os.X_OK):
            return candidate
    return None


@contextmanager
def password_file(password: str) -> Iterator[Path]:
    """A PGPASSFILE holding ``password`` (mode 0600 in a 0700 directory), removed on exit.

    The one line matches any host, port, database and user: the child connects
    only where ebk sends it (PGHOST/PGPORT/PGUSER), and the file is its alone.
    """
    if any(c in password for c in "\r\n\0"):
        raise ConfigError(
            "the PostgreSQL password contains a line break or NUL byte, which libpq's "
            "password file cannot hold",
            hint="use a password without line breaks (postgres.password_file holds one line)",
        )
    directory = Path(tempfile.mkdtemp(prefix="ebk-pgpass-", dir=_private_parent()))
    try:
        os.chmod(directory, 0o700)
        path = directory / "pgpass"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"*:*:*:*:{_pgpass_field(password)}\n")
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def libpq_child_env(settings: Mapping[str, str], password: str | None) -> Iterator[dict[str, str]]:
    """Environment for a libpq client tool: allow-list + ``settings`` + a private PGPASSFILE.

    ``password`` None: the operator's own PGPASSFILE or ~/.pgpass (allow-listed)
    still applies.  Keep the context open until the child has exited.
    """
    if password is None:
        yield child_env(settings, libpq=True)
        return
    with password_file(password) as path:
        yield child_env({**settings, "PGPASSFILE": str(path)}, libpq=True)
