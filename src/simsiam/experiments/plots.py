"""One plot helper for the experiments: a curve per run, read from each run's metrics.jsonl."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..runs import read_metrics


def plot_runs(
    rows: list[dict],
    path: Path,
    key: str,
    title: str,
    ylabel: str,
    value: Callable[[dict], float] | None = None,
    **kw,
) -> None:
    """PNG at `path`: `key` (or `value(metrics line)`) per epoch for each row's run (labelled by its
    variant; the first row of a variant only, i.e. its first seed). Lines without `key` are skipped;
    nothing is written when no run has any."""
    from ..report import plot_curves  # matplotlib: loaded when a plot is drawn, not by the CLI's parser

    curves: dict[str, list[dict]] = {}
    for r in rows:
        if r["variant"] not in curves:
            lines = [m.to_json() for m in read_metrics(r["run_dir"]) if m.get(key) is not None]
            curves[r["variant"]] = [{**m, key: value(m)} for m in lines] if value else lines
    fig = plot_curves(curves, key, title, ylabel, **kw)
    if fig is not None:
        fig.savefig(path)
