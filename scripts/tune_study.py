"""Does `simsiam tune` pick what labels would? (issue 23, item 5)

    python scripts/tune_study.py --study runs/health-study --out runs/tune-study           # digits
    python scripts/tune_study.py --data cifar-slice --study runs/health-cifar --out runs/tune-cifar

For each seed: `simsiam tune` over the health study's lr axis (0.1, 0.3, 1, 3 and 10 x the preset's
lr; weight decay as the preset's), with a budget of --budget-minutes. Labels judge afterwards
only: the pick's final kNN top-1 is that of the full-length run of the same config and seed, taken
from the health study's folder (the same training, bit for bit: watching changes nothing) or
trained when missing. Compared with the label oracle (the best mean kNN of the same grid over the
seeds) and the preset's default (x1). Prints the table and writes OUT/tune_study.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from health_study import LR_SWEEP, data_options, train_one  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=("digits", "cifar-slice", "fashion"), default="digits")
    ap.add_argument("--study", required=True, help="the health study's folder (its lr-sweep runs are the oracle)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budget-minutes", type=float, default=15.0)
    ap.add_argument("--lr-factors", type=float, nargs="+", default=list(LR_SWEEP), help="the grid (x the preset's lr)")
    args = ap.parse_args()

    from simsiam import from_preset
    from simsiam.experiments.tune import tune

    out, study = Path(args.out), Path(args.study)
    options = data_options(args.data)
    preset = options.pop("preset")

    def knn(lr: float, seed: int) -> float:
        rows = train_one(study / f"lr{lr:g}-s{seed}", dict(lr=lr), seed, args.data)
        return rows[-1]["knn_top1"]

    picks = []
    for seed in args.seeds:
        base = from_preset(preset, **options, seed=seed, device="cpu")
        t0 = time.perf_counter()
        best, trials, _ = tune(base, out / f"s{seed}", args.lr_factors, [1.0], args.budget_minutes)
        picks.append({"seed": seed, "lr_factor": best.lr_factor, "minutes": (time.perf_counter() - t0) / 60})
    grid = {lr: [knn(lr, s) for s in args.seeds] for lr in args.lr_factors}
    oracle = max(grid, key=lambda lr: statistics.mean(grid[lr]))
    picked = [knn(p["lr_factor"], p["seed"]) for p in picks]
    pooled = statistics.mean(statistics.stdev(v) for v in grid.values() if len(v) > 1) if len(args.seeds) > 1 else 0.0

    def ms(v: list[float]) -> str:
        if len(v) == 1:
            return f"{100 * v[0]:.1f}"
        return f"{100 * statistics.mean(v):.1f} ± {100 * statistics.stdev(v):.1f}"

    lrs = ", ".join(f"{p['lr_factor']:g}" for p in picks)
    minutes = ", ".join(f"{p['minutes']:.1f}" for p in picks)
    lines = [
        "| choice | lr (x the preset's) per seed | final kNN top-1 |",
        "|---|---|---|",
        f"| `simsiam tune` (no labels) | {lrs} | {ms(picked)} |",
        f"| label oracle of the grid | {oracle:g} | {ms(grid[oracle])} |",
        f"| the preset's default | 1 | {ms(grid[1.0])} |",
    ]
    gap = 100 * (statistics.mean(grid[oracle]) - statistics.mean(picked))
    lines.append(
        f"\nGap to the oracle: {gap:.1f} points; pooled seed sd of the grid {100 * pooled:.1f} points; "
        f"minutes per search: {minutes}"
    )
    print("\n".join(lines))
    record = {"picks": picks, "picked_knn": picked, "grid_knn": grid, "oracle": oracle, "pooled_sd": pooled}
    (out / "tune_study.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
