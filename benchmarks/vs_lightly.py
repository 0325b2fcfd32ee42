"""simsiam against lightly's SimSiam run the way lightly's docs run it, on the same machine, with the
same model: the narrow CIFAR ResNet-18 (`simsiam.build_backbone("resnet18", cifar_stem=True,
width=0.25)`), SimSiam's 3-layer 2048-d projector and 512-d bottleneck predictor (lightly's
`SimSiamProjectionHead` / `SimSiamPredictionHead` defaults; ours with `--proj-layers 3`), and the
same batch.

- lightly: installed from PyPI into its own virtual environment (benchmarks/.venv-lightly), which
  sees this environment's torch (a .pth line), so both sides run the same torch build. Its docs'
  SimSiam: `SimSiamTransform(input_size=32)`, a torchvision `ImageFolder` over the CIFAR-10 JPEG
  folder and a `DataLoader` (shuffle, drop_last, `--lightly-workers` workers), the two heads,
  `NegativeCosineSimilarity`, SGD lr 0.06 as in the docs' example.
- simsiam: `--preset cifar10-cpu --proj-layers 3` (the paper's CIFAR recipe at CPU scale: images
  decoded once into memory, batched augmentation, SGD with a cosine schedule).

1. Throughput: the two alternate in `--rounds` windows of `--seconds` (each window a fresh process;
   start-up and warm-up steps are not timed); images/s of each and the median of the per-round
   ratios.
2. Budget race: simsiam trains for the whole epochs that fit in `--minutes` at its measured rate
   (its cosine schedule ends there), lightly trains for exactly as long; then the same kNN
   evaluation (`simsiam.evaluate.knn_accuracy`, k 200, T 0.1, bank = the training images, queries =
   the test images, each backbone with its own input normalisation).

    python benchmarks/vs_lightly.py                       # 3 x 60 s throughput rounds, a 20-minute race
    python benchmarks/vs_lightly.py --minutes 2 --rounds 1 --seconds 20 --no-write   # a quick look

`--lightly-from DIR` takes the `lightly` package in DIR instead (with this Python, nothing
installed): tests/test_benchmarks.py runs the plumbing with a stand-in, tests/lightly_standin.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV = HERE / ".venv-lightly"
LIGHTLY = "lightly==1.6.0"
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # lightly's SimSiamTransform normalisation


# --- set-up ---------------------------------------------------------------------------------


def lightly_python() -> Path:
    """benchmarks/.venv-lightly with lightly from PyPI, seeing this environment's torch."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        site = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        Path(site, "host-torch.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    check = subprocess.run([str(python), "-c", "import lightly"], capture_output=True)
    if check.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", LIGHTLY], check=True)
    return python


# --- workers (each in its own process) ---------------------------------------------------------


def ours_worker(args) -> dict:
    import torch

    from simsiam import from_preset
    from simsiam.engine import fit, setup, train_one_epoch
    from simsiam.monitor import Monitor

    common = dict(data_dir=str(args.data), proj_layers=3, batch_size=args.batch, knn_random_init=False, report=False)
    run_dir = tempfile.mkdtemp(prefix="vs-lightly-ours-")
    if args.mode == "race":
        s = fit(from_preset("cifar10-cpu", **common, epochs=args.epochs, knn_every=0, run_dir=run_dir + "/run"))
        return {
            "train_seconds": s["train_seconds"],
            "knn_top1": s["knn_top1"],
            "epochs": args.epochs,
            "steps": args.epochs * (s["num_train"] // args.batch),
        }
    cfg = from_preset("cifar10-cpu", **common, epochs=1000, knn_every=0, subset=args.batch * 10, run_dir=run_dir)
    run = setup(cfg)
    monitor = Monitor(cfg, run.run_dir, run.steps_per_epoch, 0, run.z_healthy)
    monitor.bar.disable = True
    train_one_epoch(run, 0, monitor)  # warm-up
    n, t0, epoch = 0, time.perf_counter(), 1
    while time.perf_counter() - t0 < args.seconds:
        train_one_epoch(run, epoch, monitor)  # ends with .item(): synchronised
        n, epoch = n + run.steps_per_epoch * args.batch, epoch + 1
    return {"images_per_second": n / (time.perf_counter() - t0), "threads": torch.get_num_threads()}


def lightly_worker(args) -> dict:
    """lightly's SimSiam example (docs: examples/pytorch/simsiam.py) with our backbone."""
    import torch
    import torch.nn as nn
    import torchvision
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead
    from lightly.transforms import SimSiamTransform

    from simsiam.backbones import build_backbone

    class SimSiam(nn.Module):
        def __init__(self, backbone, dim):
            super().__init__()
            self.backbone = backbone
            self.projection_head = SimSiamProjectionHead(dim, 2048, 2048)
            self.prediction_head = SimSiamPredictionHead(2048, 512, 2048)

        def forward(self, x):
            f = self.backbone(x).flatten(start_dim=1)
            z = self.projection_head(f)
            p = self.prediction_head(z)
            z = z.detach()
            return z, p

    torch.manual_seed(0)
    backbone, dim = build_backbone("resnet18", cifar_stem=True, width=0.25)
    model = SimSiam(backbone, dim)
    dataset = torchvision.datasets.ImageFolder(str(args.data / "train"), transform=SimSiamTransform(input_size=32))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch,
        shuffle=True,
        drop_last=True,
        num_workers=args.lightly_workers,
        persistent_workers=args.lightly_workers > 0,
    )
    criterion = NegativeCosineSimilarity()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06)
    # The race is timed from before the first step (DataLoader start included, as ours' epochs
    # include everything in them); the throughput after 3 warm-up steps.
    n, steps, t0 = 0, 0, time.perf_counter() if args.mode == "race" else None
    while True:
        for (x0, x1), _ in loader:
            z0, p0 = model(x0)
            z1, p1 = model(x1)
            loss = 0.5 * (criterion(z0, p1) + criterion(z1, p0))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            steps += 1
            if t0 is None:
                t0 = time.perf_counter() if steps == 3 else None
                continue
            n += args.batch
            if time.perf_counter() - t0 >= args.seconds:
                seconds = time.perf_counter() - t0
                if args.mode == "race":
                    path = args.out.with_suffix(".backbone.pt")
                    torch.save(backbone.state_dict(), path)
                    return {
                        "train_seconds": seconds,
                        "steps": steps,
                        "epochs": steps * args.batch / len(dataset),
                        "backbone": str(path),
                    }
                return {"images_per_second": n / seconds, "threads": torch.get_num_threads()}


def worker(side: str, mode: str, args, **extra) -> dict:
    out = Path(tempfile.mkdtemp(prefix="vs-lightly-")) / "result.json"
    python = lightly_python() if side == "lightly" and not args.lightly_from else Path(sys.executable)
    path = [str(args.lightly_from.resolve())] if side == "lightly" and args.lightly_from else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, str(ROOT / "src")]), "TQDM_DISABLE": "1"}
    cmd = [
        str(python),
        __file__,
        "--worker",
        side,
        "--mode",
        mode,
        "--data",
        str(args.data),
        "--out",
        str(out),
        "--batch",
        str(args.batch),
        "--lightly-workers",
        str(args.lightly_workers),
    ]
    cmd += [f"--{k}={v}" for k, v in extra.items()]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def knn_of_lightly(args, backbone_path: Path) -> float:
    import torch

    from simsiam import build_backbone, from_preset
    from simsiam.data import labeled_splits
    from simsiam.evaluate import knn_accuracy

    backbone, _ = build_backbone("resnet18", cifar_stem=True, width=0.25)
    backbone.load_state_dict(torch.load(backbone_path, weights_only=True))
    bank, test = labeled_splits(from_preset("cifar10-cpu", data_dir=str(args.data)))
    return knn_accuracy(backbone, bank, test, 32, *IMAGENET, k=200, t=0.1)


# --- the benchmark --------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="CIFAR-10 ImageFolder (train/ + test/); default: the ../shared tarball")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=60.0, help="throughput window per side and round")
    p.add_argument("--minutes", type=float, default=20.0, help="the budget race's wall-clock minutes per side")
    p.add_argument(
        "--lightly-workers", type=int, default=2, help="lightly's DataLoader workers (docs: 8; 2 cores here)"
    )
    p.add_argument("--note", default="")
    p.add_argument("--no-write", action="store_true")
    p.add_argument(
        "--lightly-from",
        type=Path,
        help="a folder holding a `lightly` package to use instead of installing lightly from PyPI "
        "(tests: tests/lightly_standin, a stand-in; needs --no-write)",
    )
    p.add_argument("--worker", choices=["ours", "lightly"], help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["rate", "race"], help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--epochs", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        result = (ours_worker if args.worker == "ours" else lightly_worker)(args)
        args.out.write_text(json.dumps(result))
        return

    if args.lightly_from and not args.no_write:
        raise SystemExit("--lightly-from gives figures that are not lightly's: add --no-write")
    if not args.data:
        from _common import cifar_folder

        args.data = cifar_folder()
    if not args.lightly_from:
        lightly_python()
    rates: dict[str, list[float]] = {"ours": [], "lightly": []}
    for r in range(args.rounds):
        for side in ("ours", "lightly"):
            rates[side].append(worker(side, "rate", args, seconds=args.seconds)["images_per_second"])
            print(f"round {r + 1}: {side} {rates[side][-1]:.1f} images/s", flush=True)
    ratios = [o / lt for o, lt in zip(rates["ours"], rates["lightly"])]
    ours_rate, lightly_rate = statistics.median(rates["ours"]), statistics.median(rates["lightly"])
    n_train = sum(1 for f in (args.data / "train").rglob("*") if f.is_file())
    epochs = max(1, int(args.minutes * 60 * ours_rate / n_train))
    print(f"race: simsiam trains {epochs} epochs (the whole epochs that fit in {args.minutes:g} min)", flush=True)
    ours = worker("ours", "race", args, epochs=epochs)
    print(f"race: simsiam {ours['train_seconds']:.0f} s, kNN {100 * ours['knn_top1']:.2f}%", flush=True)
    lightly = worker("lightly", "race", args, seconds=ours["train_seconds"])
    lightly["knn_top1"] = knn_of_lightly(args, Path(lightly["backbone"]))
    print(f"race: lightly {lightly['train_seconds']:.0f} s, kNN {100 * lightly['knn_top1']:.2f}%", flush=True)
    n_test = sum(1 for f in (args.data / "test").rglob("*") if f.is_file())

    from _common import commit, machine, write_section

    table = "\n".join(
        [
            "| | simsiam | lightly | simsiam / lightly |",
            "|---|---:|---:|---:|",
            f"| images/s (median of {args.rounds} rounds of {args.seconds:g} s) | {ours_rate:,.1f} "
            f"| {lightly_rate:,.1f} | {statistics.median(ratios):.2f}x |",
            f"| budget race: training seconds | {ours['train_seconds']:,.0f} | {lightly['train_seconds']:,.0f} | |",
            f"| budget race: steps (epochs) | {ours['steps']:,} ({ours['epochs']}) | {lightly['steps']:,} "
            f"({lightly['epochs']:.2f}) | |",
            f"| budget race: kNN top-1 on the {n_test:,} test images | {100 * ours['knn_top1']:.2f}% "
            f"| {100 * lightly['knn_top1']:.2f}% | {100 * (ours['knn_top1'] - lightly['knn_top1']):+.2f} points |",
        ]
    )
    per_round = ", ".join(f"{x:.2f}" for x in ratios)
    which = f"the lightly in {args.lightly_from}" if args.lightly_from else f"lightly {LIGHTLY.split('==')[1]}"
    setting = (
        f"CIFAR ResNet-18 x1/4, 3-layer 2048-d projector, predictor 512, batch {args.batch}, fp32, CPU; "
        f"{which} with {args.lightly_workers} DataLoader workers; per-round ratios {per_round}"
    )
    print(f"\n{setting}\n\n{table}")
    if not args.no_write:
        date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        command = "python benchmarks/vs_lightly.py " + " ".join(sys.argv[1:])
        note = f" **{args.note}**" if args.note else ""
        write_section(
            "vs_lightly.py",
            f"## simsiam vs lightly (`benchmarks/vs_lightly.py`)\n\n{date}, {commit()}, `{command.strip()}`.{note}\n"
            f"Machine: {machine()}.\n{setting}.\n\n{table}\n",
        )
        print("\nwrote benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
