"""`ebk bench volume`: what an encrypted volume costs PostgreSQL on this host.

Two throwaway clusters with identical settings, one in a directory on a plain
volume and one on an encrypted volume, run the same workloads in interleaved
rounds (the side that goes first alternates), so the drift of a busy host hits
both alike and each round gives one paired ratio encrypted/plain.  The verdict
compares the ratio's 95 % confidence interval with the target (0.95: at most
5 % slower).  Every server started here is stopped on every exit path.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from ebk.bench.cluster import BenchCluster
from ebk.bench.host import host_facts, load_average, ram_bytes
from ebk.bench.stats import RatioInterval, Spread
from ebk.errors import BenchTargetError, PostgresError
from ebk.postgres.scratch import SERVER_USER, as_server
from ebk.preflight.inspect import Inspector
from ebk.preflight.model import PathVerdict, Status, Target

log = structlog.get_logger("ebk.bench")

SIDES = ("plain", "encrypted")
TARGET_RATIO = 0.95
MB_PER_SCALE = 16  # pgbench: ~15 MB of table and index per scale unit
IGNORED_ENTRIES = {"lost+found"}
REPORT_KIND = "ebk-bench-volume"
REPORT_VERSION = 1


@dataclass(frozen=True)
class Scale:
    """pgbench scale of the in-cache data set and of the out-of-cache one (0: skip)."""

    in_cache: int
    out_of_cache: int

    @classmethod
    def parse(cls, text: str, ram: int) -> Scale:
        """'auto', 'IN' or 'IN,OUT'.  auto: in-cache ~1/8 of RAM (at most 2 GiB),
        out-of-cache ~1.25 x RAM, so the page cache cannot hold it."""
        if text == "auto":
            in_mb = min(ram // 8, 2 << 30) // (1 << 20)
            out_mb = ram * 5 // 4 // (1 << 20)
            return cls(max(1, in_mb // MB_PER_SCALE), max(1, out_mb // MB_PER_SCALE))
        parts = text.split(",")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            values = []
        if len(values) not in (1, 2) or values[0] < 1 or (len(values) == 2 and values[1] < 0):
            raise BenchTargetError(
                f"--scale {text!r} is not 'auto', IN or IN,OUT",
                hint="e.g. --scale 50,2000 (pgbench scale units of ~16 MB; "
                "OUT 0 skips the out-of-cache run)",
            )
        return cls(values[0], values[1] if len(values) == 2 else 0)


@dataclass
class Options:
    plain: Path
    encrypted: Path
    bin_dir: Path
    duration: int = 30
    rounds: int = 5
    scale: str = "auto"
    clients: int = 0
    shared_buffers: str = "128MB"
    target: float = TARGET_RATIO


@dataclass
class Sample:
    """One workload run on one side in one round."""

    rate: float  # transactions (or rows) per second
    p50_ms: float | None = None
    p99_ms: float | None = None
    seconds: float = 0.0


@dataclass
class Case:
    dataset: str
    workload: str
    unit: str
    samples: dict[str, list[Sample]] = field(default_factory=lambda: {s: [] for s in SIDES})

    def to_dict(self, target: float) -> dict[str, object]:
        sides: dict[str, object] = {}
        for side, samples in self.samples.items():
            entry: dict[str, object] = {
                "rate": Spread.of([s.rate for s in samples]).to_dict(),
                "rounds": [s.rate for s in samples],
            }
            p50 = [s.p50_ms for s in samples if s.p50_ms is not None]
            p99 = [s.p99_ms for s in samples if s.p99_ms is not None]
            entry["latency_ms_p50"] = Spread.of(p50).to_dict() if p50 else None
            entry["latency_ms_p99"] = Spread.of(p99).to_dict() if p99 else None
            sides[side] = entry
        ratios = [
            e.rate / p.rate
            for p, e in zip(self.samples["plain"], self.samples["encrypted"], strict=True)
            if p.rate > 0
        ]
        interval = RatioInterval.of(ratios)
        return {
            "dataset": self.dataset,
            "workload": self.workload,
            "unit": self.unit,
            **sides,
            "ratio": interval.to_dict(),
            "verdict": interval.verdict(target),
        }


# -- the directories -----------------------------------------------------------


def _entries(path: Path) -> list[str]:
    return sorted(n for n in os.listdir(path) if n not in IGNORED_ENTRIES)


def check_directory(path: Path, side: str) -> None:
    """Exists, is an empty directory, and this process and the server user can write it."""
    flag = f"--{side}"
    if not path.is_dir():
        raise BenchTargetError(
            f"{flag} {path} is not a directory",
            hint="create an empty directory on the volume to measure",
        )
    try:
        found = _entries(path)
    except OSError as exc:
        raise BenchTargetError(f"{flag} {path} cannot be listed: {exc.strerror}") from None
    if found:
        shown = ", ".join(found[:3]) + (" ..." if len(found) > 3 else "")
        raise BenchTargetError(
            f"{flag} {path} is not empty ({len(found)} entries: {shown})",
            hint="give an empty directory: the benchmark creates a throwaway cluster there "
            "and removes it afterwards, and never touches existing files",
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".ebk-bench-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BenchTargetError(
            f"{flag} {path} is not writable: {exc.strerror}",
            hint="give a directory on a read-write volume that this user can write",
        ) from None
    if os.geteuid() == 0:
        reach = subprocess.run(
            as_server(["test", "-x", str(path)]), capture_output=True, check=False
        )
        if reach.returncode != 0:
            raise BenchTargetError(
                f"{flag} {path} cannot be reached by the {SERVER_USER} user, which runs "
                "the benchmark's PostgreSQL",
                hint=f"make {path} and its parent directories searchable (chmod o+x)",
            )


def classify(inspector: Inspector, path: Path, side: str) -> PathVerdict:
    return inspector.inspect(Target(f"bench-{side}", str(path)))


def check_volumes(plain: PathVerdict, encrypted: PathVerdict) -> None:
    """Refuse comparisons that measure nothing: both sides of the same kind, or swapped."""
    p, e = plain.status is Status.ENCRYPTED, encrypted.status is Status.ENCRYPTED
    if p and e:
        raise BenchTargetError(
            f"both directories are on encrypted volumes ({plain.summary()} | "
            f"{encrypted.summary()}): there is nothing to compare",
            hint="--plain must be a directory on an unencrypted volume on the same kind of storage",
        )
    if p and not e:
        raise BenchTargetError(
            f"--plain {plain.target.path} is encrypted and --encrypted "
            f"{encrypted.target.path} is not proven encrypted: swapped?",
            hint="swap the two directories",
        )
    if not e:
        raise BenchTargetError(
            f"both directories are on the same kind of volume: --encrypted "
            f"{encrypted.target.path} is {encrypted.status} ({encrypted.summary()})",
            hint="--encrypted must be on an encrypted volume (see `ebk preflight`): "
            "dm-crypt/LUKS, fscrypt, gocryptfs, ZFS encryption or an encrypted cloud disk",
        )


def volume_facts(verdict: PathVerdict) -> dict[str, object]:
    return {
        "path": verdict.target.path,
        "status": str(verdict.status),
        "encrypted_by": [e.layer for e in verdict.encrypted_by()],
        "cipher": ", ".join(e.cipher for e in verdict.encrypted_by() if e.cipher),
        "fstype": verdict.fstype,
        "mount_point": verdict.mount_point,
        "source": verdict.source,
        "device_stack": verdict.device_stack,
        "summary": verdict.summary(),
    }


# -- workloads -----------------------------------------------------------------

_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)


def _three_digits(us: int) -> int:
    """Latency rounded to 3 significant digits: the histogram stays small (bounded
    memory however many transactions ran) and percentiles keep 0.1 % precision."""
    scale = 1
    while us >= 1000 * scale:
        scale *= 10
    return us - us % scale


def latency_histogram(log_dir: Path, prefix: str) -> Counter[int]:
    """Per-transaction latencies (µs) from pgbench -l logs (column 3), then deleted."""
    counts: Counter[int] = Counter()
    for path in log_dir.glob(f"{prefix}.*"):
        with path.open() as fh:
            for line in fh:
                fields = line.split()
                if len(fields) >= 3 and fields[2].isdigit():
                    counts[_three_digits(int(fields[2]))] += 1
        path.unlink()
    return counts


def histogram_percentile(counts: Counter[int], q: float) -> float | None:
    """Nearest-rank percentile in ms, or None without transactions."""
    total = sum(counts.values())
    if not total:
        return None
    rank = max(1, math.ceil(q / 100 * total))
    seen = 0
    for value in sorted(counts):
        seen += counts[value]
        if seen >= rank:
            return value / 1000.0
    return max(counts) / 1000.0


def evict_page_cache(data_dir: Path) -> None:
    """Drop this cluster's files (only them) from the page cache: a cold start."""
    for dirpath, _dirs, files in os.walk(data_dir):
        for name in files:
            try:
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass
            finally:
                os.close(fd)


@dataclass
class Runner:
    opts: Options
    clusters: dict[str, BenchCluster]
    scale: Scale
    log_dir: Path

    @property
    def clients(self) -> int:
        return self.opts.clients or max(2, os.cpu_count() or 1)

    def datasets(self) -> list[tuple[str, str, int]]:
        sets = [("in_cache", "bench_in", self.scale.in_cache)]
        if self.scale.out_of_cache:
            sets.append(("out_of_cache", "bench_out", self.scale.out_of_cache))
        return sets

    def load(self) -> dict[str, dict[str, float]]:
        """Create and fill each data set on both sides (load times are reported too)."""
        times: dict[str, dict[str, float]] = {}
        for name, db, scale in self.datasets():
            for side, cluster in self.clusters.items():
                log.info("loading", side=side, dataset=name, scale=scale)
                cluster.psql(f"CREATE DATABASE {db}")
                began = time.monotonic()
                cluster.pgbench(
                    ["-i", "-q", "-s", str(scale), db], cwd=self.log_dir, timeout=24 * 3600
                )
                cluster.psql("CHECKPOINT")
                times.setdefault(name, {})[side] = round(time.monotonic() - began, 2)
            for cluster in self.clusters.values():
                with suppress(PostgresError):  # contrib missing: runs warm up by themselves
                    cluster.psql("CREATE EXTENSION IF NOT EXISTS pg_prewarm", db)
        for cluster in self.clusters.values():
            cluster.psql("CREATE DATABASE bench_copy")
        return times

    def pgbench_run(self, side: str, db: str, select_only: bool, tag: str) -> Sample:
        cluster = self.clusters[side]
        args = ["-n", "-S"] if select_only else ["-n"]
        if not select_only:  # TPC-B's history table grows: keep rounds comparable
            cluster.psql("TRUNCATE pgbench_history", db)
            cluster.psql("VACUUM pgbench_branches, pgbench_tellers", db)
        clients = self.clients
        args += [
            "-M",
            "prepared",
            "-c",
            str(clients),
            "-j",
            str(min(clients, os.cpu_count() or 1)),
            "-T",
            str(self.opts.duration),
            "-l",
            f"--log-prefix={self.log_dir / tag}",
            db,
        ]
        began = time.monotonic()
        out = cluster.pgbench(args, cwd=self.log_dir, timeout=self.opts.duration * 4 + 600)
        seconds = time.monotonic() - began
        match = _TPS.search(out)
        if match is None:
            raise PostgresError(f"pgbench printed no tps line: {out.strip()[-200:]}")
        lat = latency_histogram(self.log_dir, tag)
        return Sample(
            float(match.group(1)),
            histogram_percentile(lat, 50),
            histogram_percentile(lat, 99),
            round(seconds, 2),
        )

    def copy_run(self, side: str) -> Sample:
        """Bulk load: pgbench's client-side generation is COPY FROM STDIN; the
        CHECKPOINT makes the written pages reach the volume inside the timing."""
        cluster = self.clusters[side]
        scale = max(1, min(self.scale.in_cache, 50))
        began = time.monotonic()
        cluster.pgbench(
            ["-i", "-q", "-I", "dtg", "-s", str(scale), "bench_copy"],
            cwd=self.log_dir,
            timeout=24 * 3600,
        )
        cluster.psql("CHECKPOINT")
        seconds = time.monotonic() - began
        return Sample(scale * 100_000 / seconds, seconds=round(seconds, 2))

    def prepare(self, side: str, dataset: str, db: str) -> None:
        cluster = self.clusters[side]
        if dataset == "out_of_cache":
            cluster.psql("CHECKPOINT")
            cluster.stop()
            evict_page_cache(cluster.data_dir)
            cluster.start()
        else:
            # No contrib: the first seconds of the run warm the cache instead.
            with suppress(PostgresError):
                cluster.psql(
                    "SELECT pg_prewarm('pgbench_accounts'), pg_prewarm('pgbench_accounts_pkey')", db
                )

    def cases(self) -> list[tuple[Case, Callable[[str, str], Sample]]]:
        found: list[tuple[Case, Callable[[str, str], Sample]]] = []
        for dataset, db, _scale in self.datasets():
            for workload, select_only in (("tpcb", False), ("select_only", True)):
                case = Case(dataset, workload, "tps")

                def run(
                    side: str,
                    tag: str,
                    dataset: str = dataset,
                    db: str = db,
                    select_only: bool = select_only,
                ) -> Sample:
                    self.prepare(side, dataset, db)
                    return self.pgbench_run(side, db, select_only, tag)

                found.append((case, run))
        found.insert(
            2, (Case("bulk_load", "copy", "rows_per_s"), lambda side, _tag: self.copy_run(side))
        )
        return found

    def rounds(self) -> list[Case]:
        plan = self.cases()
        for number in range(self.opts.rounds):
            order = SIDES if number % 2 == 0 else SIDES[::-1]
            for case, run in plan:
                for side in order:
                    tag = f"r{number}-{case.dataset}-{case.workload}-{side}"
                    sample = run(side, tag)
                    case.samples[side].append(sample)
                    log.info(
                        "round",
                        round=number + 1,
                        of=self.opts.rounds,
                        case=f"{case.dataset}/{case.workload}",
                        side=side,
                        rate=round(sample.rate, 1),
                        p99_ms=sample.p99_ms,
                    )
        return [case for case, _ in plan]


# -- the whole run -------------------------------------------------------------


@contextmanager
def clusters_in(opts: Options, settings: dict[str, str]) -> Iterator[dict[str, BenchCluster]]:
    """Both clusters, created and started; stopped and removed however the block ends."""
    with ExitStack() as stack:
        made: dict[str, BenchCluster] = {}
        for side, path in (("plain", opts.plain), ("encrypted", opts.encrypted)):
            cluster = BenchCluster(path, opts.bin_dir, settings)
            stack.callback(cluster.remove)
            made[side] = cluster
            cluster.create()
            cluster.start()
        yield made


def server_settings(shared_buffers: str) -> dict[str, str]:
    """The same on both sides; durable (fsync on) because that is what is measured."""
    return {
        "shared_buffers": f"'{shared_buffers}'",
        "max_wal_size": "'2GB'",
        "checkpoint_timeout": "'15min'",
        "fsync": "on",
        "synchronous_commit": "on",
        "max_connections": "100",
        "autovacuum": "off",  # no background vacuum landing in one side's round only
    }


def _check_space(opts: Options, scale: Scale) -> None:
    need = (scale.in_cache + scale.out_of_cache + min(scale.in_cache, 50)) * MB_PER_SCALE
    need = need * 3 // 2 + 512  # indexes, WAL, slack
    if opts.plain.stat().st_dev == opts.encrypted.stat().st_dev:
        need *= 2  # both clusters on one filesystem
    for side, path in (("plain", opts.plain), ("encrypted", opts.encrypted)):
        free = shutil.disk_usage(path).free // (1 << 20)
        if free < need:
            raise BenchTargetError(
                f"--{side} {path} has {free} MiB free; the data sets need about {need} MiB",
                hint="use a bigger volume or a smaller --scale IN,OUT (OUT 0 skips the "
                "out-of-cache run)",
            )


def run_volume_bench(opts: Options, inspector: Inspector | None = None) -> dict[str, object]:
    """Check the directories, run the interleaved rounds, return the report."""
    plain, encrypted = opts.plain.resolve(), opts.encrypted.resolve()
    if plain == encrypted or plain in encrypted.parents or encrypted in plain.parents:
        raise BenchTargetError(
            "--plain and --encrypted must be two separate directories",
            hint="one on an unencrypted volume, one on an encrypted one",
        )
    check_directory(plain, "plain")
    check_directory(encrypted, "encrypted")
    inspector = inspector or Inspector()
    verdicts = {
        "plain": classify(inspector, plain, "plain"),
        "encrypted": classify(inspector, encrypted, "encrypted"),
    }
    check_volumes(verdicts["plain"], verdicts["encrypted"])
    for tool in ("initdb", "pg_ctl", "pgbench", "psql"):
        if not (opts.bin_dir / tool).is_file():
            raise PostgresError(
                f"{tool} is not in {opts.bin_dir}",
                hint="pass --bin-dir (Debian: /usr/lib/postgresql/NN/bin)",
            )
    scale = Scale.parse(opts.scale, ram_bytes())
    _check_space(opts, scale)
    if opts.rounds < 1 or opts.duration < 1:
        raise BenchTargetError("--rounds and --duration must be at least 1")
    started = datetime.now(UTC)
    load_start = load_average()
    settings = server_settings(opts.shared_buffers)
    with tempfile.TemporaryDirectory(prefix="ebk-bench-logs-") as tmp:
        log_dir = Path(tmp)
        with clusters_in(opts, settings) as clusters:
            version = clusters["plain"].version()
            runner = Runner(opts, clusters, scale, log_dir)
            load_times = runner.load()
            cases = runner.rounds()
    results = [c.to_dict(opts.target) for c in cases]
    verdicts_seen = {str(r["verdict"]) for r in results}
    overall = (
        "exceeds"
        if "exceeds" in verdicts_seen
        else "inconclusive"
        if "inconclusive" in verdicts_seen
        else "within"
    )
    return {
        "kind": REPORT_KIND,
        "version": REPORT_VERSION,
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {
            **host_facts(),
            "load_average_start": load_start,
            "load_average_end": load_average(),
        },
        "postgres": {
            "version": version,
            "bin_dir": str(opts.bin_dir),
            "settings": {k: v.strip("'") for k, v in settings.items()},
        },
        "volumes": {side: volume_facts(v) for side, v in verdicts.items()},
        "parameters": {
            "duration_s": opts.duration,
            "rounds": opts.rounds,
            "clients": runner.clients,
            "scale_in_cache": scale.in_cache,
            "scale_out_of_cache": scale.out_of_cache,
            "copy_scale": max(1, min(scale.in_cache, 50)),
            "target_ratio": opts.target,
            "interleaved": True,
        },
        "load_seconds": load_times,
        "results": results,
        "verdict": overall,
    }


def _fmt(value: object, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render(report: dict[str, Any]) -> list[str]:
    """The human table: one line per workload, medians with min/max and the ratio."""
    host = report["host"]
    volumes = report["volumes"]
    assert isinstance(host, dict) and isinstance(volumes, dict)
    lines = [
        f"plain:     {volumes['plain']['path']} ({volumes['plain']['status']}, "
        f"{volumes['plain']['fstype']})",
        f"encrypted: {volumes['encrypted']['path']} "
        f"({', '.join(volumes['encrypted']['encrypted_by'])})",
        f"host: {host['cpus']} CPUs, {int(host['ram_bytes']) >> 30} GiB, AES instructions: "
        f"{host['cpu_aes']}, kernel xts(aes): {host['crypto_drivers'].get('xts(aes)', '-')}, "
        f"load {host['load_average_start']} -> {host['load_average_end']}",
        "",
        f"{'workload':<26}{'plain (min-max)':>26}{'encrypted (min-max)':>26}"
        f"{'p99 ms p/e':>14}{'ratio [95% CI]':>22}  verdict",
    ]
    results = report["results"]
    assert isinstance(results, list)
    for r in results:
        p, e, ratio = r["plain"], r["encrypted"], r["ratio"]

        def cell(side: dict[str, dict[str, float]]) -> str:
            rate = side["rate"]
            return f"{rate['median']:.0f} ({rate['min']:.0f}-{rate['max']:.0f})"

        p99 = "-"
        if p["latency_ms_p99"] and e["latency_ms_p99"]:
            p99 = f"{p['latency_ms_p99']['median']:.1f}/{e['latency_ms_p99']['median']:.1f}"
        ci = f"[{_fmt(ratio['ci95_low'], 3)}, {_fmt(ratio['ci95_high'], 3)}]"
        lines.append(
            f"{r['dataset'] + '/' + r['workload']:<26}{cell(p):>26}{cell(e):>26}"
            f"{p99:>14}{_fmt(ratio['ratio'], 3) + ' ' + ci:>22}  {r['verdict']}"
        )
    lines.append("")
    lines.append(
        f"verdict: {report['verdict']} (target: encrypted/plain >= "
        f"{report['parameters']['target_ratio']}, whole 95% interval)"
    )
    return lines
