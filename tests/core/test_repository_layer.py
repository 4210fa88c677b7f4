"""The repository layer and the application layer, end to end through the CLI.

- every mutation (delete, repo check --clean, rewrap, retention) runs under
  the repository lease: while another process holds it, each refuses with 8;
- a malformed manifest is reported and skipped, the other backups still list;
- one application call (ebk.app.backup.run_backup) backs `ebk backup` and the
  daemon's backup job, in the order preflight -> key check -> repository ->
  cluster lock -> backup; the key provider is proven once per Runtime, and a
  backup then costs one wrap.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from ebk.keys.base import KeyProvider, WrappedKey
from ebk.repository import Repository
from ebk.storage.local import LocalStorage
from tests.support.ebkenv import EbkEnv, make_env
from tests.support.postgres import PgCluster


def assert_refused(result, code: int, fragment: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert fragment in result.output, result.output


def _backup(env: EbkEnv) -> str:
    out = env.run("backup", "--type", "logical", "--database", "postgres", "--json").stdout
    return str(json.loads(out)["backup_id"])


def test_every_mutation_waits_for_the_lease(ebk_env: EbkEnv) -> None:
    first, second = _backup(ebk_env), _backup(ebk_env)
    repo = Repository(LocalStorage(ebk_env.repo_dir))
    # An incomplete backup old enough for --clean.
    stale = ebk_env.repo_dir / "backups" / "20200101T000000Z-aaaaaa"
    stale.mkdir(parents=True)
    (stale / "key.json").write_text("{}")
    os.utime(stale / "key.json", (0, time.time() - 3 * 86400))

    with repo.lease("another ebk, in a test"):
        for args in (
            ("delete", first, "--yes"),
            ("repo", "check", "--clean"),
            ("keys", "rewrap"),
            ("retention",),
        ):
            assert_refused(ebk_env.run(*args, expect=None), 8, "another ebk, in a test")
    # Nothing changed while refused ...
    listed = json.loads(ebk_env.run("list", "--json").stdout)
    assert [b["backup_id"] for b in listed] == [first, second]
    assert (stale / "key.json").exists()
    # ... and each works once the lease is free, releasing it again.
    ebk_env.run("repo", "check", "--clean")
    assert not stale.exists()
    ebk_env.run("delete", first, "--yes")
    assert [b["backup_id"] for b in json.loads(ebk_env.run("list", "--json").stdout)] == [second]
    assert not (ebk_env.repo_dir / "locks" / "delete.json").exists()


def test_delete_refuses_latest_and_names(ebk_env: EbkEnv) -> None:
    _backup(ebk_env)
    assert_refused(ebk_env.run("delete", "latest", "--yes", expect=None), 9, "not a backup id")
    assert_refused(ebk_env.run("delete", "../../etc", "--yes", expect=None), 9, "not a backup id")


def test_a_malformed_manifest_is_reported_and_the_rest_listed(ebk_env: EbkEnv) -> None:
    good = _backup(ebk_env)
    manifests = ebk_env.repo_dir / "manifests"
    (manifests / "20201201T000000000000Z-badbad.json").write_text("{}")
    (manifests / "20201202T000000000000Z-000000.json").write_bytes(b"\x00" * 100)
    (manifests / "not-an-id.json").write_text("{}")
    result = ebk_env.run("list", "--json")
    assert [b["backup_id"] for b in json.loads(result.stdout)] == [good]
    assert "skipped manifests/20201201T000000000000Z-badbad.json" in result.stderr
    assert "not an ebk manifest" in result.stderr
    assert "skipped manifests/not-an-id.json" in result.stderr
    assert "skipped manifests/20201202T000000000000Z-000000.json" in result.stderr
    # latest, retention and show still work on the good one.
    ebk_env.run("show", "latest")
    assert (
        json.loads(ebk_env.run("retention", "--dry-run", "--json").stdout)["decisions"][0][
            "backup_id"
        ]
        == good
    )
    # An oversized manifest is refused before it is read; one claiming to be newer than
    # every good backup makes `latest` refuse (it may hide the real newest one).
    (manifests / "20991203T000000000000Z-111111.json").write_bytes(b" " * (5 * 1024 * 1024))
    result = ebk_env.run("list", "--json")
    assert "implausibly large" in result.stderr
    refused = ebk_env.run("show", "latest", expect=5)
    assert "refusing to choose `latest`" in refused.stderr
    ebk_env.run("show", good)


class CountingProvider:
    """Wraps the real key-file provider and counts its calls (not a mock: it delegates)."""

    def __init__(self, inner: KeyProvider) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls: list[str] = []

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        self.calls.append("wrap")
        return self.inner.wrap(dek, context)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        self.calls.append("unwrap")
        return self.inner.unwrap(wrapped, context)

    def rewrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> WrappedKey:
        self.calls.append("rewrap")
        return self.inner.rewrap(wrapped, context)

    def owns(self, wrapped: WrappedKey) -> bool:
        return self.inner.owns(wrapped)

    def describe(self) -> dict[str, str]:
        return self.inner.describe()


def test_one_application_call_in_order_and_one_wrap_per_backup(
    ebk_env: EbkEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ebk.app.backup as app_backup
    from ebk.daemon import jobs
    from ebk.runtime import Runtime

    order: list[str] = []
    real_enforce, real_lock = app_backup.enforce, app_backup.cluster_backup_lock

    def enforce(*args, **kwargs):  # type: ignore[no-untyped-def]
        order.append("preflight")
        return real_enforce(*args, **kwargs)

    def lock(cfg):  # type: ignore[no-untyped-def]
        order.append("cluster lock")
        return real_lock(cfg)

    monkeypatch.setattr(app_backup, "enforce", enforce)
    monkeypatch.setattr(app_backup, "cluster_backup_lock", lock)
    runtime = Runtime.load(ebk_env.config_path)
    counting = CountingProvider(runtime.key_providers[0])
    runtime.key_providers[:] = [counting]
    monkeypatch.setattr(
        Repository,
        "require_initialized",
        lambda self, real=Repository.require_initialized: (order.append("repository"), real(self))[
            1
        ],
    )
    real_check = runtime.checked_key_providers

    def checked():  # type: ignore[no-untyped-def]
        order.append("key check")
        return real_check()

    monkeypatch.setattr(runtime, "checked_key_providers", checked)

    # The daemon's backup job is the CLI's application call.
    assert jobs.take_backup_now is app_backup.run_backup
    for _ in range(3):
        app_backup.run_backup(runtime, kind="logical", databases=["postgres"])
    # The first run also opens the writer key (it reads the repository marker again).
    step = ["preflight", "key check", "repository", "cluster lock"]
    assert order == step[:3] + ["repository"] + step[3:] + step * 2
    # Once per Runtime: the round-trip check (a wrap and two unwraps) and the writer
    # key's unwrap; then one wrap per backup.
    assert counting.calls == ["wrap", "unwrap", "unwrap", "unwrap", "wrap", "wrap", "wrap"]
    assert len(json.loads(ebk_env.run("list", "--json").stdout)) == 3


def test_backup_refuses_a_repository_never_initialised(
    tmp_path: Path, pg_cluster: PgCluster
) -> None:
    env = make_env(tmp_path / "ebk", pg_cluster)
    elsewhere = tmp_path / "typo"
    config = env.config_path.read_text().replace(str(env.repo_dir), str(elsewhere))
    env.config_path.write_text(config)
    result = env.run("backup", "--type", "logical", expect=None)
    assert_refused(result, 4, "is not an ebk repository")
    assert "ebk init --repository-only" in result.output
    assert not elsewhere.exists()


def test_the_verified_digest_cache_never_outlives_trust(ebk_env: EbkEnv) -> None:
    """A digest proven before skips the Ed25519 check, never the question of who signed."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ebk.repository.writer import encode_public

    good = _backup(ebk_env)
    assert [b["backup_id"] for b in json.loads(ebk_env.run("list", "--json").stdout)] == [good]
    # The cache now holds this manifest's digest; a key change must still hide it.
    stranger = encode_public(Ed25519PrivateKey.generate().public_key())
    ebk_env.config_path.write_text(
        ebk_env.config_path.read_text().replace(
            "[repository]\n", f'[repository]\nwriter_keys = ["{stranger}"]\n'
        )
    )
    result = ebk_env.run("list", "--json")
    assert json.loads(result.stdout) == []
    assert "not signed by this repository's writer key" in result.stderr
