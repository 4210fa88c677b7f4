"""`ebk wal-push`, `ebk wal-fetch`, `ebk wal check`: archive_command and restore_command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ebk.app.wal import WalKeyring, fetch_wal, push_wal
from ebk.errors import ConfigError, EbkError, ObjectNotFound, exit_code_info
from ebk.runtime import Runtime
from ebk.text import printable
from ebk.walclient import FETCH_FATAL


@click.command("wal-push")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--direct",
    is_flag=True,
    help="Push from this process even when the daemon listens (the fallback path).",
)
@click.pass_obj
def wal_push(config_path: Path | None, path: Path, direct: bool) -> None:
    """Archive one WAL file (PostgreSQL's archive_command).

    Exits 0 only once the encrypted object is durable in the repository, or
    when exactly this file was archived before; a different file under the
    same name is refused (exit 5) and nothing is overwritten. When the ebk
    daemon runs, a small client hands the path to it over its Unix socket
    (no Python start-up of ebk per segment, no key-provider call); otherwise
    this process pushes itself.

    \b
    Examples:
      archive_mode = on
      archive_command = 'ebk --config /etc/ebk/ebk.toml wal-push %p'
      ebk wal-push --direct pg_wal/000000010000000000000003
    """
    del direct  # the fast client (ebk.walclient) runs before click; here is the direct push
    runtime = Runtime.load(config_path)
    keyring = WalKeyring(runtime)
    result = push_wal(keyring, path, runtime.config.wal)
    if result.already:
        click.echo(f"{result.name}: archived before, identical", err=True)


@click.command("wal-fetch")
@click.argument("name", metavar="NAME")
@click.argument("dest", metavar="PATH", type=click.Path(path_type=Path))
@click.option("--prefetch", type=click.IntRange(0, 64), help="Segments to fetch ahead.")
@click.pass_obj
def wal_fetch(config_path: Path | None, name: str, dest: Path, prefetch: int | None) -> None:
    """Fetch one archived WAL file to PATH (PostgreSQL's restore_command).

    Writes PATH only after the whole object authenticated. Exits 1, quietly,
    when NAME is not archived (PostgreSQL asks past the end of the archive),
    2 for a usage or config error. Any other failure (tampered object,
    unreachable repository, key provider) prints why and exits 126, which
    makes PostgreSQL stop recovery
    instead of ending it early at a segment it could not trust. The next
    wal.prefetch segments are fetched ahead, still encrypted, into
    pg_wal/ebk-prefetch/. A segment the streaming daemon (wal.mode =
    "stream") has not completed yet comes from its newest authenticated
    partial, zero-padded (PostgreSQL reads that as the end of WAL).

    \b
    Examples:
      restore_command = 'ebk --config /etc/ebk/ebk.toml wal-fetch %f %p'
      ebk wal-fetch 000000010000000000000003 /tmp/seg
    """
    try:
        runtime = Runtime.load(config_path)
        depth = runtime.config.wal.prefetch if prefetch is None else prefetch
        fetch_wal(WalKeyring(runtime), name, dest, prefetch=depth)
    except ObjectNotFound:
        sys.exit(1)
    except ConfigError:
        # Exit 2 as everywhere: every fetch fails alike, so PostgreSQL cannot even reach a
        # consistent state from the base backup and does not start.
        raise
    except EbkError as exc:
        info = exit_code_info(exc.exit_code)
        lines = [f"ebk: error: wal-fetch {printable(name)}: {printable(exc.message)}"]
        if exc.hint or info.hint:
            lines.append(f"  hint: {printable(exc.hint or info.hint)}")
        lines.append(
            f"  exit code {FETCH_FATAL} (PostgreSQL stops recovery); ebk class "
            f"{exc.exit_code}: {info.meaning}"
        )
        click.echo("\n".join(lines), err=True)
        sys.exit(FETCH_FATAL)


@click.group("wal")
def wal() -> None:
    """The WAL archive: is it continuous, does archiving work end to end.

    \b
    Examples:
      ebk wal check
      ebk wal check --switch --json
    """


@wal.command("check")
@click.option(
    "--switch",
    is_flag=True,
    help="Run pg_switch_wal() and wait until that segment is archived and authenticates.",
)
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait with --switch.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def wal_check(config_path: Path | None, switch: bool, timeout: float, as_json: bool) -> None:
    """Check that the archive is continuous from the oldest backup's start to now.

    Every WAL file in the range is downloaded and authenticated; gaps and
    objects that do not authenticate are reported by name (exit 5).

    \b
    Examples:
      ebk wal check
      ebk wal check --switch --timeout 120 --json
    """
    from ebk.app.walcheck import check_archive

    runtime = Runtime.load(config_path, json_output=as_json)
    report = check_archive(runtime, switch=switch, timeout=timeout)
    if report.start is None:
        report.raise_for_problems()  # nothing to check: only the error
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(report.describe())
    report.raise_for_problems()


COMMANDS = [wal_push, wal_fetch, wal]
