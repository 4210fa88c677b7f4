"""The main job on the embedded default, end to end, as an operator would run it.

A throwaway PostgreSQL 15 with data, a generated key file, a local repository:
an encrypted physical and an encrypted logical backup, both restored, the
restored cluster started, and the data compared.  Prints each command.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.postgres import PG_BIN, give_to_postgres, init_cluster, start_existing  # noqa: E402

EBK = str(REPO / ".venv" / "bin" / "ebk")
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


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="ebk-demo-"))
    work.chmod(0o755)
    give_to_postgres(work)
    source = init_cluster()
    restored = None
    try:
        print(f"== throwaway PostgreSQL 15 on 127.0.0.1:{source.port}")
        env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(source.port), PGUSER="postgres")
        sh(str(PG_BIN / "pgbench"), "-i", "-q", "-s", "5", "postgres", env=env)
        source.psql(
            "CREATE TABLE secrets (id int PRIMARY KEY, note text);"
            "INSERT INTO secrets SELECT g, 'customer-secret-' || g FROM generate_series(1, 1000) g"
        )
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
        )
        ebk = [EBK, "--config", str(config)]
        print("\n== encrypted backups into a local repository")
        sh(*ebk, "init")
        sh(*ebk, "backup", "--type", "physical")
        sh(*ebk, "backup", "--type", "logical")
        sh(*ebk, "list")

        print("\n== no plaintext in the repository")
        leaked = [
            p
            for p in (work / "repository").rglob("*")
            if p.is_file() and b"customer-secret-" in p.read_bytes()
        ]
        print(f"  files containing 'customer-secret-': {len(leaked)}")
        assert not leaked, leaked

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

        print("\n== logical restore of database 'shop' into 'shop_copy'")
        sh(*ebk, "restore", "latest", "--database", "shop", "--to-db", "shop_copy", "--create")
        assert source.psql(DIGEST.format("orders"), db="shop_copy") == want_orders
        print("  shop_copy.orders matches shop.orders (md5 of every row)")
        print("\nOK: encrypted physical and logical backups restored and verified")
    finally:
        if restored is not None:
            restored.stop()
        source.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
