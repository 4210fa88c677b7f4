"""Finding 8 (issue 10): repository strings never reach a terminal raw.

An attacker with write access to the bucket (no keys) edits a real manifest
and plants a backup whose id, versions, database and object names carry OSC
(`ESC ] ... BEL`: window title, hyperlinks), CSI (clear screen, colours), C1
CSI (0x9b), DEL and bidi overrides.  Whatever ebk decides about such a backup
(list it, refuse it), none of those characters may appear raw on stdout or
stderr, in tables, `show`, error messages or console logs.
"""

from __future__ import annotations

import json
import shutil

import pytest

from ebk.text import printable
from tests.support.ebkenv import EbkEnv

OSC = "\x1b]0;pwned\x07"
LINK = "\x1b]8;;http://evil.example/\x07click\x1b]8;;\x07"
CSI = "\x1b[2J\x1b[31m"
RAW = ("\x1b", "\x07", "\x9b", "\x7f", "\u202e", "\u2066", "\u2028")


def _assert_clean(*texts: str) -> None:
    for text in texts:
        for ch in RAW:
            assert ch not in text, f"raw {ch!r} in output:\n{text!r}"
        assert "Traceback" not in text


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (OSC, "\\x1b]0;pwned\\x07"),
        (CSI, "\\x1b[2J\\x1b[31m"),
        ("a\x9bb\x7fc", "a\\x9bb\\x7fc"),
        ("invoice\u202egpj.exe", "invoice\\u202egpj.exe"),
        ("\u2066x\u2069\u200b\ufeff", "\\u2066x\\u2069\\u200b\\ufeff"),
        ("line\u2028sep\nnext\ttab\r", "line\\u2028sep\\x0anext\\x09tab\\x0d"),
        ("bad\udc80byte", "bad\\udc80byte"),
        ("back\\x1b", "back\\\\x1b"),  # a literal backslash cannot fake an escape
        ("ünïcödé ✓ € 日本", "ünïcödé ✓ € 日本"),
        ("plain-ascii 20261128T142301Z-3fa9c1", "plain-ascii 20261128T142301Z-3fa9c1"),
    ],
)
def test_printable(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_printable_keeps_newlines_only_when_asked() -> None:
    assert printable("one\ntwo\x1b", newlines=True) == "one\ntwo\\x1b"


def test_planted_control_sequences_never_reach_the_terminal(ebk_env: EbkEnv) -> None:
    manifest = json.loads(
        ebk_env.run("backup", "--type", "logical", "--database", "postgres", "--json").stdout
    )
    real_id = manifest["backup_id"]
    backups = ebk_env.repo_dir / "backups"
    manifests = ebk_env.repo_dir / "manifests"
    doc = json.loads((manifests / f"{real_id}.json").read_text())
    doc["server_version"] = "15.0" + OSC
    doc["ebk_version"] = LINK
    doc["databases"] = ["post" + CSI + "gres\u202e"]
    doc["start_time"] = doc["start_time"]  # stays parseable: `list` computes durations
    for obj in doc["objects"]:
        obj["name"] = obj["name"] + "\x9b2J\x7f"
        obj["database"] = obj.get("database") and obj["database"] + "\u2066"
    (manifests / f"{real_id}.json").write_text(json.dumps(doc))
    # A planted backup whose very id (an object name) carries an OSC sequence.
    planted_id = "20991231T235959Z-" + "\x1b]0;x\x07"
    shutil.copytree(backups / real_id, backups / planted_id)
    planted = dict(doc, backup_id=planted_id)
    (manifests / f"{planted_id}.json").write_text(json.dumps(planted))

    console = ebk_env.config_path.read_text().replace('format = "json"', 'format = "console"')
    ebk_env.config_path.write_text(console)
    runs = [
        ebk_env.run("list", expect=None),
        ebk_env.run("list", "--json", expect=None),
        ebk_env.run("show", real_id, expect=None),
        ebk_env.run("show", planted_id, expect=None),
        ebk_env.run("show", "latest", expect=None),
        ebk_env.run("restore", "latest", "--to-db", "never_made", "--create", expect=None),
        ebk_env.run("restore", real_id, "--to-db", "never_made", "--create", expect=None),
        ebk_env.run("repo", "check", expect=None),
        ebk_env.run("delete", planted_id, expect=None),  # the prompt quotes the id
    ]
    for result in runs:
        _assert_clean(result.stdout, result.stderr)
    # The operator can still see that something odd is there.
    seen = "".join(r.stdout + r.stderr for r in runs)
    assert "\\x1b]0;" in seen
    # Nothing was restored from the edited backup.
    assert all(r.exit_code != 0 for r in runs[5:7])
