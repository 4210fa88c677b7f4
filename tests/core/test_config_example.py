"""config.example.toml documents every key of the schema and loads as it is."""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path

from ebk.config import Config, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"


def _schema() -> dict[str, set[str]]:
    hints = typing.get_type_hints(Config)
    return {
        f.name: {g.name for g in dataclasses.fields(hints[f.name])}
        for f in dataclasses.fields(Config)
        if f.name != "source"
    }


def test_example_documents_every_key() -> None:
    example = tomllib.loads(EXAMPLE.read_text())
    for section, keys in _schema().items():
        assert section in example, f"[{section}] missing from config.example.toml"
        missing = keys - set(example[section])
        assert not missing, f"[{section}] keys not documented: {sorted(missing)}"


def test_example_loads_and_validates() -> None:
    config = load_config(EXAMPLE, environ={})
    assert config.repository.url.startswith("file:///")
    assert [job.kind for job in config.daemon.jobs] == ["physical", "logical", "retention"]


def test_example_holds_no_secret_values() -> None:
    text = EXAMPLE.read_text().lower()
    for word in ("password =", "token =", "secret =", "secret_id ="):
        assert word not in text
