"""Logical backups: pg_dump -Fc and pg_dumpall --globals-only as streaming subprocesses."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from ebk.config import PostgresConfig
from ebk.errors import PostgresError
from ebk.postgres.connection import libpq_env
from ebk.postgres.tools import find_tool

READ_SIZE = 1024 * 1024


@contextmanager
def dump_process(
    cfg: PostgresConfig,
    major: int,
    *,
    database: str | None,
    globals_only: bool = False,
    snapshot: str | None = None,
) -> Iterator[IO[bytes]]:
    """Run pg_dump (or pg_dumpall -g) with stdout piped to us; stderr kept for errors."""
    if globals_only:
        argv = [find_tool("pg_dumpall", major, cfg.bin_dir), "--globals-only", "--no-password"]
    else:
        argv = [find_tool("pg_dump", major, cfg.bin_dir), "-Fc", "--no-password", "-Z", "0"]
        if snapshot:  # an exported snapshot: the caller fingerprints the same data
            argv.append(f"--snapshot={snapshot}")
    with libpq_env(cfg, database) as env:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        assert proc.stdout is not None and proc.stderr is not None
        try:
            yield proc.stdout
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
        returncode = proc.wait()
    if returncode != 0:
        what = "pg_dumpall --globals-only" if globals_only else f"pg_dump of database {database!r}"
        raise PostgresError(f"{what} failed: {err or 'exit code ' + str(returncode)}")
