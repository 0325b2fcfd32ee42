"""Markdown for the experiments' tables."""

from __future__ import annotations

import math
import statistics

KNN_FLOOR = 1.0  # kNN points: the smallest seed std a gap is measured in (steps of ~0.3 on 359 test images)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table as lines: header, separator, one line per row."""
    return [_line(header), "|" + "---|" * len(header), *(_line(r) for r in rows)]


def checks(results: list[dict]) -> list[str]:
    """The paper's claims checked on our numbers (reproduce's `checks`) as a table."""
    rows = [[c["claim"], _held(c), c["detail"]] for c in results]
    return table(["paper's claim", "held here", "measured"], rows)


def _held(c: dict) -> str:
    """yes / **no** for a counted claim; a difference the scale cannot resolve says so."""
    if not c.get("counted", True):
        return "cannot say (not counted): " + ("same direction" if c["held"] else "other direction")
    return "yes" if c["held"] else "**no**"


def _line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def mean_std(values: list[float], digits: int = 2) -> str:
    """`mean ± std` over seeds (the mean alone for one value; n/a for none)."""
    if not values:
        return "n/a"
    text = f"{statistics.mean(values):.{digits}f}"
    return text + (f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")


def seed_sd(values: list[float], floor: float) -> float:
    """The std over seeds, at least `floor` (three seeds can agree by chance; one has no std)."""
    return max(statistics.stdev(values) if len(values) > 1 else 0.0, floor)


def pooled_sd(a: list[float], b: list[float], floor: float) -> float:
    """The two groups' seed stds (each at least `floor`) pooled."""
    return math.sqrt((seed_sd(a, floor) ** 2 + seed_sd(b, floor) ** 2) / 2)
