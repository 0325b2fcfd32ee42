"""What watching the effective rank costs, and how many images it needs.

    python benchmarks/rank.py                 # digits (25 epochs) and cifar10-cpu (1 epoch, 50k images)
    python benchmarks/rank.py --skip-cifar    # digits only (a minute)

1. Cost: a run of each preset as it comes (1024 images; every epoch, every 5th on digits); one
   measurement's seconds (`rank_seconds` in metrics.jsonl) against one epoch's, and all of them
   against the run's training time.
2. Sample size: on the trained backbone of each run, the effective rank of its features on N
   images for N = 128 ... 4096 (what the data has), each over 5 samples drawn with other seeds:
   mean, sd over the samples, and the mean's distance from the largest N's.

Prints the tables and writes them to benchmarks/RESULTS.md with the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from _common import cifar_folder, commit, machine, write_section

SIZES = (128, 256, 512, 1024, 2048, 4096)
DRAWS = 5


def cost(cfg) -> tuple[dict, list[dict]]:
    from simsiam import train

    train(cfg)
    rows = [json.loads(line) for line in (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()]
    epoch = sum(r["epoch_seconds"] for r in rows)
    measured = [r["rank_seconds"] for r in rows if r.get("rank_seconds") is not None]
    return {
        "epochs": len(rows),
        "measured": len(measured),
        "epoch_s": epoch / len(rows),
        "rank_s": statistics.mean(measured),
        "share": sum(measured) / epoch,
    }, rows


def stability(cfg, draws: int) -> list[dict]:
    """The backbone's effective rank on N images, over `draws` samples of each N."""
    from simsiam.data import load_splits
    from simsiam.health import embedding_ranks
    from simsiam.runs import load_backbone

    backbone, _ = load_backbone(cfg.run_dir, torch.device("cpu"))
    train_set, _ = load_splits(cfg)
    out = []
    ranks_at: dict[int, list[float]] = {}
    for n in [s for s in SIZES if s <= len(train_set)]:
        ranks_at[n] = []
        for draw in range(1, draws + 1):
            idx = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(draw))[:n].sort().values
            r = embedding_ranks(backbone, None, train_set.select(idx), cfg.image_size, cfg.mean, cfg.std)
            ranks_at[n].append(r["rank_backbone"])
    top = statistics.mean(ranks_at[max(ranks_at)])
    for n, ranks in ranks_at.items():
        m, sd = statistics.mean(ranks), statistics.stdev(ranks)
        out.append({"n": n, "mean": m, "sd": sd, "rel_sd": sd / m, "vs_largest": m / top - 1})
    return out


def main() -> None:
    from simsiam import from_preset

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="CIFAR-10 as train/ and test/ class folders (default: ../shared's tarball)")
    ap.add_argument("--skip-cifar", action="store_true", help="digits only")
    ap.add_argument("--digits-epochs", type=int, help="shorter digits run (default: the preset's 25)")
    ap.add_argument("--draws", type=int, default=DRAWS, help="samples of each size N")
    ap.add_argument("--tiny", action="store_true", help="a 1/8-width model with 64-d heads (a smoke test)")
    args = ap.parse_args()
    quiet = dict(knn_every=0, knn_random_init=False, report=False, device="cpu")
    if args.tiny:
        quiet.update(width=0.125, dim=64, proj_hidden=64, pred_dim=16)
    with tempfile.TemporaryDirectory() as tmp:
        epochs = args.digits_epochs or from_preset("digits").epochs
        digits = from_preset("digits", epochs=epochs, run_dir=f"{tmp}/digits", **quiet)
        runs = {f"digits (the default preset; {epochs} epochs, rank every 5)": digits}
        if not args.skip_cifar:
            data = args.data or str(cifar_folder())
            runs["cifar10-cpu, 1 epoch of 50k images, rank every epoch"] = from_preset(
                "cifar10-cpu", data_dir=data, epochs=1, run_dir=f"{tmp}/cifar", **quiet
            )
        lines = [
            f"Measured at commit {commit()} on {machine()}.",
            "",
            "Cost of the effective rank (1024 images, features and z) against the training it watches:",
            "",
            "| run | epochs (rank measured) | epoch (s) | one rank (s) | one rank / one epoch | share of the run | "
            "final rank: features / z |",
            "|---|---|---|---|---|---|---|",
        ]
        tables = []
        for name, cfg in runs.items():
            c, rows = cost(cfg)
            last = rows[-1]
            lines.append(
                f"| {name} | {c['epochs']} ({c['measured']}) | {c['epoch_s']:.1f} | {c['rank_s']:.2f} | "
                f"{100 * c['rank_s'] / c['epoch_s']:.1f}% | **{100 * c['share']:.1f}%** | "
                f"{last['rank_backbone']:.1f} of {last['rank_backbone_max']} / {last['rank_z']:.1f} of "
                f"{last['rank_z_max']} |"
            )
            print(lines[-1], flush=True)
            tables.append((name, stability(cfg, args.draws)))
        lines += ["", f"Effective rank of the trained backbone's features on N images ({args.draws} samples each):", ""]
        for name, rows in tables:
            lines += [f"{name}:", "", "| N | mean | sd | sd / mean | mean vs the largest N |", "|---|---|---|---|---|"]
            for r in rows:
                lines.append(
                    f"| {r['n']} | {r['mean']:.2f} | {r['sd']:.2f} | {100 * r['rel_sd']:.1f}% | "
                    f"{100 * r['vs_largest']:+.1f}% |"
                )
            lines.append("")
    text = "\n".join(lines)
    print(text)
    write_section("rank.py", "## Effective rank: cost and sample size (`benchmarks/rank.py`)\n\n" + text)


if __name__ == "__main__":
    main()
