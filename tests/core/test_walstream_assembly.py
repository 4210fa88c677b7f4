"""Segment assembly of the WAL streamer and the replication protocol's small parsers
(no server needed: these are pure functions; the streaming itself is tested on a real
PostgreSQL in tests/postgres/test_wal_stream.py)."""

from __future__ import annotations

import pytest

from ebk.app.walstream import SegmentAssembler, segment_name
from ebk.config import WalConfig
from ebk.errors import ConfigError, EbkError, PostgresError
from ebk.postgres.walstream import format_lsn, parse_lsn, parse_size

SEG = 1024 * 1024


def test_segment_names_follow_postgresql() -> None:
    assert segment_name(1, 0, 16 * SEG) == "000000010000000000000000"
    assert segment_name(2, 0x1_2300_0000, 16 * SEG) == "000000020000000100000023"
    assert segment_name(1, 0x1_0000_0000, 64 * SEG) == "000000010000000100000000"


def test_assembler_completes_segments_across_messages() -> None:
    seg = SegmentAssembler(1, 2 * SEG, SEG)
    assert seg.add(2 * SEG, b"a" * (SEG - 10)) == []
    done = seg.add(3 * SEG - 10, b"b" * 30)  # crosses into the next segment
    assert [(n, len(d), end) for n, d, end, _ in done] == [
        ("000000010000000000000002", SEG, 3 * SEG)
    ]
    assert done[0][1].endswith(b"b" * 10)
    assert seg.name == "000000010000000000000003"
    assert bytes(seg.buffer) == b"b" * 20
    assert seg.end == 3 * SEG + 20


def test_assembler_drops_a_resent_overlap_and_refuses_a_gap() -> None:
    seg = SegmentAssembler(1, 0, SEG)
    seg.add(0, b"x" * 100)
    seg.add(50, b"x" * 50 + b"y" * 10)  # 50 bytes resent, 10 new
    assert bytes(seg.buffer) == b"x" * 100 + b"y" * 10
    with pytest.raises(EbkError, match="skipped"):
        seg.add(seg.end + 1, b"z")


def test_assembler_reports_what_was_stored_as_partial() -> None:
    seg = SegmentAssembler(1, 0, SEG)
    seg.add(0, b"p" * 4096)
    seg.stored_partial = 4096
    done = seg.add(4096, b"q" * (SEG - 4096))
    assert done[0][3] == 4096
    assert seg.stored_partial == 0


def test_protocol_parsers() -> None:
    assert parse_lsn("1/A0000028") == 0x1_A000_0028
    assert format_lsn(0x1_A000_0028) == "1/A0000028"
    assert parse_size("16MB") == 16 * SEG
    assert parse_size("1GB") == 1024 * SEG
    with pytest.raises(PostgresError):
        parse_size("sixteen")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("mode", "both", "is not a WAL mode"),
        ("slot", "Ebk-Slot", "is not a replication slot name"),
        ("stream_flush_interval", "0.05s", "between 0.2s and 1h"),
    ],
)
def test_stream_settings_are_validated(field: str, value: str, message: str) -> None:
    config = WalConfig(**{field: value})
    with pytest.raises(ConfigError, match=message):
        config.validate()
    WalConfig(mode="stream", slot="ebk_2", stream_flush_interval="2s").validate()
