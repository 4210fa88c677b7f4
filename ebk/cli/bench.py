"""`ebk bench`: benchmarks an operator runs on the database host itself."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from ebk.bench.volume import TARGET_RATIO, Options, render, run_volume_bench
from ebk.cli.output import emit_json
from ebk.errors import PostgresError
from ebk.preflight.inspect import Inspector
from ebk.runtime import Runtime


def _bin_dir(given: str) -> Path:
    """--bin-dir, else postgres.bin_dir, else pgbench on PATH, else the newest Debian one."""
    if given:
        return Path(given)
    found = shutil.which("pgbench")
    if found:
        real = Path(found).resolve()
        if (real.parent / "initdb").is_file():
            return real.parent
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if debian:
        return debian[-1].parent
    raise PostgresError(
        "cannot find initdb and pgbench",
        hint="install the PostgreSQL server package (Debian: postgresql-NN and "
        "postgresql-contrib) or pass --bin-dir",
    )


@click.group()
def bench() -> None:
    """Measure what encryption costs the database on this host.

    \b
    Examples:
      ebk bench volume --plain /srv/plain-test --encrypted /srv/pgdata-enc/test
      ebk bench volume --plain /srv/p --encrypted /srv/e --rounds 5 --json
    """


@bench.command("volume")
@click.option(
    "--plain",
    "plain",
    required=True,
    metavar="DIR",
    type=click.Path(path_type=Path, file_okay=False),
    help="Empty directory on an unencrypted volume (same kind of storage).",
)
@click.option(
    "--encrypted",
    "encrypted",
    required=True,
    metavar="DIR",
    type=click.Path(path_type=Path, file_okay=False),
    help="Empty directory on the encrypted volume to measure.",
)
@click.option(
    "--duration", default=30, show_default=True, metavar="S", help="Seconds per pgbench run."
)
@click.option(
    "--rounds",
    default=5,
    show_default=True,
    metavar="N",
    help="Interleaved rounds; each gives one paired ratio.",
)
@click.option(
    "--scale",
    default="auto",
    show_default=True,
    metavar="IN[,OUT]",
    help="pgbench scale of the in-cache and out-of-cache data sets (~16 MB per "
    "unit); auto: 1/8 of RAM and 1.25 x RAM; OUT 0 skips the out-of-cache run.",
)
@click.option("--clients", default=0, metavar="N", help="pgbench clients (default: CPUs, >= 2).")
@click.option(
    "--shared-buffers",
    default="128MB",
    show_default=True,
    metavar="SIZE",
    help="shared_buffers of both clusters.",
)
@click.option(
    "--target",
    default=TARGET_RATIO,
    show_default=True,
    metavar="RATIO",
    help="Verdict threshold for encrypted/plain throughput.",
)
@click.option(
    "--bin-dir",
    default="",
    metavar="DIR",
    help="PostgreSQL programs (default: postgres.bin_dir, pgbench on PATH, or the "
    "newest /usr/lib/postgresql/NN/bin).",
)
@click.option("--json", "json_output", is_flag=True, help="Print the full report as JSON.")
@click.pass_obj
def volume(
    config_path: Path | None,
    plain: Path,
    encrypted: Path,
    duration: int,
    rounds: int,
    scale: str,
    clients: int,
    shared_buffers: str,
    target: float,
    bin_dir: str,
    json_output: bool,
) -> None:
    """Compare PostgreSQL on an encrypted volume with a plain one, on this host.

    Creates a throwaway cluster (same settings, own loopback port; as root it
    runs as the postgres user) in each empty directory, loads pgbench data
    sized against RAM (in-cache, and out-of-cache with a cold page cache), and
    runs interleaved rounds of TPC-B, select-only and a COPY bulk load. Reports
    throughput, latency p50/p99 and the ratio encrypted/plain with a 95 %
    confidence interval, and a verdict against the target (0.95: at most 5 %
    slower): within, exceeds, or inconclusive (run more rounds). Both clusters
    are stopped and removed afterwards, also on Ctrl-C or SIGTERM.

    Refused (exit 2): a directory that is missing, not empty or not writable,
    and two directories on the same kind of volume (as `ebk preflight`
    classifies them). The verdict does not change the exit code (0).

    \b
    Examples:
      ebk bench volume --plain /srv/plain/b --encrypted /srv/luks/b
      ebk bench volume --plain /mnt/p --encrypted /mnt/e --scale 50,0 \\
          --duration 10 --rounds 3 --json > bench.json
    """
    runtime = Runtime.load(config_path)
    opts = Options(
        plain=plain,
        encrypted=encrypted,
        bin_dir=_bin_dir(bin_dir or runtime.config.postgres.bin_dir),
        duration=duration,
        rounds=rounds,
        scale=scale,
        clients=clients,
        shared_buffers=shared_buffers,
        target=target,
    )
    # The preflight's own classifier, with its configured cloud/Kubernetes detectors.
    report = run_volume_bench(opts, Inspector.from_config(runtime.config.preflight))
    if json_output:
        emit_json(report)
    else:
        for line in render(report):
            click.echo(line)


COMMANDS = [bench]
