"""One training loop for every method: `fit(cfg)` = setup -> epochs -> finish.

    dataset (uint8, on the device) -> ViewPlan (batched augmentation) -> method -> SGD

`train_one_epoch` is the step loop alone: views -> method step -> backward -> optimizer -> method
hook. Whatever an experiment changes plugs in from outside: the views a step feeds the method
(`views.ViewPlan`: asym. 2x, multi-crop) and the targets it is given (`eta`: Sec. 5.2). Per epoch:
cosine lr, a line in RUN_DIR/metrics.jsonl, the kNN monitor every `knn_every` epochs, an atomic
checkpoint. At the end: RUN_DIR/backbone.pt and RUN_DIR/summary.json.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from . import checkpoint
from .backbones import CUSTOM, RESNETS
from .config import Config
from .data import ImageSet, load_splits
from .data.datasets import Images
from .errors import ConfigError, DataError, Interrupted, SimSiamError, TrainingError, warn
from .eta import NoTargets, target_provider
from .evaluate import knn_accuracy
from .methods import Method, build_model
from .monitor import Monitor
from .optim import build_optimizer, lr_at, set_lr
from .parallel import broadcast_bn_stats, convert_sync_bn, mean_over_ranks, rank_slice, wrap
from .runs import read_metrics, valid_metrics_row
from .runtime import (
    StopSignals,
    autocast,
    barrier,
    broadcast_object,
    is_main,
    log,
    main_first,
    peak_memory,
    process_group,
    rank_and_world,
    reset_peak_memory,
    resident_memory_mb,
    resolve_device,
    run_metadata,
    seed_everything,
    use_bf16,
)
from .views import ViewPlan


@dataclass
class Run:
    """Everything `setup` builds for a run, and what the epochs change (the last three fields)."""

    cfg: Config
    run_dir: Path
    device: torch.device
    bf16: bool
    train_set: Images  # what SSL trains on, --subset applied
    bank_set: Images  # the labelled train images: the kNN bank
    test_set: Images  # the labelled test images: the kNN queries
    model: nn.Module  # what the step calls
    method: Method  # the same model unwrapped: hooks, backbone, heads
    optimizer: torch.optim.Optimizer
    plan: ViewPlan
    targets: NoTargets
    gen: torch.Generator  # data order + augmentation
    start_epoch: int = 0
    train_seconds: float = 0.0
    knn_random: float | None = None
    metrics: list[dict] = field(default_factory=list)  # every finished epoch's line
    partial: dict | None = None  # where a resume enters the middle of an epoch (see `partial_state`)
    closing: ExitStack = field(default_factory=ExitStack)  # the run directory's lock
    signals: StopSignals | None = None

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_set) // self.cfg.batch_size  # drop_last, as the official loader

    @property
    def batch(self) -> int:
        """This process's images per step: the global batch over the processes."""
        return self.cfg.batch_size // rank_and_world()[1]

    @property
    def has_labels(self) -> bool:
        return len(self.bank_set) > 0 and len(self.test_set) > 0

    @property
    def z_healthy(self) -> float:
        return 1 / math.sqrt(self.method.dim)

    def global_step(self, epoch: int, step: int) -> int:
        """Steps done once `step` steps of epoch `epoch` (0-based) are done."""
        return epoch * self.steps_per_epoch + step


def fit(cfg: Config, backbone: nn.Module | None = None, feature_dim: int | None = None) -> dict:
    """Train `cfg.method` as configured; returns the summary (also in RUN_DIR/summary.json).
    Under torchrun every process calls it; they train one model data-parallel.

    `backbone`: your own module mapping images (N, 3, S, S) to features (N, D), trained in place
    instead of `cfg.arch` (D = `feature_dim`, or measured by one forward); the run records arch
    "custom", so `load_backbone(RUN_DIR, backbone=module)` reads it back. Its initialisation is
    yours: `cfg.seed` seeds what simsiam draws from then on."""
    with process_group(cfg.device):
        run = setup(cfg, backbone=backbone, feature_dim=feature_dim)
        with run.closing, StopSignals() as run.signals:
            monitor = Monitor(cfg, run.run_dir, run.steps_per_epoch, run.start_epoch, run.z_healthy)
            last = None
            try:
                for epoch in range(run.start_epoch, cfg.epochs):
                    stats = train_one_epoch(run, epoch, monitor)
                    last = end_epoch(run, epoch, stats, monitor)
                    if epoch + 1 < cfg.epochs:
                        stop_if_asked(run, epoch + 1, 0)
            finally:
                monitor.close()
            return finish(run, last)


def train(cfg: Config, backbone: nn.Module | None = None, feature_dim: int | None = None) -> dict:
    """`fit`, then the run report (RUN_DIR/report/) unless cfg.report is off: `simsiam train`."""
    from .report import write_report

    summary = fit(cfg, backbone, feature_dim)
    if cfg.report and is_main():
        try:
            log(f"report: {write_report(summary['run_dir'], device=summary['device'], backbone=backbone)}")
        except (SimSiamError, OSError) as e:  # the run itself is complete; a failed plot must not hide that
            log(f"warning: no report written ({e}); try `simsiam report {summary['run_dir']}`")
    return summary


def train_one_epoch(run: Run, epoch: int, monitor: Monitor) -> dict:
    """The step loop: views -> method step -> backward -> optimizer -> hooks. Returns the epoch's stats."""
    cfg, method, optimizer = run.cfg, run.method, run.optimizer
    method.on_epoch_start(epoch)
    partial, run.partial = run.partial, None  # a resume in the middle of this epoch
    monitor.start_epoch(epoch, run.device, partial)
    first = partial["step"] if partial else 0
    full = partial["order"].to(run.device) if partial else None
    full = torch.randperm(len(run.train_set), generator=run.gen, device=run.device) if full is None else full
    order = rank_slice(full, cfg.batch_size)
    pin = run.device.type == "cuda"  # streamed batches: pinned, copied without blocking
    rest = order[first * run.batch :]
    batches = run.train_set.batches(  # streamed: a batch left under 2 images by unreadable files is dropped (BN)
        run.batch, order=rest, drop_last=True, workers=cfg.workers, pin_memory=pin, min_batch=2
    )
    for step, images in enumerate(batches, start=first):
        set_lr(optimizer, *lr_at(cfg, epoch, step, run.steps_per_epoch))
        images = images.to(run.device, non_blocking=True)  # a no-op when the data lives on the device
        targets = run.targets.targets(order, step)  # None unless a Sec. 5.2 experiment gives them
        views = run.plan.draw(images)  # one augmentation pair (two with asym. 2x), + small views
        with autocast(run.device, run.bf16):
            outs = [run.model(v, targets) for v in views]
        out = run.plan.combine(outs)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        method.after_backward(epoch)
        optimizer.step()
        method.after_step((epoch * run.steps_per_epoch + step + 1) / (run.steps_per_epoch * cfg.epochs))
        run.targets.update(order, step, out)
        monitor.step(step, out)
        if step + 1 < run.steps_per_epoch:  # mid-epoch checkpoints (--checkpoint-every, SIGINT, SIGTERM)
            checkpoint_mid_epoch(run, epoch, step + 1, full, monitor)
    return monitor.end_epoch()


def end_epoch(run: Run, epoch: int, stats: dict, monitor: Monitor) -> dict:
    """The epoch's metrics line (kNN when due), then the checkpoint. Returns the line."""
    cfg = run.cfg
    run.train_seconds += stats["epoch_seconds"]
    row = {
        "epoch": epoch + 1,
        "loss": stats["loss"],
        "z_std": stats["z_std"],
        "z_std_healthy": run.z_healthy,
        "lr": run.optimizer.param_groups[0]["lr"],
        "lr_groups": {g["name"]: g["lr"] for g in run.optimizer.param_groups},
        "images_per_second": stats["images_per_second"],
        "epoch_seconds": stats["epoch_seconds"],
    }
    if run.has_labels and (epoch + 1 == cfg.epochs or (cfg.knn_every and (epoch + 1) % cfg.knn_every == 0)):
        row["knn_top1"] = top1 = knn(run)
        log(f"epoch {epoch + 1}: loss {row['loss']:.4f}, z-std {row['z_std']:.4f}, kNN top-1 {100 * top1:.2f}%")
    row["rss_mb"] = resident_memory_mb()
    run.metrics.append(row)
    save_checkpoint(run, epoch + 1, 0)  # first the checkpoint, then its line: a resume never repeats an epoch
    monitor.record(row)
    return row


def checkpoint_mid_epoch(run: Run, epoch: int, step: int, order: torch.Tensor, monitor: Monitor) -> None:
    """Every --checkpoint-every steps, and when SIGINT or SIGTERM arrived: a checkpoint of the
    epoch so far (its data order, the step reached, the monitor's sums), so --resume continues
    here; after a signal, then stop."""
    every = run.cfg.checkpoint_every
    due = every > 0 and run.global_step(epoch, step) % every == 0
    asked = stop_requested(run, step)
    if due or asked:
        save_checkpoint(run, epoch, step, order=order, partial=monitor.partial())
    if asked:
        stop_if_asked(run, epoch, step, checked=True)


def save_checkpoint(run: Run, epoch: int, step: int, order=None, partial=None) -> None:
    """Rank 0 writes (verified, the older ones kept: see checkpoint.py); every process waits for it.
    A state that is not finite is never written: the run stops and the last finite checkpoint stays
    the newest (one host sync, here and not in every step)."""
    ensure_finite(run, epoch, step, partial)
    if is_main():
        state = training_state(run, epoch, step, order, partial)
        checkpoint.write_checkpoint(run.run_dir, state, run.global_step(epoch, step), run.cfg.keep_checkpoints)
    barrier()  # the checkpoint is written before any process moves on


def ensure_finite(run: Run, epoch: int, step: int, partial: dict | None = None) -> None:
    """A TrainingError naming the last finite checkpoint when a weight, a BN statistic, an optimizer
    buffer or the epoch's loss sum is NaN or infinite (on any process)."""
    tensors = [t for t in run.method.state_dict().values() if t.is_floating_point()]
    buffers = [t for s in run.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    tensors += [t for t in buffers if t.is_floating_point()]
    tensors += [t for t in (partial or {}).values() if torch.is_tensor(t)]
    finite = torch.stack([t.detach().isfinite().all().to(run.device) for t in tensors]).all().float()
    if mean_over_ranks(finite).item() == 1.0:
        return
    where = f"epoch {epoch + 1}, step {step}" if step else f"the end of epoch {epoch}"
    raise TrainingError(
        f"the model is not finite (NaN or inf) at {where}, so no checkpoint was written there; "
        f"{checkpoint.newest(run.run_dir)}; lower --lr (now {run.cfg.lr:g}) or check the data"
    )


def stop_requested(run: Run, step: int) -> bool:
    """A stop signal arrived (in any process: they agree every --log-every steps under torchrun)."""
    asked = run.signals is not None and run.signals.received is not None
    if rank_and_world()[1] == 1:
        return asked
    if (step + 1) % run.cfg.log_every:
        return False
    return bool(mean_over_ranks(torch.tensor(float(asked), device=run.device)).item() > 0)


def stop_if_asked(run: Run, epoch: int, step: int, checked: bool = False) -> None:
    """After a stop signal, with the checkpoint of (epoch, step) written: stop with one line."""
    if checked or stop_requested(run, run.cfg.log_every - 1):
        assert run.signals is not None
        name = run.signals.received or "a stop signal"
        where = f"epoch {epoch + 1}, step {step}" if step else f"the end of epoch {epoch}"
        raise Interrupted(
            f"{name}: stopped at {where} with a checkpoint in {run.run_dir}; continue with "
            f"`simsiam train --resume --run-dir {run.run_dir}`",
            signal_name=name,
        )


def finish(run: Run, last: dict | None) -> dict:
    """RUN_DIR/backbone.pt and summary.json; returns the summary."""
    cfg = run.cfg
    if last is None:  # resumed a finished run: nothing trained, report the stored numbers
        if not run.metrics:
            raise DataError(f"{run.run_dir}'s checkpoint records no finished epoch; start the run again")
        last = dict(run.metrics[-1])
        if last.get("knn_top1") is None:
            last["knn_top1"] = knn(run) if run.has_labels else None
    summary = {
        "method": cfg.method,
        "dataset": cfg.dataset,
        "data_dir": cfg.data_dir,
        "preset": cfg.preset,
        "arch": cfg.arch,
        "width": cfg.width,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "num_train": len(run.train_set),
        "num_test": len(run.test_set),
        "train_seconds": run.train_seconds,
        "images_per_second": run.steps_per_epoch * cfg.epochs * cfg.batch_size / max(run.train_seconds, 1e-9),
        "knn_top1": last.get("knn_top1"),
        "knn_top1_random_init": run.knn_random,
        "loss": last["loss"],
        "z_std": last["z_std"],
        "z_std_healthy": run.z_healthy,
        "collapsed": last["z_std"] < cfg.collapse_fraction * run.z_healthy,
        "device": str(run.device),
        "precision": "bf16" if run.bf16 else "fp32",
        "run_dir": str(run.run_dir),
        **peak_memory(run.device),
    }
    if is_main():  # durable like the checkpoints: a full disk here leaves no torn file
        checkpoint.save(run.run_dir / "backbone.pt", checkpoint.plain_keys(run.method.backbone.state_dict()))
        checkpoint.write_atomic(run.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    barrier()
    return summary


def knn(run: Run) -> float:
    """The kNN monitor: top-1 with the labelled train images as the bank (needs `run.has_labels`).
    Under torchrun each process extracts a share of the features with rank 0's BN statistics."""
    cfg = run.cfg
    broadcast_bn_stats(run.method)
    return knn_accuracy(
        run.method.backbone,
        run.bank_set,
        run.test_set,
        cfg.image_size,
        cfg.mean,
        cfg.std,
        cfg.knn_k,
        cfg.knn_t,
        channels_last=cfg.channels_last,
    )


# --- setup ------------------------------------------------------------------------------------


def setup(
    cfg: Config,
    data: tuple[Images, Images, Images] | None = None,
    backbone: nn.Module | None = None,
    feature_dim: int | None = None,
) -> Run:
    """Run directory, device, data, model, optimizer, views, targets; then a fresh start or a resume.
    `data` = (train, kNN bank, kNN queries) instead of `cfg`'s (benchmarks on synthetic images);
    `backbone` (and its `feature_dim`) instead of `cfg.arch` (see `fit`)."""
    run_dir = Path(cfg.run_dir or broadcast_object(default_run_dir(cfg)))  # rank 0's clock names it
    cfg = cfg.replace(run_dir=str(run_dir))
    if backbone is not None:  # the ResNet options do not apply to it; "custom" says it is not built by name
        cfg = cfg.replace(arch=CUSTOM, cifar_stem=False, width=1.0)
    world = rank_and_world()[1]
    if cfg.batch_size % world:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} is the global batch and must divide by the {world} processes; "
            f"use a multiple of {world}"
        )
    held = checkpoint.has_checkpoint(run_dir)
    if cfg.resume and not held:
        raise TrainingError(f"--resume: no checkpoint in {run_dir}; start without --resume or give the right --run-dir")
    if not cfg.resume and held:
        raise TrainingError(f"{run_dir} already holds a run; add --resume to continue it or choose another --run-dir")

    device = resolve_device(cfg.device)
    bf16 = use_bf16(cfg.precision, device)
    reset_peak_memory(device)
    seed_everything(cfg.seed)
    with main_first():  # rank 0 downloads or decodes into the cache first
        train_set, bank_set, test_set = data or load_data(cfg)
    if is_main():
        try:
            run_dir.mkdir(parents=True, exist_ok=True)  # only now: bad data or options leave no empty run dir behind
        except OSError as e:
            raise TrainingError(checkpoint.cannot_write(run_dir, e)) from None
    train_set, bank_set, test_set = train_set.to(device), bank_set.to(device), test_set.to(device)

    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    method = build_model(cfg, backbone, feature_dim).to(device).to(memory_format=memory_format)
    if world > 1 and cfg.sync_bn:
        method = convert_sync_bn(method, device)  # type: ignore[assignment]  # the same Method, its BNs replaced
    optimizer = build_optimizer(method, cfg)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)  # data order + augmentation, the same on every rank
    plan = ViewPlan.from_config(cfg, gen)
    batch = cfg.batch_size // world
    targets = target_provider(cfg, method.encoder, train_set, plan, method.dim, batch, lambda: autocast(device, bf16))
    model = wrap(method, device, compile=cfg.compile)
    run = Run(cfg, run_dir, device, bf16, train_set, bank_set, test_set, model, method, optimizer, plan, targets, gen)
    if is_main():
        run.closing.enter_context(checkpoint.RunLock(run_dir))  # a second `simsiam train` here refuses to start
    try:
        if cfg.resume:
            resume(run, checkpoint.load_latest(run_dir, map_location=device, warn=warn))
        else:
            start(run)
        if is_main():
            checkpoint.write_atomic(
                run_dir / "config.json", json.dumps(cfg.replace(resume=False).to_dict(), indent=2) + "\n"
            )
            checkpoint.write_atomic(
                run_dir / "run.json", json.dumps(run_record(run_dir, device, bf16), indent=2) + "\n"
            )
    except BaseException:
        run.closing.close()
        raise
    placement = "in memory" if isinstance(train_set, ImageSet) else f"streamed by {cfg.workers} workers"
    processes = (
        f", {world} processes x {cfg.batch_size // world}{' SyncBN' if cfg.sync_bn else ''}" if world > 1 else ""
    )
    log(
        f"{cfg.method} on {cfg.dataset} ({len(train_set)} train / {len(test_set)} test images), "
        f"{cfg.arch}{f' width {cfg.width}' if cfg.arch in RESNETS else ''}, batch {cfg.batch_size}{processes}, "
        f"lr {cfg.scaled_lr:g}, {cfg.epochs} epochs, {device}{' bf16' if bf16 else ''}"
        f"{' compiled' if cfg.compile else ''}, data {placement} -> {run_dir}"
    )
    run.method.train()
    return run


def run_record(run_dir: Path, device: torch.device, bf16: bool) -> dict:
    """run.json: what started the run; a resume adds its own record under "resumed" and keeps the first."""
    now = run_metadata(device, bf16)
    try:
        first = json.loads((run_dir / "run.json").read_bytes())
    except (OSError, ValueError, RecursionError):
        return now
    if not isinstance(first, dict):
        return now
    resumed: list = first["resumed"] if isinstance(first.get("resumed"), list) else []
    return {**first, "resumed": [*resumed, now]}


def default_run_dir(cfg: Config) -> str:
    return os.path.join("runs", f"{cfg.preset or cfg.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")


def load_data(cfg: Config) -> tuple[Images, Images, Images]:
    """(train set, kNN bank, kNN queries). The bank is the whole labelled train split, also with
    --subset, so a subset run's kNN is comparable with `simsiam eval knn`."""
    t_load = time.perf_counter()
    bank_set, test_set = load_splits(cfg)
    log(f"data: {len(bank_set)} train + {len(test_set)} test images loaded in {time.perf_counter() - t_load:.1f} s")
    train_set = bank_set
    if cfg.subset is not None and cfg.subset < len(train_set):
        pick = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.subset]
        train_set = train_set.select(pick.sort().values)
    if len(train_set) < cfg.batch_size:
        raise DataError(
            f"--batch-size {cfg.batch_size} is larger than the {len(train_set)} training images; "
            f"lower --batch-size or use more data"
        )
    # kNN needs labels: the bank and the queries are the labelled images only (STL-10's unlabeled
    # split and flat folders train but are not evaluated).
    bank_set, test_set = bank_set.labeled(), test_set.labeled()
    if len(bank_set) == 0 or len(test_set) == 0:
        log("no labelled images: kNN monitoring is off (give class sub-folders to evaluate)")
    return train_set, bank_set, test_set


def start(run: Run) -> None:
    """A new run: an empty metrics.jsonl, kNN at random init, the target provider's first pass."""
    if is_main():
        checkpoint.write_atomic(run.run_dir / "metrics.jsonl", "")
    if run.cfg.knn_random_init and run.has_labels:
        run.knn_random = top1 = knn(run)
        log(f"kNN top-1 of the backbone at random init: {100 * top1:.2f}%")
    run.targets.start()


def training_state(run: Run, epoch: int, step: int = 0, order=None, partial=None) -> dict:
    """What a checkpoint holds once `step` steps of epoch `epoch` (0-based) are done; step 0 is the
    end of epoch `epoch` - 1, when `order` and `partial` are None (see checkpoint.py)."""
    return {
        "epoch": epoch,
        "step": step,
        "order": None if order is None else order.cpu(),
        "partial": partial,
        "model": checkpoint.model_state(run.model),
        "optimizer": run.optimizer.state_dict(),
        "generator": run.gen.get_state(),
        "rng": {
            "cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if run.device.type == "cuda" else [],
        },
        "train_seconds": run.train_seconds,
        "knn_random_init": run.knn_random,
        "config": run.cfg.to_dict(),
        "memory": run.targets.state_dict(),
        "metrics": run.metrics,
    }


def resume(run: Run, state: dict) -> None:
    """Continue from `state`: the weights, the optimizer, every generator, the Sec. 5.2 targets, the
    metrics so far (metrics.jsonl is rewritten from them), and the place within an epoch."""
    try:
        run.method.load_state_dict(checkpoint.plain_keys(state["model"]))
        run.optimizer.load_state_dict(state["optimizer"])
        run.targets.load_state_dict(state.get("memory"))
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
        changed = config_changes(state.get("config") or {}, run.cfg)
        raise TrainingError(
            f"{run.run_dir / checkpoint.CHECKPOINT} does not match this configuration ("
            + (f"changed: {changed}" if changed else (str(e).splitlines() or [type(e).__name__])[0])
            + "); resume with the run's own options"
        ) from None
    _check_place(run, state)
    try:
        run.gen.set_state(state["generator"].cpu())  # generator states are CPU byte tensors
        rng = state.get("rng") or {}
        if "cpu" in rng:
            torch.set_rng_state(rng["cpu"])
        if rng.get("cuda") and run.device.type == "cuda" and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
    except (RuntimeError, TypeError, ValueError) as e:
        raise DataError(
            f"the random generator states in {run.run_dir}'s checkpoint are damaged ({type(e).__name__}); "
            "resume from an older checkpoint or retrain"
        ) from None
    run.start_epoch = state["epoch"]
    run.train_seconds = float(state.get("train_seconds") or 0.0)
    run.knn_random = state.get("knn_random_init")
    run.metrics = state.get("metrics") or read_metrics(run.run_dir)
    run.metrics = [m for m in run.metrics if m["epoch"] <= state["epoch"]]
    if state.get("step"):
        run.partial = {"step": state["step"], "order": state["order"], **state["partial"]}
    if is_main():  # the lines of the epochs the checkpoint holds, none after them
        lines = "".join(json.dumps(m) + "\n" for m in run.metrics)
        checkpoint.write_atomic(run.run_dir / "metrics.jsonl", lines)
    where = f"epoch {run.start_epoch + 1}, step {state['step']}" if state.get("step") else f"epoch {run.start_epoch}"
    log(f"resumed {run.run_dir} at {where} of {run.cfg.epochs}")


def _check_place(run: Run, state: dict) -> None:
    """The checkpoint's place fits this run: its epoch within --epochs' reach, its step within an
    epoch, its data order a permutation of this run's training images, its metrics lines valid."""
    bad = None
    epoch, step, n = state["epoch"], state.get("step", 0), len(run.train_set)
    if step >= run.steps_per_epoch:
        bad = f"step {step} of an epoch of {run.steps_per_epoch} steps"
    elif step and not (state["order"].shape == (n,) and torch.equal(state["order"].sort().values, torch.arange(n))):
        bad = f"a data order that is not one of the {n} training images"
    elif not all(valid_metrics_row(m) for m in state.get("metrics") or []):
        bad = "a metrics line that is not one"
    elif any(not isinstance(v, (int, float)) for v in (state.get("partial") or {}).values() if not torch.is_tensor(v)):
        bad = "partial sums that are not numbers"
    if bad:
        raise DataError(
            f"the checkpoint in {run.run_dir} (epoch {epoch}, step {step}) holds {bad}; "
            "resume from an older checkpoint or with the run's own data and options"
        )


_NOT_THE_MODEL = {
    "resume",
    "run_dir",
    "epochs",
    "device",
    "workers",
    "log_every",
    "knn_every",
    "report",
    "tensorboard",
    "checkpoint_every",
    "keep_checkpoints",
    "compile",
    "precision",
    "preset",
}


def config_changes(saved: dict, cfg: Config) -> str:
    """The options that differ from the checkpoint's, as 'width 0.125 (now 0.25), ...'."""
    now = cfg.to_dict()
    diff = [(k, v, now.get(k)) for k, v in saved.items() if k not in _NOT_THE_MODEL and now.get(k) != _plain(v)]
    return ", ".join(f"--{k.replace('_', '-')} {_plain(v)} (now {n})" for k, v, n in diff)


def _plain(v):
    return tuple(v) if isinstance(v, list) else v
