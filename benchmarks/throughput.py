"""Pipeline efficiency: images/s of simsiam's full training step against the bare step of the
same model, side by side on one device.

- ours: `simsiam.engine.train_one_epoch` itself on a run built by `simsiam.engine.setup` (synthetic
  uint8 images kept on the device): batched two-view augmentation + forward + backward + SGD +
  the method's hooks and the monitor's device-side sums;
- bare: forward + backward + SGD of the same model on random normalised tensors that are
  already in the faster memory format (channels_last or contiguous, whichever wins here), same
  batch, same precision, same device; no augmentation, no data, no bookkeeping.

ours / bare is the pipeline efficiency (1.0: the pipeline costs nothing). The two alternate in
`--rounds` windows of `--seconds` each and the table gives medians, so a drift in a shared
machine's speed hits both alike. Peak memory: CUDA memory allocated per side on a GPU; on a CPU
the process's peak resident size (both sides together).

    python benchmarks/throughput.py                       # cifar10-cpu: CIFAR ResNet-18 x1/4, 2048-d heads, batch 128
    python benchmarks/throughput.py --preset cifar10 --batch-size 512 --compile   # a GPU
    python benchmarks/throughput.py --preset imagenet --set arch=resnet50 --batch-size 256
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time

import torch
from _common import commit, machine, rate, sync, write_section

from simsiam import PRESETS, Views, from_preset
from simsiam.data import ImageSet
from simsiam.engine import setup, train_one_epoch
from simsiam.monitor import Monitor
from simsiam.optim import build_optimizer
from simsiam.runtime import autocast, peak_memory

STEPS = 8  # steps per synthetic epoch of ours


def build(args):
    overrides = dict(knn_random_init=False, knn_every=0, report=False, device=args.device, compile=args.compile)
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    if args.precision:
        overrides["precision"] = args.precision
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    if PRESETS[args.preset].get("dataset") == "folder":
        overrides.setdefault("data_dir", "<synthetic>")  # a folder preset needs one; nothing is read from it
    cfg = from_preset(args.preset, **overrides)
    size, n = cfg.stored_size, cfg.batch_size * STEPS
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    train = ImageSet(images, torch.zeros(n, dtype=torch.long), ["x"])
    empty = ImageSet(images[:0], torch.zeros(0, dtype=torch.long), ["x"])
    run = setup(cfg.replace(run_dir=tempfile.mkdtemp(prefix="throughput-")), data=(train, empty, empty))
    return cfg, run


def ours_step(run):
    monitor = Monitor(run.cfg, run.run_dir, run.steps_per_epoch, 0, run.z_healthy)
    monitor.bar.disable = True  # its progress bar would interleave with the table
    epoch = [0]
    fmt = torch.channels_last if run.cfg.channels_last else torch.contiguous_format

    def step() -> int:
        run.method.to(memory_format=fmt)  # a no-op unless the bare step left another format
        train_one_epoch(run, epoch[0] % run.cfg.epochs, monitor)  # .item() at the epoch's end: synchronised
        epoch[0] += 1
        return run.steps_per_epoch * run.cfg.batch_size

    return step


def bare_step(run, seconds: float):
    """The bare step in whichever memory format is faster here (measured for a short while)."""
    cfg, method = run.cfg, run.method
    optimizer = build_optimizer(method, cfg)
    g = torch.Generator(device=run.device).manual_seed(1)
    shape = (cfg.batch_size, 3, cfg.image_size, cfg.image_size)
    model = run.model  # compiled with --compile, as ours

    def make(fmt):
        x1 = torch.randn(*shape, generator=g, device=run.device).contiguous(memory_format=fmt)
        x2 = torch.randn(*shape, generator=g, device=run.device).contiguous(memory_format=fmt)

        def step() -> int:
            method.to(memory_format=fmt)  # weights in the same format as the inputs
            with autocast(run.device, run.bf16):
                loss = model(Views(x1, x2)).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return cfg.batch_size

        return step

    trial = {
        fmt: rate(make(fmt), max(seconds / 4, 1.0), warmup=2) for fmt in (torch.contiguous_format, torch.channels_last)
    }
    best = max(trial, key=lambda f: trial[f])
    return make(best), ("channels_last" if best == torch.channels_last else "contiguous"), trial


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cifar10-cpu")
    p.add_argument("--batch-size", type=int, help="global batch (default: the preset's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], help="default: the preset's (auto)")
    p.add_argument("--compile", action="store_true", help="torch.compile both sides")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any config field, e.g. arch=resnet50"
    )
    p.add_argument("--seconds", type=float, default=20.0, help="timed window per side and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--note", default="")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()

    cfg, run = build(args)
    ours = ours_step(run)
    bare, fmt, trial = bare_step(run, args.seconds)
    ours(), bare()  # warm-up (and compilation) of both
    mem = {}
    rates: dict[str, list[float]] = {"ours": [], "bare": []}
    for _ in range(args.rounds):
        for name, step in (("ours", ours), ("bare", bare)):
            if run.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            rates[name].append(rate(step, args.seconds, warmup=1))
            mem[name] = peak_memory(run.device)["peak_memory_mb"]
    sync()
    ratios = [o / b for o, b in zip(rates["ours"], rates["bare"])]
    ratio, per_round = statistics.median(ratios), ", ".join(f"{r:.2f}" for r in ratios)
    o, b = statistics.median(rates["ours"]), statistics.median(rates["bare"])
    where = "CUDA allocated" if run.device.type == "cuda" else "process RSS, both sides"
    setting = (
        f"{cfg.arch} x{cfg.width:g}{' CIFAR stem' if cfg.cifar_stem else ''}, {cfg.image_size} px, "
        f"{cfg.proj_layers}-layer projector {cfg.proj_hidden}-{cfg.dim}, predictor {cfg.pred_dim}, "
        f"batch {cfg.batch_size}, {'bf16' if run.bf16 else 'fp32'}, {run.device}{', compiled' if cfg.compile else ''}"
    )
    table = "\n".join(
        [
            "| step | images/s (median) | peak memory (MB) |",
            "|---|---:|---:|",
            f"| ours: augment + forward + backward + SGD (`train_one_epoch`) | {o:,.1f} | {mem['ours']:,.0f} |",
            f"| bare: forward + backward + SGD on ready tensors ({fmt}) | {b:,.1f} | {mem['bare']:,.0f} |",
            "",
            f"Pipeline efficiency ours / bare: **{ratio:.2f}** (median of {args.rounds} rounds of "
            f"{args.seconds:g} s each; per round: {per_round}). "
            f"Bare step by memory format: "
            + ", ".join(
                f"{'channels_last' if k == torch.channels_last else 'contiguous'} {v:,.1f}" for k, v in trial.items()
            )
            + f" images/s. Peak memory: {where}.",
        ]
    )
    print(f"{setting}\n\n{table}")
    if not args.no_write:
        date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        command = "python benchmarks/throughput.py " + " ".join(sys.argv[1:])
        note = f" **{args.note}**" if args.note else ""
        write_section(
            "throughput.py",
            f"## Pipeline efficiency (`benchmarks/throughput.py`)\n\n{date}, {commit()}, `{command.strip()}`.{note}\n"
            f"Machine: {machine()}.\n{setting}.\n\n{table}\n",
        )
        print("\nwrote benchmarks/RESULTS.md")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t0:.0f} s)")
