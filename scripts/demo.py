"""The main job on the embedded default, end to end, as an operator would run it.

A throwaway PostgreSQL 15 with data, a generated key file, a local repository:
an encrypted physical and an encrypted logical backup, both restored, the
restored cluster started, and the data compared.  Prints each command.

For a sceptic: the repository's entropy and zstd ratio, random markers that
compression alone would leave readable (shown by a control) absent from the
repository, a restore with a wrong key file refused, and the key slots.

Runs beside any PostgreSQL already on the host: its cluster has its own free
port and temporary directory, and nothing else is started, stopped or changed.
EBK_DEMO_SCALE sets the pgbench scale (default 5).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import zstandard

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.postgres import PG_BIN, give_to_postgres, init_cluster, start_existing  # noqa: E402

EBK = str(REPO / ".venv" / "bin" / "ebk")
MARKERS = 100  # random 64-byte values: high entropy, so zstd leaves them verbatim
SCALE = os.environ.get("EBK_DEMO_SCALE", "5")
CHECK = (
    "SELECT count(*) || ':' || md5(string_agg(a::text || b::text, ',' ORDER BY aid)) "
    "FROM pgbench_accounts a(aid, bid, abalance, filler, b) "
)
DIGEST = "SELECT md5(string_agg(t::text, ',' ORDER BY 1)) FROM {} t"


def sh(*argv: str, env: dict[str, str] | None = None, quiet: bool = False) -> str:
    print(f"$ {shlex.join(argv)}", flush=True)
    out = subprocess.run(argv, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        print(out.stdout + out.stderr, file=sys.stderr)
        raise SystemExit(f"demo failed: {argv[0]} exited {out.returncode}")
    if out.stdout.strip() and not quiet:
        print("  " + out.stdout.strip().replace("\n", "\n  "), flush=True)
    return out.stdout


def entropy(paths: list[Path]) -> tuple[float, int]:
    """Shannon entropy in bits per byte over all the files' bytes (8.0 = uniform random)."""
    counts = [0] * 256
    total = 0
    for path in paths:
        data = path.read_bytes()
        total += len(data)
        for value in range(256):
            counts[value] += data.count(bytes([value]))
    bits = -sum(c / total * math.log2(c / total) for c in counts if c)
    return bits, total


def found(markers: list[bytes], blobs: list[bytes]) -> int:
    """How many markers have any 16-byte quarter in a blob, raw or as PostgreSQL's hex text."""
    hits = 0
    for marker in markers:
        pieces = [marker[i : i + 16] for i in range(0, len(marker), 16)]
        forms = pieces + [piece.hex().encode() for piece in pieces]
        hits += any(form in blob for form in forms for blob in blobs)
    return hits


def refused(*argv: str) -> subprocess.CompletedProcess[str]:
    print(f"$ {shlex.join(argv)}", flush=True)
    out = subprocess.run(argv, capture_output=True, text=True)
    print(f"  exit {out.returncode}: " + out.stderr.strip().replace("\n", "\n  "), flush=True)
    return out


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="ebk-demo-"))
    work.chmod(0o755)
    give_to_postgres(work)
    source = init_cluster()
    restored = None
    try:
        print(f"== throwaway PostgreSQL 15 on 127.0.0.1:{source.port}")
        env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(source.port), PGUSER="postgres")
        sh(str(PG_BIN / "pgbench"), "-i", "-q", "-s", SCALE, "postgres", env=env)
        markers = [os.urandom(64) for _ in range(MARKERS)]
        values = ",".join(f"({i}, '\\x{m.hex()}')" for i, m in enumerate(markers))
        insert = f"INSERT INTO secrets VALUES {values}"  # noqa: S608 (hex of random bytes)
        source.psql(f"CREATE TABLE secrets (id int PRIMARY KEY, note bytea); {insert}")
        source.psql("CREATE DATABASE shop")
        source.psql(
            "CREATE TABLE orders (id int PRIMARY KEY, item text, qty int);"
            "INSERT INTO orders SELECT g, 'item-' || g, g % 7 FROM generate_series(1, 5000) g",
            db="shop",
        )
        want_secrets = source.psql(DIGEST.format("secrets"))
        want_accounts = source.psql(DIGEST.format("pgbench_accounts"))
        want_orders = source.psql(DIGEST.format("orders"), db="shop")

        config = work / "ebk.toml"
        config.write_text(
            f'[repository]\nurl = "file://{work}/repository"\n\n'
            f'[keys]\nprovider = "keyfile"\nkeyfile = "{work}/keys/kek.json"\n\n'
            f'{source.config_section()}\n[log]\nformat = "console"\nlevel = "warning"\n'
            f'\n[verify]\nscratch_dir = "{work}/verify"\n'
        )
        ebk = [EBK, "--config", str(config)]
        print("\n== encrypted backups into a local repository")
        sh(*ebk, "init")
        sh(*ebk, "backup", "--type", "physical")
        sh(*ebk, "backup", "--type", "logical")
        sh(*ebk, "list")

        print("\n== the repository looks like random bytes")
        objects = sorted(p for p in (work / "repository").rglob("*") if p.is_file())
        bits, total = entropy(objects)
        blobs = [p.read_bytes() for p in objects]
        packed = sum(len(zstandard.ZstdCompressor(level=3).compress(b)) for b in blobs)
        print(
            f"  {len(objects)} files, {total / 2**20:.1f} MiB: entropy {bits:.5f} bits/byte "
            f"(8 = random), zstd -3 ratio {total / packed:.3f}"
        )
        print(f"  markers: {MARKERS} random 64-byte values in table secrets (bytea)")
        in_repo = found(markers, blobs)
        print(
            "  markers found in the repository (any 16-byte quarter, raw or hex): "
            f"{in_repo} of {MARKERS}"
        )
        assert in_repo == 0, "a marker is readable in the repository"

        print("\n== physical restore, then start the restored cluster")
        listing = json.loads(sh(*ebk, "list", "--json", quiet=True))
        physical = next(b["backup_id"] for b in listing if b["kind"] == "physical")
        target = work / "restored"
        sh(*ebk, "restore", physical, "--to", str(target), "--owner", "postgres")
        restored = start_existing(target)
        got = (
            restored.psql(DIGEST.format("secrets")),
            restored.psql(DIGEST.format("pgbench_accounts")),
            restored.psql(DIGEST.format("orders"), db="shop"),
        )
        assert got == (want_secrets, want_accounts, want_orders), "physical restore differs"
        print(
            f"  restored cluster on port {restored.port}: secrets, pgbench_accounts and "
            "shop.orders match the source (md5 of every row)"
        )
        relation = restored.psql("SELECT pg_relation_filepath('secrets')")
        plain = (target / relation).read_bytes()
        control = found(markers, [zstandard.ZstdCompressor(level=3).compress(plain)])
        print(
            f"  control: markers found in the restored table file compressed with zstd -3: "
            f"{control} of {MARKERS} (compression alone would not hide them)"
        )
        assert control == MARKERS, "the control should find every marker"

        print("\n== the data key's slots, and a restore with the wrong key file")
        shown = json.loads(sh(*ebk, "show", physical, "--json", quiet=True))
        print(f"  key slots of {physical}: {', '.join(shown['key_slots'])}")
        wrong = work / "wrong.toml"
        wrong.write_text(
            config.read_text()
            .replace(f"{work}/keys/kek.json", f"{work}/keys/other-kek.json")
            .replace('level = "warning"', 'level = "error"')
        )
        sh(EBK, "--config", str(wrong), "init")
        denied = refused(
            EBK, "--config", str(wrong), "restore", physical, "--to", str(work / "denied")
        )
        assert denied.returncode == 3, "a restore with the wrong key must be refused (exit 3)"
        assert not any((work / "denied").glob("*")), "the refused restore left files behind"

        print("\n== logical restore of database 'shop' into 'shop_copy'")
        sh(*ebk, "restore", "latest", "--database", "shop", "--to-db", "shop_copy", "--create")
        assert source.psql(DIGEST.format("orders"), db="shop_copy") == want_orders
        print("  shop_copy.orders matches shop.orders (md5 of every row)")

        print("\n== ebk verify: restore into a scratch PostgreSQL, check, record (signed)")
        sh(*ebk, "verify", "latest")
        sh(*ebk, "list")
        print(
            "\nOK: encrypted physical and logical backups restored and verified; the "
            "repository holds no readable marker; the wrong key was refused; the latest "
            "backup passed a restore verification"
        )
    finally:
        if restored is not None:
            restored.stop()
        source.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
