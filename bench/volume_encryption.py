"""`ebk bench volume` on every encrypted volume this machine can make, against a plain one.

Usage (root): .venv/bin/python bench/volume_encryption.py [--kinds fscrypt,gocryptfs]
              [--duration 10] [--rounds 3] [--scale 16,48] [--out DIR]

fscrypt: one ext4 -O encrypt loop image (sparse file on the root filesystem);
  --plain is a directory on it without a policy, --encrypted one with an fscrypt
  v2 policy (AES-256-XTS contents, AES-256-CTS names), so both sides share the
  filesystem, the loop device and the backing disk.
gocryptfs: --plain is a directory on the root filesystem, --encrypted the
  gocryptfs mount (-allow_other, so the postgres user can use it) whose cipher
  directory is on that same filesystem.
dm-crypt is not run here: it needs the VM tier (docs/performance.md says so).
Each kind writes OUT/volume-KIND.json (the full report) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ebk.bench.volume import render
from tests.support.encrypted_fs import (
    add_raw_key,
    loop_ext4,
    remove_key,
    set_v2_policy,
)
from tests.support.postgres import PG_BIN, give_to_postgres


@contextmanager
def fscrypt_pair(base: Path, size_mb: int) -> Iterator[tuple[Path, Path]]:
    with loop_ext4(base / "fs.img", base / "mnt", size_mb=size_mb, encrypt=True) as mnt:
        mnt.chmod(0o755)
        ident = add_raw_key(mnt, os.urandom(64))
        try:
            plain = mnt / "plain"
            plain.mkdir()
            encrypted = mnt / "encrypted"
            set_v2_policy(encrypted, ident)
            yield plain, encrypted
        finally:
            remove_key(mnt, ident)


@contextmanager
def gocryptfs_pair(base: Path) -> Iterator[tuple[Path, Path]]:
    cipher, mount, plain, passfile = base / "cipher", base / "gocrypt", base / "plain", base / "pw"
    for path in (cipher, mount, plain):
        path.mkdir()
    passfile.write_text(os.urandom(16).hex() + "\n")
    subprocess.run(
        ["gocryptfs", "-q", "-init", "-passfile", str(passfile), str(cipher)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    subprocess.run(
        [
            "gocryptfs",
            "-q",
            "-nosyslog",
            "-allow_other",
            "-passfile",
            str(passfile),
            str(cipher),
            str(mount),
        ],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=120,
    )
    try:
        mount.chmod(0o755)
        yield plain, mount
    finally:
        subprocess.run(["fusermount", "-u", "-z", str(mount)], check=False)


def run_kind(kind: str, args: argparse.Namespace) -> dict[str, object]:
    base = Path(tempfile.mkdtemp(prefix=f"ebk-volbench-{kind}-", dir=args.base))
    base.chmod(0o755)
    give_to_postgres(base)
    pair = fscrypt_pair(base, args.image_mb) if kind == "fscrypt" else gocryptfs_pair(base)
    try:
        with pair as (plain, encrypted):
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "ebk",
                    "bench",
                    "volume",
                    "--bin-dir",
                    str(PG_BIN),
                    "--plain",
                    str(plain),
                    "--encrypted",
                    str(encrypted),
                    "--duration",
                    str(args.duration),
                    "--rounds",
                    str(args.rounds),
                    "--scale",
                    args.scale,
                    "--json",
                ],
                capture_output=True,
                text=True,
                check=False,
                env=dict(os.environ, EBK_LOG__FORMAT="console"),
            )
            if proc.returncode != 0:
                raise SystemExit(f"{kind}: ebk bench volume failed:\n{proc.stderr[-3000:]}")
            report: dict[str, object] = json.loads(proc.stdout)
            return report
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kinds", default="fscrypt,gocryptfs")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", default="16,48")
    parser.add_argument("--image-mb", type=int, default=6144)
    parser.add_argument("--base", default="/var/tmp")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    for kind in args.kinds.split(","):
        report = run_kind(kind, args)
        (args.out / f"volume-{kind}.json").write_text(json.dumps(report, indent=2) + "\n")
        print(f"== {kind}")
        print("\n".join(render(report)), flush=True)


if __name__ == "__main__":
    main()
