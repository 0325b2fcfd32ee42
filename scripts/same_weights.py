"""Train the same fixed-seed run with two versions of simsiam and check that the weights are equal,
bit for bit: the proof that a refactor changed no behaviour.

    python scripts/same_weights.py --base c95d0b3 --suite          # the standard runs, base vs working tree
    python scripts/same_weights.py --base main --head HEAD -- train --method byol --epochs 2 --subset 256

Each revision is checked out with `git worktree` into a temporary folder (the working tree itself,
uncommitted changes included, when the revision is "WORKTREE", the default head) and its
`python -m simsiam` runs with that folder's src/ first on the path, so the installed package does
not matter. A run is one or more `simsiam` commands into the same run directory (e.g. a train,
then a `--resume` to more epochs). Compared, tensor by tensor with torch.equal: checkpoint.pt's
model and optimizer state, backbone.pt, and the losses, z-std and kNN of metrics.jsonl. Both sides
run here, one after the other, with the same thread count: float results differ between CPUs (AMX
or not), so there are no stored hashes. `--cache DIR` keeps the base's runs for the next call.
Exit status 1 when anything differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
WORKTREE = "WORKTREE"

# Tiny, fast, and every path of the loop: each method, the Sec. 5.2 experiments, asym. 2x,
# multi-crop, warm-up with a per-step cosine, a fixed predictor, and an interrupted run resumed.
SMALL = [
    "--epochs",
    "2",
    "--subset",
    "640",
    "--batch-size",
    "32",
    "--width",
    "0.125",
    "--dim",
    "64",
    "--pred-dim",
    "16",
    "--proj-hidden",
    "64",
    "--knn-every",
    "1",
    "--no-report",
    "--seed",
    "3",
]
SWAV = [*SMALL, "--method", "swav", "--prototypes", "20"]  # SwAV's own option: for its runs only
SUITE: dict[str, list[list[str]]] = {
    "simsiam": [["train", *SMALL]],
    "simclr": [["train", *SMALL, "--method", "simclr"]],
    "byol": [["train", *SMALL, "--method", "byol"]],
    "swav-queue": [["train", *SWAV, "--queue-size", "64", "--queue-start-epoch", "1"]],
    "swav-multicrop": [["train", *SWAV, "--small-crops", "2"]],
    "mocov2": [["train", *SMALL, "--method", "mocov2", "--queue-size", "64"]],
    "alternation-10": [["train", *SMALL, "--alternation", "10"]],
    "alternation-epoch": [["train", *SMALL, "--alternation", "epoch"]],
    "target-memory": [["train", *SMALL, "--target-memory", "--no-predictor"]],
    "asym2x": [["train", *SMALL, "--symmetry", "asym2x"]],
    "warmup-step-fixed-pred": [
        ["train", *SMALL, "--epochs", "3", "--warmup-epochs", "1", "--schedule", "step", "--fixed-predictor"]
    ],
    "no-stop-gradient-concat": [["train", *SMALL, "--no-stop-gradient", "--concat-views"]],
    "resume-memory": [
        ["train", *SMALL, "--epochs", "1", "--target-memory", "--no-predictor"],
        ["train", "--resume", "--epochs", "2"],
    ],
}
METRIC_KEYS = ("epoch", "loss", "z_std", "z_std_healthy", "lr", "lr_groups", "knn_top1")


def checkout(rev: str, into: Path) -> Path:
    if rev == WORKTREE:
        return ROOT
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(into), rev],
        check=True,
        capture_output=True,
    )
    return into


def run(tree: Path, commands: list[list[str]], run_dir: Path, log: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    with open(log, "w") as f:
        for args in commands:
            cmd = [sys.executable, "-m", "simsiam", *args, "--run-dir", str(run_dir)]
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            res = subprocess.run(cmd, cwd=tree, env=env, stdout=f, stderr=subprocess.STDOUT)
            if res.returncode != 0:
                raise SystemExit(f"{' '.join(args)} failed at {tree} (exit {res.returncode}); see {log}")


def tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the run's end state, flattened to dotted names."""
    ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    out = {f"model.{k}": v for k, v in ckpt["model"].items()}
    opt = ckpt["optimizer"]["state"]
    out.update({f"optimizer.{i}.{k}": v for i, s in opt.items() for k, v in s.items() if torch.is_tensor(v)})
    out.update(
        {
            f"backbone.pt.{k}": v
            for k, v in torch.load(run_dir / "backbone.pt", map_location="cpu", weights_only=True).items()
        }
    )
    if ckpt.get("memory"):
        out.update({f"memory.{k}": v for k, v in ckpt["memory"].items() if torch.is_tensor(v)})
    return out


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: r.get(k) for k in METRIC_KEYS} for r in rows]


def differences(a: Path, b: Path) -> list[str]:
    ta, tb = tensors(a), tensors(b)
    diffs = [f"only in base: {k}" for k in ta.keys() - tb.keys()] + [
        f"only in head: {k}" for k in tb.keys() - ta.keys()
    ]
    for k in sorted(ta.keys() & tb.keys()):
        if ta[k].dtype != tb[k].dtype or ta[k].shape != tb[k].shape or not torch.equal(ta[k], tb[k]):
            diffs.append(f"tensor differs: {k}")
    if metrics(a) != metrics(b):
        diffs.append(f"metrics differ: {metrics(a)} vs {metrics(b)}")
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    if sa.keys() - sb.keys():  # a key users' scripts read is gone; a new one (head only) breaks nothing
        diffs.append(f"summary.json lost keys: {sorted(sa.keys() - sb.keys())}")
    return diffs


def added_keys(a: Path, b: Path) -> list[str]:
    """summary.json keys the head writes and the base did not (a new measurement, not a difference)."""
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    return sorted(sb.keys() - sa.keys())


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--base", required=True, help="git revision of the reference code")
    p.add_argument("--head", default=WORKTREE, help=f"git revision to check (default {WORKTREE}: this checkout)")
    p.add_argument("--suite", action="store_true", help="the standard runs (see SUITE in this file)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="only these runs of the suite")
    p.add_argument("--cache", type=Path, help="keep the base's runs here and reuse them")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then one simsiam command, e.g. -- train --epochs 2")
    args = p.parse_args()
    if args.cache:
        args.cache = args.cache.resolve()  # the runs start in the revision's own tree
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.suite == bool(command):
        p.error("give either --suite or one command after --")
    runs = {k: v for k, v in SUITE.items() if not args.only or k in args.only} if args.suite else {"command": [command]}

    work = Path(tempfile.mkdtemp(prefix="same-weights-"))
    base_sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", args.base], check=True, capture_output=True, text=True
    ).stdout.strip()
    trees = {}
    failed = []
    try:
        trees["base"] = checkout(base_sha, work / "base-tree")
        trees["head"] = checkout(args.head, work / "head-tree")
        print(
            f"base {args.base} ({base_sha[:10]}) vs head {args.head}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads"
        )
        for name, commands in runs.items():
            key = hashlib.sha256(json.dumps([base_sha, commands]).encode()).hexdigest()[:12]
            base_dir = (args.cache or work / "base-runs") / f"{name}-{key}"
            if not (base_dir / "summary.json").exists():
                shutil.rmtree(base_dir, ignore_errors=True)
                base_dir.parent.mkdir(parents=True, exist_ok=True)
                run(trees["base"], commands, base_dir, base_dir.with_suffix(".log"))
            head_dir = work / "head-runs" / name
            head_dir.parent.mkdir(parents=True, exist_ok=True)
            run(trees["head"], commands, head_dir, head_dir.with_suffix(".log"))
            diffs = differences(base_dir, head_dir)
            n = len(tensors(head_dir))
            print(f"{name:28s} {'SAME' if not diffs else 'DIFFERENT'} ({n} tensors, {len(metrics(head_dir))} epochs)")
            if added := added_keys(base_dir, head_dir):
                print(f"    summary.json adds keys: {added}")
            for d in diffs[:10]:
                print(f"    {d}")
            if len(diffs) > 10:
                print(f"    ... {len(diffs)} differences in all")
            if diffs:
                failed.append(name)
    finally:
        for tree in trees.values():
            if tree != ROOT:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True
                )
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(runs) - len(failed)} of {len(runs)} runs bit-identical" + (f"; different: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
