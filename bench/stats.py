"""
The benchmark's statistics and tables: latency percentiles (L{Latency}), the
tally of every response received (L{Tally}), and ASCII tables.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loadgen import Response


@dataclass(frozen=True)
class Latency:
    """
    A latency distribution, in milliseconds.
    """

    n: int
    p50: float
    p90: float
    p99: float
    mean: float
    max: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        """
        @param seconds: Samples in seconds (at least one).
        @return: Their nearest-rank percentiles, in milliseconds.
        """
        ordered = sorted(seconds)
        n = len(ordered)

        def rank(p: float) -> float:
            return ordered[max(0, math.ceil(p / 100 * n) - 1)] * 1000

        return cls(n, rank(50), rank(90), rank(99), sum(ordered) / n * 1000, ordered[-1] * 1000)

    def get(self, percentile: str) -> float:
        """
        @param percentile: C{"p50"}, C{"p90"} or C{"p99"}.
        @return: That percentile.
        """
        return float(getattr(self, percentile))


class Tally:
    """
    Every response the benchmark received, by status, and what was wrong
    with the ones that were not the expected answer.
    """

    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.bad: Counter[str] = Counter()
        self.examples: list[str] = []

    def count(self, where: str, response: Response, ok: bool) -> bool:
        """
        @param where: Which measurement received it.
        @param response: The response.
        @param ok: Whether it was the expected answer.
        @return: C{ok}.
        """
        self.statuses[response.status] += 1
        if not ok:
            self.bad[where] += 1
            if len(self.examples) < 10:
                self.examples.append(f"{where}: HTTP {response.status} {response.body[:300]!r}")
        return ok

    def as_dict(self) -> dict[str, Any]:
        """
        @return: The JSON view.
        """
        return {
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "unexpected": dict(self.bad),
            "examples": self.examples,
        }


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """
    @return: An ASCII table; the first column left-aligned, the others right-aligned.
    """
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(values: Sequence[str]) -> str:
        parts = [
            f" {v:<{w}} " if i == 0 else f" {v:>{w}} " for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "|" + "|".join(parts) + "|"

    return "\n".join([title, rule, line(headers), rule, *(line(row) for row in cells), rule])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
