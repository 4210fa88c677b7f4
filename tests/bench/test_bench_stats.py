"""The arithmetic behind `ebk bench volume`'s verdict, and the host facts it records."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from ebk.bench.host import cpu_has_aes, crypto_drivers
from ebk.bench.stats import RatioInterval
from ebk.bench.volume import Scale, _three_digits, histogram_percentile
from ebk.errors import BenchTargetError


def test_verdict_needs_the_whole_interval_on_one_side() -> None:
    assert RatioInterval.of([0.99, 1.0, 0.98, 1.01]).verdict(0.95) == "within"
    assert RatioInterval.of([0.50, 0.52, 0.49]).verdict(0.95) == "exceeds"
    assert RatioInterval.of([0.60, 1.20, 0.90]).verdict(0.95) == "inconclusive"
    one = RatioInterval.of([0.99])
    assert one.low is None and one.verdict(0.95) == "inconclusive"


def test_ratio_is_the_geometric_mean_inside_its_interval() -> None:
    interval = RatioInterval.of([0.5, 2.0])
    assert interval.ratio == pytest.approx(1.0)
    assert interval.low is not None and interval.high is not None
    assert interval.low < 1.0 < interval.high


def test_latency_histogram_keeps_three_digits() -> None:
    assert [_three_digits(v) for v in (7, 999, 1234, 56789, 1234567)] == [
        7,
        999,
        1230,
        56700,
        1230000,
    ]
    counts = Counter({500: 98, 1000: 1, 20000: 1})
    assert histogram_percentile(counts, 50) == 0.5
    assert histogram_percentile(counts, 99) == 1.0
    assert histogram_percentile(counts, 100) == 20.0
    assert histogram_percentile(Counter(), 50) is None


def test_scale_auto_is_sized_against_ram() -> None:
    scale = Scale.parse("auto", 16 << 30)
    assert scale.in_cache == 128  # 2 GiB / 16 MB
    assert scale.out_of_cache == 1280  # 20 GiB / 16 MB
    assert Scale.parse("5", 0) == Scale(5, 0)
    assert Scale.parse("5,0", 0) == Scale(5, 0)
    for bad in ("0", "x", "1,2,3", "3,-1"):
        with pytest.raises(BenchTargetError):
            Scale.parse(bad, 0)


def test_crypto_drivers_pick_the_highest_priority(tmp_path: Path) -> None:
    proc = tmp_path / "crypto"
    proc.write_text(
        "name         : xts(aes)\ndriver       : xts(ecb(aes-generic))\npriority     : 100\n\n"
        "name         : xts(aes)\ndriver       : xts-aes-aesni\npriority     : 401\n\n"
        "name         : sha256\ndriver       : sha256-generic\npriority     : 100\n"
    )
    assert crypto_drivers(proc) == {"xts(aes)": "xts-aes-aesni"}
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 aes avx\n")
    assert cpu_has_aes(cpuinfo) is True
    assert cpu_has_aes(tmp_path / "missing") is None
