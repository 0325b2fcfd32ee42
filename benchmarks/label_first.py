"""What to label first: `simsiam select`'s strategies judged by the classifier their labels train.

    python benchmarks/label_first.py --backbone RUN_DIR

CIFAR-10 (../shared): the backbone's features of the train folder (the pool: selection sees no
label) and of the test folder. For each budget N and seed, each strategy (typiclust, kcenter,
random) picks N train images; a logistic regression on the L2-normalised features of only those N
labelled images is scored on the test images (top-1). Mean ± sd over the seeds, and how many of
the 10 classes the N labels cover.

Prints the table and writes it to benchmarks/RESULTS.md with the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from _common import cifar_folder, commit, machine, write_section


def features(backbone: str, folder, limit: int | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from simsiam import search as S
    from simsiam.data.datasets import list_images
    from simsiam.runs import load_backbone

    net, cfg = load_backbone(backbone)
    paths = list_images(str(folder))
    if limit:
        paths = [paths[i] for i in np.random.default_rng(0).permutation(len(paths))[:limit]]
    kept, vectors, bad = S.embed_all(net, cfg, paths, 512, torch.device("cpu"), 2, False)
    classes = sorted({p.split("/")[-2] for p in kept})
    labels = np.array([classes.index(p.split("/")[-2]) for p in kept])
    return vectors, labels, classes


def accuracy(train_x, train_y, test_x, test_y) -> float:
    from sklearn.linear_model import LogisticRegression

    if len(set(train_y)) < 2:  # one class seen: the classifier can only say it
        return float(np.mean(test_y == train_y[0]))
    clf = LogisticRegression(C=10.0, max_iter=2000)
    clf.fit(train_x, train_y)
    return float(clf.score(test_x, test_y))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", required=True, help="RUN_DIR|CHECKPOINT whose features select and classify")
    ap.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 50, 100])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--pool", type=int, help="use this many train images (a fixed random draw), not all")
    ap.add_argument("--data", help="a folder with train/ and test/ class folders (default: CIFAR-10 from ../shared)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from simsiam.select import STRATEGIES, choose

    root = Path(args.data) if args.data else cifar_folder()
    t0 = time.perf_counter()
    pool_x, pool_y, classes = features(args.backbone, root / "train", args.pool)
    test_x, test_y, _ = features(args.backbone, root / "test", None)
    print(f"features: {len(pool_x)} pool + {len(test_x)} test images in {time.perf_counter() - t0:.0f} s", flush=True)
    full = accuracy(pool_x, pool_y, test_x, test_y)
    rows = []
    for n in args.budgets:
        cells = []
        for strategy in STRATEGIES:
            accs, covered, secs = [], [], []
            for seed in args.seeds:
                t = time.perf_counter()
                picks = choose(pool_x, n, strategy, seed)
                secs.append(time.perf_counter() - t)
                accs.append(accuracy(pool_x[picks], pool_y[picks], test_x, test_y))
                covered.append(len(set(pool_y[picks])))
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            cells.append(f"{100 * statistics.mean(accs):.1f} ± {100 * sd:.1f} ({statistics.mean(covered):.1f})")
            print(f"N {n} {strategy}: {cells[-1]}, {statistics.mean(secs):.1f} s to select", flush=True)
        rows.append(f"| {n} | " + " | ".join(cells) + " |")
    section = "\n".join(
        [
            "## What to label first (`benchmarks/label_first.py`)",
            "",
            f"Measured at {commit()} on {machine()}. Backbone: `{args.backbone}`. Pool: {len(pool_x)} CIFAR-10 "
            f"train images (selection reads no label); test: {len(test_x)} images. Logistic regression on the "
            f"selected images' features; test top-1 (%), mean ± sd over seeds {args.seeds}, and in brackets the "
            f"classes the labels cover (of {len(classes)}). With every pool label: {100 * full:.1f}%.",
            "",
            "| N labels | " + " | ".join(STRATEGIES) + " |",
            "|---|" + "---|" * len(STRATEGIES),
            *rows,
        ]
    )
    print("\n" + section)
    if not args.no_write:
        write_section("label_first.py", section)
        print("\nwrote benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
