"""Median, min and max of repeated measurements, formatted the one way every bench table shows them.

The benchmarks run on shared machines: a median alone hides how much other load moved a figure,
so every recipe prints ``median (min–max)`` over its repetitions, from this one helper, so that
the tables read alike and a reader can compare spreads across recipes.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

# What a cell made by ``Spread.text`` holds; recipes put it in their column headers.
SPREAD_HEADER = "median (min–max)"


@dataclass(frozen=True)
class Spread:
    """The median, smallest and largest of ``count`` repetitions of one measure."""

    median: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        """Summarise the repetitions; a figure with none is a bug in the recipe, so it raises."""
        numbers = [float(value) for value in values]
        if not numbers:
            raise ValueError("no repetitions to summarise")
        return cls(statistics.median(numbers), min(numbers), max(numbers), len(numbers))

    def scaled(self, factor: float) -> Spread:
        """The same spread in another unit (bytes to MiB, rows/s to M rows/s); a positive factor
        keeps low ≤ median ≤ high."""
        return Spread(self.median * factor, self.low * factor, self.high * factor, self.count)

    def text(self, spec: str = ",.1f") -> str:
        """``median (min–max)`` with each number formatted by ``spec`` (a format spec)."""
        return f"{self.median:{spec}} ({self.low:{spec}}–{self.high:{spec}})"


def spread_text(values: Iterable[float], spec: str = ",.1f", factor: float = 1.0) -> str:
    """``Spread.of(values).scaled(factor).text(spec)``: the common case in one call."""
    return Spread.of(values).scaled(factor).text(spec)
