"""Markdown for the experiments' tables."""

from __future__ import annotations


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table as lines: header, separator, one line per row."""
    return [_line(header), "|" + "---|" * len(header), *(_line(r) for r in rows)]


def pct(x: float | None) -> str:
    """A 0..1 fraction as a percentage with two decimals; n/a for None."""
    return "n/a" if x is None else f"{100 * x:.2f}"


def checks(results: list[dict]) -> list[str]:
    """The paper's claims checked on our numbers (reproduce's `checks`) as a table."""
    rows = [[c["claim"], "yes" if c["held"] else "**no**", c["detail"]] for c in results]
    return table(["paper's claim", "held here", "measured"], rows)


def _line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"
