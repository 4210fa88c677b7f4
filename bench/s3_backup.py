"""ebk vs pgBackRest, both streaming a >= 2 GiB database to moto's S3 server.

Usage: .venv/bin/python bench/s3_backup.py [--scale 140] [--rounds 2]

Both go through the same nginx TLS front (bench/tls_proxy.py) to one moto
server, runs interleaved.  pgBackRest 2.45 (Debian) with
repo1-cipher-type=aes-256-cbc, compress-type=zst (level 3), process-max=2;
ebk with its defaults (zstd level 3, AES-256-GCM, 8 MiB parts, 4 in flight).
Prints medians, the speed-up (pgBackRest time / ebk time) and ebk's peak RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Sample, load_pgbench, median, timed
from tls_proxy import TlsProxy

from tests.support.emulators import run_moto
from tests.support.net import free_port, wait_for_port
from tests.support.postgres import give_to_postgres, init_cluster, make_postgres_dir

VENV_BIN = Path(sys.executable).parent


def pgbackrest_conf(
    directory: Path, port: int, cluster_dir: Path, pg_port: int, socket_dir: Path
) -> Path:
    conf = directory / "pgbackrest.conf"
    conf.write_text(f"""[global]
repo1-type=s3
repo1-s3-bucket=bench-pgbackrest
repo1-s3-endpoint=127.0.0.1
repo1-storage-port={port}
repo1-s3-region=us-east-1
repo1-s3-key=test
repo1-s3-key-secret=test
repo1-s3-uri-style=path
repo1-storage-verify-tls=n
repo1-path=/pgbackrest
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=bench-only-passphrase
repo1-retention-full=99
compress-type=zst
compress-level=3
process-max=2
start-fast=y
archive-check=n
log-path={directory}
lock-path={directory}
log-level-console=warn

[bench]
pg1-path={cluster_dir}
pg1-port={pg_port}
pg1-socket-path={socket_dir}
""")
    give_to_postgres(conf)
    return conf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=int, default=140)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="backup.compression_threads")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    tls_port = free_port()
    work = make_postgres_dir("ebk-s3-bench-")
    cluster = init_cluster()
    proxy = None
    servers = contextlib.ExitStack()
    try:
        moto = servers.enter_context(run_moto(work / "moto"))
        proxy_dir = work / "proxy"
        proxy_dir.mkdir()
        proxy = TlsProxy(proxy_dir, tls_port, moto.port)
        wait_for_port(tls_port)
        import boto3

        endpoint = f"https://127.0.0.1:{tls_port}"
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            verify=str(proxy.cert),
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        for bucket in ("bench-pgbackrest", "bench-ebk"):
            s3.create_bucket(Bucket=bucket)

        load_pgbench(cluster, args.scale)
        db_bytes = int(cluster.psql("SELECT sum(pg_database_size(datname)) FROM pg_database"))

        conf = pgbackrest_conf(work, tls_port, cluster.data_dir, cluster.port, cluster.socket_dir)
        brest = [
            "runuser",
            "-u",
            "postgres",
            "--",
            "pgbackrest",
            f"--config={conf}",
            "--stanza=bench",
        ]
        subprocess.run([*brest, "stanza-create"], check=True, capture_output=True)

        config = work / "ebk.toml"
        config.write_text(
            f'[repository]\nurl = "s3://bench-ebk/ebk"\n[storage]\nendpoint_url = "{endpoint}"\n'
            f'region = "us-east-1"\naddressing_style = "path"\n'
            f'[keys]\nkeyfile = "{work}/kek.json"\n{cluster.config_section()}\n'
            f'[preflight]\npolicy = "off"\n[log]\nlevel = "warning"\n'
            f"[backup]\ncompression_threads = {args.threads}\n"
        )
        ebk_env = dict(
            os.environ,
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",
            AWS_CA_BUNDLE=str(proxy.cert),
        )
        ebk = [str(VENV_BIN / "ebk"), "--config", str(config)]
        subprocess.run([*ebk, "init"], check=True, capture_output=True, env=ebk_env)

        theirs: list[Sample] = []
        ours: list[Sample] = []
        for _ in range(args.rounds):
            theirs.append(timed([*brest, "backup", "--type=full"]))
            ours.append(timed([*ebk, "backup", "--type", "physical"], env=ebk_env))
        mib = db_bytes / 2**20
        result = {
            "database_bytes": db_bytes,
            "scale": args.scale,
            "pgbackrest_seconds": [round(s.seconds, 2) for s in theirs],
            "ebk_seconds": [round(s.seconds, 2) for s in ours],
            "pgbackrest_median": round(median([s.seconds for s in theirs]), 2),
            "ebk_median": round(median([s.seconds for s in ours]), 2),
            "speedup": round(
                median([s.seconds for s in theirs]) / median([s.seconds for s in ours]), 2
            ),
            "ebk_throughput_mib_s": round(mib / median([s.seconds for s in ours]), 1),
            "pgbackrest_throughput_mib_s": round(mib / median([s.seconds for s in theirs]), 1),
            "ebk_peak_rss_mib": round(max(s.peak_rss_mib for s in ours), 1),
            "ebk_cpu_seconds_median": round(median([s.cpu_seconds for s in ours]), 2),
        }
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(
                f"database: {mib:.0f} MiB (pgbench scale {args.scale}), {args.rounds} rounds, "
                "moto S3 behind nginx TLS"
            )
            print(
                "pgBackRest 2.45 aes-256-cbc zst process-max=2: median "
                f"{result['pgbackrest_median']} s "
                f"{result['pgbackrest_seconds']} ({result['pgbackrest_throughput_mib_s']} MiB/s)"
            )
            print(
                f"ebk backup --type physical:                    median {result['ebk_median']} s "
                f"{result['ebk_seconds']} ({result['ebk_throughput_mib_s']} MiB/s)"
            )
            print(f"speed-up pgBackRest/ebk: {result['speedup']}x (target >= 4)")
            print(f"ebk peak RSS: {result['ebk_peak_rss_mib']} MiB (target <= 150)")
    finally:
        if proxy is not None:
            proxy.stop()
        servers.close()
        cluster.destroy()
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
