"""`ebk init`: the embedded default's key file and repository."""

from __future__ import annotations

from pathlib import Path

import click

from ebk.keys.keyfile import create_key_file
from ebk.runtime import Runtime


@click.command()
@click.pass_obj
def init(config_path: Path | None) -> None:
    """Create the local key file (mode 0600) and the repository.

    The key file holds the KEK that wraps every backup's data key: back it up
    somewhere other than the repository (a password manager, a safe), or
    configure a KMS instead (keys.provider). Without it, backups cannot be
    restored. ebk refuses to overwrite an existing key file.

    \b
    Examples:
      ebk init
      ebk --config /etc/ebk/ebk.toml init
    """
    runtime = Runtime.load(config_path)
    cfg = runtime.config
    if cfg.keys.provider == "keyfile":
        kek_id = create_key_file(Path(cfg.keys.keyfile))
        click.echo(f"created key file {cfg.keys.keyfile} (KEK {kek_id}, mode 0600)")
        click.echo("  back it up outside the repository: without it no backup can be restored")
    created = runtime.repository.initialize()
    state = "created" if created else "already initialised"
    click.echo(f"repository {state} at {runtime.storage.url}")


COMMANDS = [init]
