"""Does the effective rank tell a good SimSiam run from a bad one, without labels? (issue 23, item 2)

    python scripts/health_study.py --out runs/health-study              # digits: lr sweep + scenarios
    python scripts/health_study.py --out runs/health-study --seeds 0    # one seed (a quick look)

Trains the digits preset (25 epochs, kNN and effective rank measured every epoch) over
- an lr sweep: base lr 0.1, 0.3, 1.0 (the preset's), 3.0, 10.0;
- the scenarios a user can fall into: no stop-gradient, no predictor, augmentation too weak
  (--crop-scale 0.9 1, no colour jitter, no grey), no BN in the heads, an lr far too high (30);
each over the seeds. Finished runs are reused (one folder each under --out). Then prints, and
writes to OUT/study.json:
- Spearman rank correlation of the final effective rank (features, z) and the final z-std with
  the final kNN top-1, over all runs and over the lr sweep alone;
- per scenario: mean final kNN, ranks and z-std over the seeds;
- early warning, in runs that end collapsed (kNN under the random-init kNN + 2 points): the first
  epoch at which each signal crossed its threshold (rank of z under 10% of its first epoch's value;
  z-std under half of 1/sqrt(d); kNN under random init + 2 points).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

LR_SWEEP = (0.1, 0.3, 1.0, 3.0, 10.0)
SCENARIOS = {
    "no stop-gradient": dict(stop_gradient=False),
    "no predictor": dict(predictor=False),
    "weak augmentation": dict(crop_scale=(0.9, 1.0), jitter_p=0.0, gray_p=0.0),
    "no BN in the heads": dict(head_bn="none"),
    "lr far too high (30)": dict(lr=30.0),
}


def runs(seeds: list[int]) -> dict[str, tuple[str, dict, int]]:
    out = {}
    for seed in seeds:
        for lr in LR_SWEEP:
            out[f"lr{lr:g}-s{seed}"] = (f"lr {lr:g}", dict(lr=lr), seed)
        for name, overrides in SCENARIOS.items():
            slug = name.split(" (")[0].replace(" ", "-").replace("/", "")
            out[f"{slug}-s{seed}"] = (name, overrides, seed)
    return out


def train_one(folder: Path, overrides: dict, seed: int) -> list[dict]:
    from simsiam import from_preset, train
    from simsiam.errors import TrainingError

    metrics = folder / "metrics.jsonl"
    if not (folder / "summary.json").exists() and not (folder / "diverged").exists():
        cfg = from_preset(
            "digits",
            **overrides,
            seed=seed,
            knn_every=1,
            rank_every=1,
            report=False,
            device="cpu",
            run_dir=str(folder),
        )
        try:
            train(cfg)
        except TrainingError as e:  # a non-finite loss: the run stops, which is a result too
            (folder / "diverged").write_text(str(e))
    return [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []


def spearman(xs: list[float], ys: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(xs, ys).statistic)


def random_init_ranks(seed: int) -> dict:
    """The effective ranks of the digits preset's model before any training (as the runs measure them)."""
    import torch

    from simsiam import build_model, from_preset
    from simsiam.data import load_splits
    from simsiam.health import embedding_ranks, rank_images

    cfg = from_preset("digits", seed=seed)
    torch.manual_seed(seed)
    method = build_model(cfg)
    train_set, _ = load_splits(cfg)
    sample = rank_images(train_set, cfg.rank_samples)
    return embedding_ranks(method.backbone, method.projector, sample, cfg.image_size, cfg.mean, cfg.std)


def mean_sd(rs: list[dict], key: str, scale: float = 1.0, digits: int = 1) -> str:
    vals = [scale * r[key] for r in rs if r[key] is not None]
    if not vals:
        return "-"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.{digits}f} ± {sd:.{digits}f}"


def warning_epochs(rows: list[dict], chance: float) -> list[int | None]:
    """The first epoch at which kNN is at chance, the rank of z under 10% of its first value, and
    z-std under half of 1/sqrt(d) (None: never)."""
    z0 = rows[0].get("rank_z") or 0.0
    tests = [
        lambda m: m.get("knn_top1", 1.0) <= chance + 0.02,
        lambda m: m.get("rank_z", z0) < 0.1 * z0,
        lambda m: m["z_std"] < 0.5 * m["z_std_healthy"],
    ]
    return [next((m["epoch"] for m in rows if test(m)), None) for test in tests]


def plot(results: list[dict], path: Path) -> None:
    """Final kNN top-1 against the final effective rank of the features and of z, one colour per
    setting, one point per seed."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(11, 4.5))
    groups = list(dict.fromkeys(r["group"] for r in results))
    for ax, key, name in zip(fig.subplots(1, 2), ("rank_backbone", "rank_z"), ("features", "z")):
        for i, group in enumerate(groups):
            rs = [r for r in results if r["group"] == group and r["knn"] is not None and r[key] is not None]
            marker = "o" if group.startswith("lr ") else "s"
            x, y = [r[key] for r in rs], [100 * r["knn"] for r in rs]
            ax.scatter(x, y, color=f"C{i % 10}", marker=marker, label=group)
        chance = [100 * r["knn_random_init"] for r in results if r["knn_random_init"] is not None]
        if chance:
            ax.axhline(statistics.mean(chance), color="grey", linestyle=":", label="random init")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # labels on 1, 10, 100 only: the minor ones overlap
        ax.set_xlabel(f"final effective rank of the {name}")
        ax.set_ylabel("final kNN top-1 (%)")
        ax.grid(alpha=0.3)
    fig.axes[1].legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("SimSiam on digits, 25 epochs: kNN against the effective rank (RankMe)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder of the runs (reused) and study.json")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--plot", help="also a PNG: final kNN against the final effective rank, per setting")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for key, (group, overrides, seed) in runs(args.seeds).items():
        rows = train_one(out / key, overrides, seed)
        summary_path = out / key / "summary.json"
        random_init = json.loads(summary_path.read_text())["knn_top1_random_init"] if summary_path.exists() else None
        last = rows[-1] if rows else {}
        results.append(
            {
                "key": key,
                "group": group,
                "seed": seed,
                "diverged": (out / key / "diverged").exists(),
                "epochs": len(rows),
                "knn": last.get("knn_top1"),
                "knn_random_init": random_init,
                "rank_backbone": last.get("rank_backbone"),
                "rank_z": last.get("rank_z"),
                "z_std": last.get("z_std"),
                "rows": rows,
            }
        )
        found = {k: last.get(k) for k in ("knn_top1", "rank_backbone", "rank_z")}
        print(f"{key:28s} {found}", flush=True)

    init = [random_init_ranks(seed) for seed in args.seeds]
    print(
        "\nAt random init (the same 1024 images): features "
        f"{mean_sd(init, 'rank_backbone')}, z {mean_sd(init, 'rank_z')} (seeds {args.seeds})"
    )

    done = [r for r in results if r["knn"] is not None and r["rank_backbone"] is not None]
    sweep = [r for r in done if r["group"].startswith("lr ")]
    lines = ["| runs | n | features rank | z rank | z-std |", "|---|---|---|---|---|"]
    healthy = [r for r in done if r["knn_random_init"] is not None and r["knn"] > r["knn_random_init"] + 0.02]
    healthy_sweep = [r for r in healthy if r["group"].startswith("lr ")]
    groups = (("all", done), ("lr sweep", sweep), ("above chance", healthy), ("lr sweep, above chance", healthy_sweep))
    for name, rs in groups:
        knn = [r["knn"] for r in rs]
        cells = [f"{spearman([r[k] for r in rs], knn):+.2f}" for k in ("rank_backbone", "rank_z", "z_std")]
        lines.append(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
    print("\nSpearman correlation with the final kNN top-1:\n" + "\n".join(lines))

    table = [
        "| runs | seeds | kNN top-1 | features rank | z rank | z-std | diverged |",
        "|---|---|---|---|---|---|---|",
    ]
    for group in dict.fromkeys(r["group"] for r in results):
        rs = [r for r in results if r["group"] == group]
        ok = [r for r in rs if r["knn"] is not None]
        table.append(
            f"| {group} | {len(rs)} | {mean_sd(ok, 'knn', 100)} | {mean_sd(ok, 'rank_backbone')} | "
            f"{mean_sd(ok, 'rank_z')} | {mean_sd(ok, 'z_std', 1, 4)} | {sum(r['diverged'] for r in rs)} |"
        )
    print("\nPer setting (mean ± sd over seeds, final epoch):\n" + "\n".join(table))

    warn = [
        "| run | kNN at chance from | z rank < 10% of epoch 1 from | z-std < 0.5/sqrt(d) from |",
        "|---|---|---|---|",
    ]
    for r in results:
        rows, chance = r["rows"], r["knn_random_init"]
        if rows and r["knn"] is not None and chance is not None and r["knn"] <= chance + 0.02:
            warn.append(f"| {r['key']} | " + " | ".join(str(e) for e in warning_epochs(rows, chance)) + " |")
    print("\nRuns that end at or under random-init kNN + 2 points: first epoch of each signal:\n" + "\n".join(warn))
    if args.plot:
        plot(results, Path(args.plot))
    for r in results:
        del r["rows"]
    (out / "study.json").write_text(json.dumps({"runs": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
