"""The semi-supervised and transfer tables of docs/comparison.md (issue 25), at CPU scale.

    python scripts/semi_supervised_study.py --out /work/semi pretrain     # SimSiam, SimCLR, BYOL x 3 seeds
    python scripts/semi_supervised_study.py --out /work/semi finetune     # 1% and 10%, + random init
    python scripts/semi_supervised_study.py --out /work/semi transfer     # CIFAR slice <-> digits
    python scripts/semi_supervised_study.py --out /work/semi table        # prints the markdown tables

Pretraining: the CIFAR-10 slice of scripts/health_study.py (5000 train images, 500 a class; 1000
test images) with the cifar10-cpu recipe (CIFAR ResNet-18 at width 1/4, 32 px, batch 128, base lr
0.2, 12 epochs), SimSiam's augmentation for every method (`simsiam compare`'s method_config),
seeds 0, 1, 2. `--reuse-simsiam DIR` takes SimSiam's runs from DIR/lr1-s{seed} (the health study's
runs of the same recipe) when their training settings are the same.

Fine-tuning: `simsiam eval finetune` with SimCLR's protocol on 1% (5 a class) and 10% (50 a class)
of the slice's train labels, the subset drawn with the seed and shared by every backbone of that
seed (its subset file); random init = `--from-scratch` on the same subset. Batch 256 (the subsets
hold 50 and 500 images: 1 and 2 steps an epoch), base lr 0.05, 60 / 30 epochs.

Transfer: every pretrained backbone evaluated by kNN and linear-fast on its own data and on the
other dataset (digits: the embedded 1797 digits; CIFAR slice), and digits-pretrained SimSiam
backbones (the digits preset, 10 epochs) on the CIFAR slice.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

METHODS = ("simsiam", "simclr", "byol")
SEEDS = (0, 1, 2)
FRACTIONS = {"1%": 0.01, "10%": 0.1}
TRAINING = ("method", "arch", "width", "epochs", "batch_size", "lr", "weight_decay", "seed", "data_dir", "image_size")


def slice_dir() -> Path:
    from health_study import cifar_slice

    return cifar_slice()


def pretrain_config(method: str, seed: int, run_dir: Path, data: str = "cifar"):
    from simsiam.experiments.compare import method_config

    if data == "digits":
        return method_config(method, "cpu", seed=seed, run_dir=str(run_dir), knn_every=0, report=False, device="cpu")
    return method_config(
        method,
        "cpu",
        preset="cifar10-cpu",
        dataset="folder",
        data_dir=str(slice_dir()),
        epochs=12,
        seed=seed,
        run_dir=str(run_dir),
        knn_every=0,
        report=False,
        device="cpu",
    )


def same_training(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in TRAINING)


def pretrain(out: Path, reuse_simsiam: Path | None, data: str = "cifar", methods=METHODS) -> None:
    from simsiam import train

    for method in methods:
        for seed in SEEDS:
            run_dir = out / "runs" / f"{data}-{method}-s{seed}"
            cfg = pretrain_config(method, seed, run_dir, data)
            if (run_dir / "summary.json").exists():
                continue
            if method == "simsiam" and reuse_simsiam and data == "cifar":
                theirs = reuse_simsiam / f"lr1-s{seed}"
                mine = dataclasses.asdict(cfg)
                if (theirs / "summary.json").exists() and same_training(
                    json.loads((theirs / "config.json").read_text()), mine
                ):
                    run_dir.parent.mkdir(parents=True, exist_ok=True)
                    run_dir.symlink_to(theirs)
                    print(f"{run_dir.name}: reusing {theirs} (same training settings)", flush=True)
                    continue
                print(f"{run_dir.name}: {theirs} differs in its training settings; training", flush=True)
            print(f"pretraining {run_dir.name}", flush=True)
            train(cfg)


def backbones(out: Path) -> dict[str, list[Path]]:
    """The pretrained backbones of the tables, by row: three seeds each."""
    runs = out / "runs"
    rows = {m: [runs / f"cifar-{m}-s{s}" for s in SEEDS] for m in METHODS}
    tuned = out / "runs" / "tuned"
    rows["simsiam, lr x10"] = [tuned / f"lr10-s{s}" for s in SEEDS]
    return rows


def link_tuned(out: Path, health: Path | None) -> None:
    """The health study's SimSiam runs at 10x the preset's lr (the lr `simsiam tune` picked on two
    seeds of three, without labels), as a row of their own."""
    if health is None:
        return
    tuned = out / "runs" / "tuned"
    tuned.mkdir(parents=True, exist_ok=True)
    for s in SEEDS:
        if not (tuned / f"lr10-s{s}").exists() and (health / f"lr10-s{s}" / "summary.json").exists():
            (tuned / f"lr10-s{s}").symlink_to(health / f"lr10-s{s}")


def finetune_all(out: Path, extra: dict[str, list[Path]] | None = None) -> None:
    """Every backbone of every row (and random init) on the 1% and 10% subsets of each seed."""
    from simsiam.evaluation import evaluate_finetune

    rows = {**backbones(out), **(extra or {})}
    for label, frac in FRACTIONS.items():
        for i, seed in enumerate(SEEDS):
            subset = out / "subsets" / f"slice-{frac:g}-seed{seed}.txt"
            scratch = [("random init", rows["simsiam"])] + [(f"random init ({k})", v) for k, v in (extra or {}).items()]
            for row, dirs in [*scratch, *rows.items()]:
                if i >= len(dirs):
                    continue
                res_path = out / "finetune" / f"{key(row)}-{label[:-1]}pc-s{seed}.json"
                if res_path.exists() or not (dirs[i] / "config.json").exists():
                    continue
                options = dict(seed=seed, batch_size=256, device="cpu", from_scratch=row.startswith("random init"))
                if subset.exists():
                    options["subset_file"] = str(subset)
                else:
                    options["label_fraction"] = frac
                res = evaluate_finetune(dirs[i], data_dir=str(slice_dir()), out=res_path, progress=False, **options)
                if not subset.exists():
                    subset.parent.mkdir(parents=True, exist_ok=True)
                    subset.write_text(Path(res.subset_file).read_text())
                print(f"{row} {label} seed {seed}: top-1 {100 * res.top1:.1f}% ({res.seconds:.0f} s)", flush=True)


def transfer_all(out: Path) -> None:
    """kNN and linear-fast of every pretrained backbone on the other dataset, and random init there."""
    from simsiam.evaluation import evaluate

    pretrain(out, None, data="digits")
    digits = {m: [out / "runs" / f"digits-{m}-s{s}" for s in SEEDS] for m in METHODS}
    rows = {f"cifar->digits {m}": v for m, v in backbones(out).items()}
    rows.update({f"digits->cifar {m}": v for m, v in digits.items()})
    rows.update({f"cifar->cifar {m}": v for m, v in backbones(out).items()})  # in-domain, for reference
    rows.update({f"digits->digits {m}": v for m, v in digits.items()})
    for row, dirs in rows.items():
        target = dict(dataset="digits") if "->digits" in row else dict(data_dir=str(slice_dir()))
        for seed, d in zip(SEEDS, dirs):
            for protocol, fast in (("knn", False), ("linear", True)):
                res_path = (
                    out
                    / "transfer"
                    / f"{row.replace(' ', '_').replace('>', '').replace(',', '')}-{protocol}-s{seed}.json"
                )
                if res_path.exists():
                    continue
                res = evaluate(d, protocol, out=res_path, fast=fast, device="cpu", progress=False, **target)
                print(f"{row} seed {seed} {protocol}: {100 * res.top1:.1f}%", flush=True)
    random_init(out)


def random_init(out: Path) -> None:
    """kNN and linear-fast of the architectures at random init (seeds 0-2) on each target."""
    import torch

    from simsiam.backbones import build_backbone
    from simsiam.data import labeled_splits
    from simsiam.evaluate import knn_report, linear_report
    from simsiam.runs import load_backbone

    for name, run, target in (
        ("digits", out / "runs" / "cifar-simsiam-s0", dict(dataset="digits", data_dir=None)),
        ("cifar", out / "runs" / "digits-simsiam-s0", dict(dataset="folder", data_dir=str(slice_dir()))),
    ):
        for seed in SEEDS:
            res_path = out / "transfer" / f"random-on-{name}-s{seed}.json"
            if res_path.exists():
                continue
            _, cfg = load_backbone(run)
            cfg = cfg.replace(**target)
            torch.manual_seed(seed)
            net, _ = build_backbone(cfg.arch, cfg.cifar_stem, cfg.width, image_size=cfg.image_size)
            train_set, test_set = labeled_splits(cfg)
            knn = knn_report(net, train_set, test_set, cfg.image_size, cfg.mean, cfg.std)
            lin = linear_report(net, train_set, test_set, cfg.image_size, cfg.mean, cfg.std, fast=True, progress=False)
            res_path.parent.mkdir(parents=True, exist_ok=True)
            res_path.write_text(json.dumps({"knn": knn.top1, "linear": lin.top1}))
            print(f"random init on {name} seed {seed}: kNN {100 * knn.top1:.1f}%, linear {100 * lin.top1:.1f}%")


def key(row: str) -> str:
    """A row's name in file names: "cifar->digits simsiam, lr x10" -> "cifar-digits_simsiam_lr_x10"."""
    return row.replace("->", "-").replace(",", "").replace(" ", "_")


def mean_sd(xs: list[float]) -> str:
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * statistics.mean(xs):.1f} ± {100 * sd:.1f}" + ("" if len(xs) == 3 else f" (n={len(xs)})")


def table(out: Path) -> None:
    fin = out / "finetune"

    def top1s(row: str, label: str) -> dict[str, float]:
        return {
            p.stem.rsplit("-", 1)[1]: json.loads(p.read_text())["top1"]
            for p in sorted(fin.glob(f"{key(row)}-{label[:-1]}pc-s*.json"))
        }

    def paired(xs: dict[str, float], base: dict[str, float]) -> str:
        """The gap to random init seed by seed (same subset, same batches): mean ± sd (n)."""
        gaps = [xs[s] - base[s] for s in xs if s in base]
        if len(gaps) < 2:
            return "-"
        return f"{100 * statistics.mean(gaps):+.1f} ± {100 * statistics.stdev(gaps):.1f} (n={len(gaps)})"

    print(
        "| pretrained backbone | 1% of the labels (50) | vs random init, by seed | 10% (500) | vs random init, "
        "by seed | kNN on the slice (all labels) |"
    )
    print("|---|---|---|---|---|---|")
    known = {key(r) for r in ["random init", *backbones(out)]}
    found = sorted({p.name.rsplit("-", 2)[0] for p in fin.glob("*.json")} - known)  # --extra rows
    for row in ["random init", *backbones(out), *found]:
        base = None if row.startswith("random") else f"random_init_({row})" if row in found else "random init"
        cells = []
        for label in FRACTIONS:
            xs = top1s(row, label)
            cells += [mean_sd(list(xs.values())), paired(xs, top1s(base, label)) if base else "-"]
        knn = [
            json.loads((d / "summary.json").read_text()).get("knn_top1") or 0.0
            for d in backbones(out).get(row, [])
            if (d / "summary.json").exists()
        ]
        print(f"| {row} | {' | '.join(cells)} | {mean_sd(knn)} |")

    tr = out / "transfer"
    print()
    print("| pretrained on -> evaluated on | method | kNN top-1 | linear (fast) top-1 |")
    print("|---|---|---|---|")
    for f in sorted({p.name.rsplit("-", 2)[0] for p in tr.glob("*-s*.json") if not p.name.startswith("random")}):
        knn = [json.loads(p.read_text())["top1"] for p in sorted(tr.glob(f"{f}-knn-s*.json"))]
        lin = [json.loads(p.read_text())["top1"] for p in sorted(tr.glob(f"{f}-linear-s*.json"))]
        direction, method = f.split("_", 1)
        print(f"| {direction.replace('-', ' -> ')} | {method.replace('_', ' ')} | {mean_sd(knn)} | {mean_sd(lin)} |")
    for name in ("digits", "cifar"):
        rs = [json.loads(p.read_text()) for p in sorted(tr.glob(f"random-on-{name}-s*.json"))]
        print(
            f"| random init -> {name} | - | {mean_sd([r['knn'] for r in rs])} | {mean_sd([r['linear'] for r in rs])} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["pretrain", "finetune", "transfer", "table"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--reuse-simsiam", type=Path, help="the health study's CIFAR-slice runs (DIR/lr1-s{seed})")
    ap.add_argument(
        "--extra", action="append", default=[], metavar="NAME=RUN_DIR", help="finetune: one more backbone, every seed"
    )
    args = ap.parse_args()
    if args.phase == "pretrain":
        pretrain(args.out, args.reuse_simsiam)
        link_tuned(args.out, args.reuse_simsiam)
    elif args.phase == "finetune":
        extra = dict(e.split("=", 1) for e in args.extra)
        finetune_all(args.out, {k: [Path(v)] * len(SEEDS) for k, v in extra.items()})
    elif args.phase == "transfer":
        transfer_all(args.out)
    else:
        table(args.out)


if __name__ == "__main__":
    main()
