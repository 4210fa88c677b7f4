"""`ebk list` and `ebk retention --dry-run` over many backups, local and on moto's S3.

Writes N synthetic complete backups (a sealed manifest and a key object each;
no payload, listing never reads it) with the storage API, then times the two
commands as real processes, interleaved, median of the rounds.  Python's start
and ebk's imports are included: this is what an operator or a cron job waits.

    .venv/bin/python bench/list_scale.py --backups 10000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from common import REPO, median, sample_manifest, timed
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ebk.keys.envelope import KeyObject
from ebk.repository.layout import manifest_name, new_backup_id, object_name
from ebk.repository.writer import WriterKey, encode_public
from ebk.storage.base import Storage
from ebk.storage.factory import open_storage
from tests.support.net import free_port, wait_for_port

VENV_BIN = REPO / ".venv" / "bin"


WRITER = WriterKey(Ed25519PrivateKey.generate())


def populate(storage: Storage, count: int) -> None:
    """N signed backups, as ebk writes them (the bench pins WRITER's public key)."""
    start = datetime(2025, 1, 1, tzinfo=UTC)

    def one(i: int) -> None:
        when = start + timedelta(hours=i)
        backup_id = new_backup_id(when)
        manifest = sample_manifest(backup_id, when, kind="physical" if i % 4 else "logical")
        manifest.seal(secrets.token_bytes(32))
        manifest.sign(WRITER)
        key = KeyObject(backup_id, "dek-0", {"backup_id": backup_id}, [])
        storage.put_bytes(object_name(backup_id, "key.json"), key.to_json())
        storage.put_bytes(manifest_name(backup_id), manifest.to_json())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(count)))
    storage.put_bytes(
        "ebk-repository.json", json.dumps({"format": "ebk-repository", "layout": 2}).encode()
    )


def measure(
    label: str, url: str, env: dict[str, str], rounds: int, count: int
) -> dict[str, object]:
    config = Path(tempfile.mkdtemp()) / "ebk.toml"
    config.write_text(
        f'[repository]\nurl = "{url}"\nwriter_keys = ["{encode_public(WRITER.public)}"]\n'
        f'cache_dir = "{config.parent / "cache"}"\n'
        '[preflight]\npolicy = "off"\n[retention]\nmin_age = "0s"\n'
    )
    env = dict(env, EBK_CONFIG=str(config))
    ebk = [str(VENV_BIN / "python"), "-m", "ebk"]
    listing, retention = [], []
    for _ in range(rounds):
        listing.append(timed([*ebk, "list", "--json"], env=env))
        retention.append(timed([*ebk, "retention", "--dry-run", "--json"], env=env))
    out = subprocess.run([*ebk, "list", "--json"], env=env, capture_output=True, check=True)
    assert len(json.loads(out.stdout)) == count
    result = {
        "where": label,
        "backups": count,
        "list_s": round(median([s.seconds for s in listing]), 2),
        "list_rss_mib": round(max(s.peak_rss_mib for s in listing)),
        "retention_dry_run_s": round(median([s.seconds for s in retention]), 2),
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backups", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    env = dict(os.environ)

    local = Path(tempfile.mkdtemp(prefix="ebk-list-bench-")) / "repo"
    populate(open_storage(f"file://{local}"), args.backups)
    measure("local", f"file://{local}", env, args.rounds, args.backups)

    port = free_port()
    moto = subprocess.Popen(
        [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        s3_env = dict(
            env,
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
            EBK_STORAGE__ENDPOINT_URL=f"http://127.0.0.1:{port}",
            EBK_STORAGE__ADDRESSING_STYLE="path",
        )
        import boto3

        boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        ).create_bucket(Bucket="bench")
        os.environ.update({k: v for k, v in s3_env.items() if k.startswith("AWS_")})
        from ebk.config import StorageConfig

        storage = open_storage(
            "s3://bench/repo",
            StorageConfig(endpoint_url=f"http://127.0.0.1:{port}", addressing_style="path"),
        )
        populate(storage, args.backups)
        measure("moto S3", "s3://bench/repo", s3_env, args.rounds, args.backups)
    finally:
        moto.terminate()
        moto.wait()


if __name__ == "__main__":
    sys.exit(main())
