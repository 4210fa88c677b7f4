"""`ebk init`: the embedded default's key file and repository."""

from __future__ import annotations

from pathlib import Path

import click

from ebk.app.maintenance import ensure_writer_key
from ebk.errors import KeyProviderError
from ebk.keys.check import check_providers
from ebk.keys.keyfile import create_key_file
from ebk.repository.writer import encode_public
from ebk.runtime import Runtime
from ebk.text import printable


@click.command()
@click.option(
    "--repository-only",
    is_flag=True,
    help="Create only the repository, with the key provider already in place (an existing "
    "key file, Vault, AWS KMS); its KEK round trip is proven first.",
)
@click.pass_obj
def init(config_path: Path | None, repository_only: bool) -> None:
    """Create the local key file (mode 0600), the repository and its writer key.

    The key file holds the KEK that wraps every backup's data key: back it up
    somewhere other than the repository (a password manager, a safe), or
    configure a KMS instead (keys.provider). Without it, backups cannot be
    restored. ebk refuses to overwrite an existing key file; a second
    repository with the same key file is `ebk init --repository-only`.
    The writer key (Ed25519, wrapped by the KEK inside the repository) signs
    every manifest; readers act only on backups it signed.

    \b
    Examples:
      ebk init
      ebk --config /etc/ebk/offsite.toml init --repository-only
    """
    runtime = Runtime.load(config_path)
    cfg = runtime.config
    if cfg.keys.provider == "keyfile" and not repository_only:
        path = Path(cfg.keys.keyfile)
        if path.is_file() or path.is_symlink():
            raise KeyProviderError(
                f"key file {path} already exists; refusing to overwrite a key (no repository "
                "was created)",
                hint="to create a repository that uses this key file: ebk init --repository-only",
            )
        kek_id = create_key_file(path)
        click.echo(f"created key file {cfg.keys.keyfile} (KEK {kek_id}, mode 0600)")
        click.echo("  back it up outside the repository: without it no backup can be restored")
    elif repository_only:
        results = check_providers(runtime.key_providers)
        names = ", ".join(str(r["provider"]) for r in results)
        click.echo(f"key provider round trip works ({names})")
    created = runtime.repository.initialize()
    state = "created" if created else "already initialised"
    click.echo(f"repository {state} at {runtime.repository.url}")
    try:
        writer = ensure_writer_key(runtime)
    except KeyProviderError as exc:
        # The repository exists; the first backup creates the writer key once the KEK works.
        click.echo(
            f"ebk: warning: the writer key was not created yet: {printable(exc.message)}\n"
            "  the first backup creates it; `ebk keys check` tests the key provider",
            err=True,
        )
        return
    click.echo(f"writer key {writer.key_id}: every manifest is signed with it; its public half:")
    click.echo(f"  {encode_public(writer.public)}")
    click.echo("  pin it as repository.writer_keys (then `ebk list` needs no KMS call) and keep")
    click.echo("  it with the offline recovery key (`ebk keys recovery-keygen` adds it)")


COMMANDS = [init]
