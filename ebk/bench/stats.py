"""Small statistics for interleaved benchmark rounds: medians, percentiles and a
confidence interval for a paired ratio, without numpy (operators' hosts may lack it)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

# Two-sided 95 % Student t quantiles (0.975) by degrees of freedom; beyond 30: ~normal.
_T975 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]


def t975(df: int) -> float:
    return _T975[df - 1] if df <= len(_T975) else 1.96


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True)
class Spread:
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))

    def to_dict(self) -> dict[str, float]:
        return {"median": self.median, "min": self.min, "max": self.max}


@dataclass(frozen=True)
class RatioInterval:
    """Geometric mean of paired per-round ratios with a 95 % t-interval on their logs.

    Rounds are paired (both sides ran back to back, order alternating), so the
    round-to-round noise of a shared machine cancels in each ratio; the log makes
    the interval symmetric for "x % slower" and "x % faster".
    """

    ratio: float
    low: float | None
    high: float | None
    rounds: int

    @classmethod
    def of(cls, ratios: Sequence[float]) -> RatioInterval:
        logs = [math.log(r) for r in ratios if r > 0]
        if not logs:
            return cls(math.nan, None, None, 0)
        mean = statistics.fmean(logs)
        if len(logs) < 2:
            return cls(math.exp(mean), None, None, len(logs))
        half = t975(len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
        return cls(math.exp(mean), math.exp(mean - half), math.exp(mean + half), len(logs))

    def verdict(self, target: float) -> str:
        """'within' when the whole interval is at or above ``target`` (e.g. 0.95),
        'exceeds' when it is entirely below, else 'inconclusive' (run more rounds)."""
        if self.low is None or self.high is None:
            return "inconclusive"
        if self.low >= target:
            return "within"
        if self.high < target:
            return "exceeds"
        return "inconclusive"

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "ratio": self.ratio,
            "ci95_low": self.low,
            "ci95_high": self.high,
            "rounds": self.rounds,
        }
