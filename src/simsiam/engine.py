"""One training loop for every method: `fit(cfg)` = setup -> epochs -> finish.

    dataset (uint8, on the device) -> ViewPlan (batched augmentation) -> method -> SGD

`train_one_epoch` is the step loop alone: views -> method step -> backward -> optimizer -> method
hook. Whatever an experiment changes plugs in from outside: the views a step feeds the method
(`views.ViewPlan`: asym. 2x, multi-crop) and the targets it is given (`eta`: Sec. 5.2). Per epoch:
cosine lr, a line in RUN_DIR/metrics.jsonl, the kNN monitor every `knn_every` epochs, an atomic
checkpoint; mid-epoch checkpoints and the stop after a signal are `Checkpoints`'. At the end:
RUN_DIR/backbone.pt and RUN_DIR/summary.json.
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
from .doctor import safe_to_return_to
from .errors import ConfigError, DataError, Interrupted, NonFinite, SimSiamError, TrainingError, warn
from .eta import NoTargets, target_provider
from .evaluate import knn_accuracy
from .health import embedding_ranks, rank_images
from .methods import Method, build_model
from .monitor import Monitor
from .optim import build_optimizer, global_step, lr_at, set_lr
from .parallel import (
    barrier,
    broadcast_bn_stats,
    broadcast_object,
    convert_sync_bn,
    is_main,
    main_first,
    mean_over_ranks,
    process_group,
    rank_and_world,
    rank_slice,
    wrap,
)
from .records import EpochStats, MetricsRow, Partial, Summary, TrainingState
from .runs import read_metrics
from .runtime import (
    StopSignals,
    autocast,
    log,
    peak_memory,
    reset_peak_memory,
    resident_memory_mb,
    resolve_device,
    run_metadata,
    seed_everything,
    use_bf16,
)
from .views import ViewPlan


@dataclass
class Data:
    train: Images  # what SSL trains on, --subset applied
    bank: Images  # the labelled train images: the kNN bank
    test: Images  # the labelled test images: the kNN queries


@dataclass
class Run:
    """Everything `setup` builds for a run, and where the epochs are (the fields with defaults)."""

    cfg: Config
    run_dir: Path
    device: torch.device
    bf16: bool
    data: Data
    model: nn.Module  # what the step calls
    method: Method  # the same model unwrapped: hooks, backbone, heads
    optimizer: torch.optim.Optimizer
    plan: ViewPlan
    targets: NoTargets
    gen: torch.Generator  # data order + augmentation
    start_epoch: int = 0
    train_seconds: float = 0.0
    knn_random: float | None = None
    metrics: list[MetricsRow] = field(default_factory=list)  # every finished epoch's line
    partial: Partial | None = None  # where a resume enters the middle of an epoch
    lr_scale: float = 1.0  # --on-collapse recover: x --recover-lr-factor at each recovery
    events: list[dict] = field(default_factory=list)  # the recoveries so far
    closing: ExitStack = field(default_factory=ExitStack)  # the run directory's lock

    @property
    def steps_per_epoch(self) -> int:
        return len(self.data.train) // self.cfg.batch_size  # drop_last, as the official loader

    @property
    def batch(self) -> int:
        """This process's images per step: the global batch over the processes."""
        return self.cfg.batch_size // rank_and_world()[1]

    @property
    def has_labels(self) -> bool:
        return len(self.data.bank) > 0 and len(self.data.test) > 0

    @property
    def z_healthy(self) -> float:
        return 1 / math.sqrt(self.method.dim)

    @property
    def recoveries(self) -> int:
        return sum(e["event"] == "recovery" for e in self.events)

    def global_step(self, epoch: int, step: int) -> int:
        """Steps done once `step` steps of epoch `epoch` (0-based) are done."""
        return global_step(epoch, step, self.steps_per_epoch)


def fit(cfg: Config, backbone: nn.Module | None = None, feature_dim: int | None = None) -> Summary:
    """Train `cfg.method` as configured; returns the summary (also in RUN_DIR/summary.json).
    Under torchrun every process calls it; they train one model data-parallel.

    `backbone`: your own module mapping images (N, 3, S, S) to features (N, D), trained in place
    instead of `cfg.arch` (D = `feature_dim`, or measured by one forward); the run records arch
    "custom", so `load_backbone(RUN_DIR, backbone=module)` reads it back. Its initialisation is
    yours: `cfg.seed` seeds what simsiam draws from then on."""
    with process_group(resolve_device(cfg.device)):
        run = setup(cfg, backbone=backbone, feature_dim=feature_dim)
        with run.closing, Checkpoints(run) as checkpoints:
            monitor = Monitor(cfg, run.run_dir, run.steps_per_epoch, run.start_epoch, run.z_healthy)
            last, epoch = None, run.start_epoch
            try:
                while epoch < cfg.epochs:
                    try:
                        row = measure(run, epoch, train_one_epoch(run, epoch, monitor, checkpoints), monitor)
                        state = broadcast_object(monitor.collapse(row))  # rank 0's call, on every process
                        if state and cfg.on_collapse == "recover":
                            epoch, last = recover(run, monitor, state, row), None
                            continue
                        last = end_epoch(run, epoch, row, monitor)
                        if state and cfg.on_collapse == "stop":
                            stop_collapsed(run, row, state)
                    except NonFinite as e:
                        if cfg.on_collapse != "recover":
                            add_event(run, {"event": "diverged", "epoch": epoch + 1, "message": str(e)})
                            raise
                        epoch, last = recover(run, monitor, "diverged", None, str(e), epoch + 1), None
                        continue
                    checkpoints.after_epoch(epoch + 1)
                    epoch += 1
            finally:
                monitor.close()
            return finish(run, last)


def train(cfg: Config, backbone: nn.Module | None = None, feature_dim: int | None = None) -> Summary:
    """`fit`, then the run report (RUN_DIR/report/) unless cfg.report is off: `simsiam train`."""
    from .report import write_report

    summary = fit(cfg, backbone, feature_dim)
    if is_main() and summary.health not in (None, "healthy"):
        from .doctor import describe, diagnose

        log(describe(diagnose(summary.run_dir), summary.run_dir))
    if cfg.report and is_main():
        try:
            log(f"report: {write_report(summary.run_dir, device=summary.device, backbone=backbone)}")
        except (SimSiamError, OSError) as e:  # the run itself is complete; a failed plot must not hide that
            log(f"warning: no report written ({e}); try `simsiam report {summary.run_dir}`")
    return summary


def train_one_epoch(run: Run, epoch: int, monitor: Monitor, checkpoints: Checkpoints | None = None) -> EpochStats:
    """The step loop: views -> method step -> backward -> optimizer -> hooks. Returns the epoch's stats."""
    cfg, method, optimizer = run.cfg, run.method, run.optimizer
    method.on_epoch_start(epoch)
    partial, run.partial = run.partial, None  # a resume in the middle of this epoch
    monitor.start_epoch(epoch, run.device, partial)
    first = partial.step if partial else 0
    full = partial.order.to(run.device) if partial else None
    full = torch.randperm(len(run.data.train), generator=run.gen, device=run.device) if full is None else full
    order = rank_slice(full, cfg.batch_size)
    pin = run.device.type == "cuda"  # streamed batches: pinned, copied without blocking
    rest = order[first * run.batch :]
    batches = run.data.train.batches(  # streamed: a batch left under 2 images by unreadable files is dropped (BN)
        run.batch, order=rest, drop_last=True, workers=cfg.workers, pin_memory=pin, min_batch=2
    )
    total = run.steps_per_epoch * cfg.epochs
    for step, images in enumerate(batches, start=first):
        lr, fixed_lr = lr_at(cfg, epoch, step, run.steps_per_epoch)
        set_lr(optimizer, lr * run.lr_scale, fixed_lr * run.lr_scale)
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
        method.after_step(run.global_step(epoch, step + 1) / total)
        run.targets.update(order, step, out)
        monitor.step(step, out)
        if checkpoints is not None and step + 1 < run.steps_per_epoch:  # the epoch's end checkpoints below
            checkpoints.after_step(epoch, step + 1, full, monitor)
    return monitor.end_epoch()


def measure(run: Run, epoch: int, stats: EpochStats, monitor: Monitor) -> MetricsRow:
    """The epoch's metrics line: its stats, the effective rank and kNN when due."""
    cfg = run.cfg
    run.train_seconds += stats.epoch_seconds
    row = MetricsRow(
        epoch=epoch + 1,
        loss=stats.loss,
        z_std=stats.z_std,
        z_std_healthy=run.z_healthy,
        lr=run.optimizer.param_groups[0]["lr"],
        lr_groups={g["name"]: g["lr"] for g in run.optimizer.param_groups},
        images_per_second=stats.images_per_second,
        epoch_seconds=stats.epoch_seconds,
    )
    if cfg.rank_samples and due(epoch, cfg.rank_every, cfg.epochs):
        t0 = time.perf_counter()
        r = ranks(run)
        row.rank_seconds = time.perf_counter() - t0
        row.rank_backbone, row.rank_z = r["rank_backbone"], r.get("rank_z")
        row.rank_backbone_max, row.rank_z_max = r["rank_backbone_max"], r.get("rank_z_max")
        monitor.show_rank(row.rank_backbone, row.rank_z)
    if run.has_labels and due(epoch, cfg.knn_every, cfg.epochs):
        row.knn_top1 = top1 = knn(run)
        rank = f", effective rank {row.rank_backbone:.1f}" if row.rank_backbone is not None else ""
        log(f"epoch {epoch + 1}: loss {row.loss:.4f}, z-std {row.z_std:.4f}{rank}, kNN top-1 {100 * top1:.2f}%")
    row.rss_mb = resident_memory_mb()
    return row


def end_epoch(run: Run, epoch: int, row: MetricsRow, monitor: Monitor) -> MetricsRow:
    """The epoch's checkpoint, then its line; with --on-collapse recover a healthy epoch's checkpoint
    becomes the one a recovery goes back to. Returns the line."""
    run.metrics.append(row)
    save_checkpoint(run, epoch + 1, 0)  # first the checkpoint, then its line: a resume never repeats an epoch
    monitor.record(row)
    safe = safe_to_return_to(row, run.cfg.collapse_fraction, rank_measured=bool(run.cfg.rank_samples))
    if run.cfg.on_collapse == "recover" and is_main() and safe:
        checkpoint.mark_healthy(run.run_dir, run.run_dir / checkpoint.numbered(run.global_step(epoch + 1, 0)))
    return row


def recover(run: Run, monitor: Monitor, state: str, row: MetricsRow | None, why: str = "", epoch: int = 0) -> int:
    """--on-collapse recover: back to the last healthy epoch's checkpoint (RUN_DIR/checkpoint-healthy.pt)
    with every lr x --recover-lr-factor from there on, recorded as an event (metrics.jsonl, the checkpoints, run.json)
    and made durable at once (a checkpoint of the recovered state: a kill from here on resumes it).
    Returns the epoch to train next (0-based). `state` is what the epoch showed (`row`'s), or "diverged"."""
    cfg = run.cfg
    epoch = row.epoch if row is not None else epoch
    done = run.recoveries
    if done >= cfg.max_recoveries:
        raise TrainingError(
            f"{state} at epoch {epoch} after {done} recoveries (--max-recoveries {cfg.max_recoveries}); "
            f"`simsiam doctor {run.run_dir}` names the likely causes"
        )
    path = run.run_dir / checkpoint.HEALTHY
    if not path.is_file():
        raise TrainingError(
            f"{state} at epoch {epoch}, and no healthy checkpoint to go back to ({path} is missing: the run "
            "started without --on-collapse recover); restart it with --on-collapse recover"
        )
    healthy = TrainingState.from_dict(checkpoint.load(path, run.device), path)
    if row is not None:
        why = f"z-std {row.z_std:.4f}"
        why = f"rank of z {row.rank_z:.2f}, {why}" if row.rank_z is not None else why
    scale = run.lr_scale * cfg.recover_lr_factor
    abandoned = [m.to_json() for m in run.metrics if m.epoch > healthy.epoch] + ([row.to_json()] if row else [])
    event = {
        "event": "recovery",
        "epoch": epoch,
        "state": state,
        "reason": f"{state} ({why})",
        "back_to": healthy.epoch,
        "lr_factor": cfg.recover_lr_factor,
        "lr_scale": scale,
        "abandoned": abandoned,
    }
    seconds, events = run.train_seconds, [*run.events, event]
    restore(run, healthy)
    run.lr_scale, run.events, run.train_seconds = scale, events, seconds
    save_checkpoint(run, healthy.epoch, 0)
    if is_main():
        checkpoint.write_atomic(run.run_dir / "metrics.jsonl", metrics_text(run))
        add_to_run_json(run.run_dir, "recoveries", {k: v for k, v in event.items() if k != "abandoned"})
    log(
        f"recovery {done + 1} of at most {cfg.max_recoveries}: {event['reason']} at epoch {epoch}; back to epoch "
        f"{healthy.epoch} with the lr x{event['lr_scale']:g} from there on"
    )
    monitor.rewind(healthy.epoch)
    return healthy.epoch


def stop_collapsed(run: Run, row: MetricsRow, state: str) -> None:
    """--on-collapse stop: the epoch's checkpoint is written; the run ends here."""
    add_event(run, {"event": "stopped", "epoch": row.epoch, "state": state})
    raise TrainingError(
        f"{state} at epoch {row.epoch} (--on-collapse stop): stopped with a checkpoint in {run.run_dir}; "
        f"`simsiam doctor {run.run_dir}` names the likely causes"
    )


def add_event(run: Run, event: dict) -> None:
    """An event line in metrics.jsonl that no checkpoint holds (the run stopped there)."""
    if is_main():
        checkpoint.append_line(run.run_dir / "metrics.jsonl", json.dumps(event))


def metrics_text(run: Run) -> str:
    """metrics.jsonl as the run's state holds it: its epoch lines, each recovery after the epoch it
    went back to."""
    lines = [((m.epoch, 0), m.to_json()) for m in run.metrics]
    lines += [((e["back_to"], 1), e) for e in run.events if e["event"] == "recovery"]
    return "".join(json.dumps(d) + "\n" for _, d in sorted(lines, key=lambda x: x[0]))


def add_to_run_json(run_dir: Path, key: str, entry: dict) -> None:
    """`entry` appended to the list `key` of run.json."""
    record = read_run_json(run_dir)
    before = record.get(key)
    record[key] = [*(before if isinstance(before, list) else []), entry]
    checkpoint.write_atomic(run_dir / "run.json", json.dumps(record, indent=2) + "\n")


class Checkpoints:
    """The checkpoints in the middle of a run and the stop they may end with: one every
    --checkpoint-every steps, and one at the next step after SIGINT or SIGTERM, after which the run
    stops (Interrupted: exit 130 / 143). Under torchrun the processes agree on a signal before
    acting on it, with one all-reduce every --log-every steps and at each epoch's end."""

    def __init__(self, run: Run):
        self.run, self.signals = run, StopSignals()

    def __enter__(self) -> Checkpoints:
        self.signals.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.signals.__exit__(*exc)

    def after_step(self, epoch: int, step: int, order: torch.Tensor, monitor: Monitor) -> None:
        """`step` steps of epoch `epoch` (0-based) are done, not the epoch's last; `order` is its
        whole data order, as a resume needs it."""
        run, every = self.run, self.run.cfg.checkpoint_every
        due = every > 0 and run.global_step(epoch, step) % every == 0
        asked = self.stop_asked(agree=(step + 1) % run.cfg.log_every == 0)
        if due or asked:
            save_checkpoint(run, epoch, step, Partial(step, order, **monitor.partial()))
        if asked:
            self.stop(epoch, step)

    def after_epoch(self, epochs_done: int) -> None:
        """The checkpoint of the epoch's end is written: stop here if asked (and not done anyway)."""
        if epochs_done < self.run.cfg.epochs and self.stop_asked(agree=True):
            self.stop(epochs_done, 0)

    def stop_asked(self, agree: bool) -> bool:
        """A stop signal arrived, in this process or (when the processes `agree` now) in any."""
        asked = self.signals.received is not None
        if rank_and_world()[1] == 1:
            return asked
        return agree and bool(mean_over_ranks(torch.tensor(float(asked), device=self.run.device)).item() > 0)

    def stop(self, epoch: int, step: int) -> None:
        name = self.signals.received or "a stop signal"
        where = f"epoch {epoch + 1}, step {step}" if step else f"the end of epoch {epoch}"
        run_dir = self.run.run_dir
        raise Interrupted(
            f"{name}: stopped at {where} with a checkpoint in {run_dir}; continue with "
            f"`simsiam train --resume --run-dir {run_dir}`",
            signal_name=name,
        )


def save_checkpoint(run: Run, epoch: int, step: int, partial: Partial | None = None) -> None:
    """Rank 0 writes (verified, the older ones kept: see checkpoint.py); every process waits for it.
    A state that is not finite is never written: the run stops and the last finite checkpoint stays
    the newest (one host sync, here and not in every step)."""
    ensure_finite(run, epoch, step, partial)
    if is_main():
        state = training_state(run, epoch, step, partial).to_dict()
        checkpoint.write_checkpoint(run.run_dir, state, run.global_step(epoch, step), run.cfg.keep_checkpoints)
    barrier()  # the checkpoint is written before any process moves on


def ensure_finite(run: Run, epoch: int, step: int, partial: Partial | None = None) -> None:
    """A TrainingError naming the last finite checkpoint when a weight, a BN statistic, an optimizer
    buffer or the epoch's loss sum is NaN or infinite (on any process)."""
    tensors = [t for t in run.method.state_dict().values() if t.is_floating_point()]
    buffers = [t for s in run.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    tensors += [t for t in buffers if t.is_floating_point()]
    tensors += [partial.loss_sum, partial.zstd_sum] if partial is not None else []
    finite = torch.stack([t.detach().isfinite().all().to(run.device) for t in tensors]).all().float()
    if mean_over_ranks(finite).item() == 1.0:
        return
    where = f"epoch {epoch + 1}, step {step}" if step else f"the end of epoch {epoch}"
    raise NonFinite(
        f"the model is not finite (NaN or inf) at {where}, so no checkpoint was written there; "
        f"{checkpoint.newest(run.run_dir)}; lower --lr (now {run.cfg.lr:g}) or check the data"
    )


def finish(run: Run, last: MetricsRow | None) -> Summary:
    """RUN_DIR/backbone.pt and summary.json; returns the summary."""
    cfg = run.cfg
    if last is None:  # resumed a finished run: nothing trained, report the stored numbers
        if not run.metrics:
            raise DataError(f"{run.run_dir}'s checkpoint records no finished epoch; start the run again")
        last = run.metrics[-1]
        if last.knn_top1 is None and run.has_labels:
            last.knn_top1 = knn(run)
    summary = Summary(
        method=cfg.method,
        dataset=cfg.dataset,
        data_dir=cfg.data_dir,
        preset=cfg.preset,
        arch=cfg.arch,
        width=cfg.width,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        num_train=len(run.data.train),
        num_test=len(run.data.test),
        train_seconds=run.train_seconds,
        images_per_second=run.steps_per_epoch * cfg.epochs * cfg.batch_size / max(run.train_seconds, 1e-9),
        knn_top1=last.knn_top1,
        knn_top1_random_init=run.knn_random,
        rank_backbone=last.rank_backbone,
        rank_z=last.rank_z,
        rank_backbone_max=last.rank_backbone_max,
        rank_z_max=last.rank_z_max,
        loss=last.loss,
        z_std=last.z_std,
        z_std_healthy=run.z_healthy,
        collapsed=last.z_std < cfg.collapse_fraction * run.z_healthy,
        health=run_health(run),
        recoveries=run.recoveries,
        device=str(run.device),
        precision="bf16" if run.bf16 else "fp32",
        run_dir=str(run.run_dir),
        **peak_memory(run.device),
    )
    if is_main():  # durable like the checkpoints: a full disk here leaves no torn file
        checkpoint.save(run.run_dir / "backbone.pt", checkpoint.plain_keys(run.method.backbone.state_dict()))
        checkpoint.write_atomic(run.run_dir / "summary.json", json.dumps(summary.to_json(), indent=2) + "\n")
    barrier()
    return summary


def run_health(run: Run) -> str:
    """`simsiam doctor`'s state of the run, from its lines (the last judged epoch's)."""
    from .doctor import judge

    return judge(run.cfg, run.metrics, []).state


def due(epoch: int, every: int, epochs: int) -> bool:
    """Whether a monitor run every `every` epochs (0: only at the end) measures after `epoch` (0-based)."""
    return epoch + 1 == epochs or bool(every and (epoch + 1) % every == 0)


def ranks(run: Run) -> dict:
    """The effective rank (RankMe, `health.py`) of the backbone's features and of z on a fixed sample
    of training images, with their ceilings: no labels, no augmentation, nothing drawn from the
    run's generator, no module left in another mode."""
    cfg = run.cfg
    sample = rank_images(run.data.train, cfg.rank_samples)
    projector = getattr(run.method, "projector", None)  # a method of one's own may have none: features only
    return embedding_ranks(run.method.backbone, projector, sample, cfg.image_size, cfg.mean, cfg.std, cfg.channels_last)


def knn(run: Run) -> float:
    """The kNN monitor: top-1 with the labelled train images as the bank (needs `run.has_labels`).
    Under torchrun each process extracts a share of the features with rank 0's BN statistics."""
    cfg = run.cfg
    broadcast_bn_stats(run.method)
    return knn_accuracy(
        run.method.backbone,
        run.data.bank,
        run.data.test,
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
    """Run directory, device, data, model and what trains it; then a fresh start or a resume.
    `data` = (train, kNN bank, kNN queries) instead of `cfg`'s (benchmarks on synthetic images);
    `backbone` (and its `feature_dim`) instead of `cfg.arch` (see `fit`)."""
    cfg = name_the_run(cfg, custom=backbone is not None)
    run_dir = Path(str(cfg.run_dir))
    check_the_run_dir(cfg, run_dir)
    device = resolve_device(cfg.device)
    bf16 = use_bf16(cfg.precision, device)
    reset_peak_memory(device)
    seed_everything(cfg.seed)
    loaded = place_the_data(cfg, run_dir, device, data)
    run = build_the_run(cfg, run_dir, device, bf16, loaded, backbone, feature_dim)
    begin(run)
    log(describe(run))
    run.method.train()
    return run


def name_the_run(cfg: Config, custom: bool) -> Config:
    """The config as the run records it: its run directory (rank 0's clock names a new one) and,
    for a backbone given from Python, arch "custom" (the ResNet options do not apply to it)."""
    cfg = cfg.replace(run_dir=str(cfg.run_dir or broadcast_object(default_run_dir(cfg))))
    return cfg.replace(arch=CUSTOM, cifar_stem=False, width=1.0) if custom else cfg


def check_the_run_dir(cfg: Config, run_dir: Path) -> None:
    """The batch divides over the processes; --resume finds a run, a new run finds none."""
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


def place_the_data(
    cfg: Config, run_dir: Path, device: torch.device, data: tuple[Images, Images, Images] | None
) -> Data:
    """The data (rank 0 downloads or decodes into the cache first), then the run directory (only
    now: bad data or options leave no empty one behind), then the data on the device."""
    with main_first():
        train_set, bank_set, test_set = data or load_data(cfg)
    if is_main():
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrainingError(checkpoint.cannot_write(run_dir, e)) from None
    return Data(train_set.to(device), bank_set.to(device), test_set.to(device))


def build_the_run(
    cfg: Config,
    run_dir: Path,
    device: torch.device,
    bf16: bool,
    data: Data,
    backbone: nn.Module | None,
    feature_dim: int | None,
) -> Run:
    """The method (SyncBN under torchrun), its optimizer, the view plan and the targets it asks
    for, the generator of data order and augmentation (the same on every process), the wrapper."""
    world = rank_and_world()[1]
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    method = build_model(cfg, backbone, feature_dim).to(device).to(memory_format=memory_format)
    if world > 1 and cfg.sync_bn:
        method = convert_sync_bn(method, device)  # type: ignore[assignment]  # the same Method, its BNs replaced
    optimizer = build_optimizer(method, cfg)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    plan = ViewPlan.for_method(cfg, method, gen)
    targets = target_provider(
        method.targeting,
        cfg.batch_size,
        method.encoder,
        data.train,
        plan,
        method.dim,
        cfg.batch_size // world,
        lambda: autocast(device, bf16),
    )
    model = wrap(method, device, compile=cfg.compile)
    return Run(cfg, run_dir, device, bf16, data, model, method, optimizer, plan, targets, gen)


def begin(run: Run) -> None:
    """Take the run directory's lock (a second `simsiam train` there refuses to start), resume or
    start, and record config.json and run.json."""
    if is_main():
        run.closing.enter_context(checkpoint.RunLock(run.run_dir))
    try:
        if run.cfg.resume:
            resume(run, checkpoint.load_latest(run.run_dir, map_location=run.device, warn=warn))
        else:
            start(run)
        if is_main():
            config = json.dumps(run.cfg.replace(resume=False).to_dict(), indent=2) + "\n"
            checkpoint.write_atomic(run.run_dir / "config.json", config)
            record = json.dumps(run_record(run.run_dir, run.device, run.bf16), indent=2) + "\n"
            checkpoint.write_atomic(run.run_dir / "run.json", record)
    except BaseException:
        run.closing.close()
        raise


def describe(run: Run) -> str:
    """The line that says what trains on what, where."""
    cfg, world = run.cfg, rank_and_world()[1]
    placement = "in memory" if isinstance(run.data.train, ImageSet) else f"streamed by {cfg.workers} workers"
    processes = (
        f", {world} processes x {cfg.batch_size // world}{' SyncBN' if cfg.sync_bn else ''}" if world > 1 else ""
    )
    return (
        f"{cfg.method} on {cfg.dataset} ({len(run.data.train)} train / {len(run.data.test)} test images), "
        f"{cfg.arch}{f' width {cfg.width}' if cfg.arch in RESNETS else ''}, batch {cfg.batch_size}{processes}, "
        f"lr {cfg.scaled_lr:g}, {cfg.epochs} epochs, {run.device}{' bf16' if run.bf16 else ''}"
        f"{' compiled' if cfg.compile else ''}, data {placement} -> {run.run_dir}"
    )


def run_record(run_dir: Path, device: torch.device, bf16: bool) -> dict:
    """run.json: what started the run; a resume adds its own record under "resumed" and keeps the first."""
    now = run_metadata(device, bf16)
    first = read_run_json(run_dir)
    if not first:
        return now
    resumed: list = first["resumed"] if isinstance(first.get("resumed"), list) else []
    return {**first, "resumed": [*resumed, now]}


def read_run_json(run_dir: Path) -> dict:
    """RUN_DIR/run.json's object, or {} when it is missing or not one."""
    try:
        record = json.loads((run_dir / "run.json").read_bytes())
    except (OSError, ValueError, RecursionError):
        return {}
    return record if isinstance(record, dict) else {}


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
    if run.cfg.on_collapse == "recover" and is_main():  # a recovery before any healthy epoch goes back to here
        checkpoint.mark_healthy(run.run_dir, state=training_state(run, 0).to_dict())


def training_state(run: Run, epoch: int, step: int = 0, partial: Partial | None = None) -> TrainingState:
    """What a checkpoint holds once `step` steps of epoch `epoch` (0-based) are done; step 0 is the
    end of epoch `epoch` - 1, with no `partial`."""
    return TrainingState(
        epoch=epoch,
        step=step,
        partial=partial,
        model=checkpoint.model_state(run.model),
        optimizer=run.optimizer.state_dict(),
        generator=run.gen.get_state(),
        rng={
            "cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if run.device.type == "cuda" else [],
        },
        train_seconds=run.train_seconds,
        knn_random_init=run.knn_random,
        config=run.cfg.to_dict(),
        memory=run.targets.state_dict(),
        metrics=run.metrics,
        lr_scale=run.lr_scale,
        events=run.events,
    )


def resume(run: Run, state: TrainingState) -> None:
    """Continue from `state`: the weights, the optimizer, every generator, the Sec. 5.2 targets, the
    metrics so far (metrics.jsonl is rewritten from them), the place within an epoch, and the
    recoveries so far with their lr factor."""
    restore(run, state)
    run.lr_scale, run.events = state.lr_scale, state.events
    if is_main():  # the lines of the epochs the checkpoint holds, none after them
        checkpoint.write_atomic(run.run_dir / "metrics.jsonl", metrics_text(run))
    where = f"epoch {run.start_epoch + 1}, step {state.step}" if state.step else f"epoch {run.start_epoch}"
    log(f"resumed {run.run_dir} at {where} of {run.cfg.epochs}")


def restore(run: Run, state: TrainingState) -> None:
    """The run as `state` holds it (`resume`, and a recovery going back to a healthy checkpoint)."""
    try:
        run.method.load_state_dict(checkpoint.plain_keys(state.model))
        run.optimizer.load_state_dict(state.optimizer)
        run.targets.load_state_dict(state.memory)
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
        changed = config_changes(state.config, run.cfg)
        raise TrainingError(
            f"{run.run_dir / checkpoint.CHECKPOINT} does not match this configuration ("
            + (f"changed: {changed}" if changed else (str(e).splitlines() or [type(e).__name__])[0])
            + "); resume with the run's own options"
        ) from None
    check_place(run, state)
    try:
        run.gen.set_state(state.generator.cpu())  # generator states are CPU byte tensors
        if "cpu" in state.rng:
            torch.set_rng_state(state.rng["cpu"])
        cuda = state.rng.get("cuda")
        if cuda and run.device.type == "cuda" and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    except (RuntimeError, TypeError, ValueError) as e:
        raise DataError(
            f"the random generator states in {run.run_dir}'s checkpoint are damaged ({type(e).__name__}); "
            "resume from an older checkpoint or retrain"
        ) from None
    run.start_epoch, run.train_seconds, run.knn_random = state.epoch, state.train_seconds, state.knn_random_init
    metrics = state.metrics or read_metrics(run.run_dir)  # checkpoints before 0.1's metrics entry
    run.metrics = [m for m in metrics if m.epoch <= state.epoch]
    run.partial = state.partial


def check_place(run: Run, state: TrainingState) -> None:
    """The checkpoint's place fits this run: its step within an epoch, its data order a
    permutation of this run's training images."""
    bad = None
    n = len(run.data.train)
    if state.step >= run.steps_per_epoch:
        bad = f"step {state.step} of an epoch of {run.steps_per_epoch} steps"
    elif state.partial is not None:
        order = state.partial.order
        if not (order.shape == (n,) and torch.equal(order.sort().values, torch.arange(n))):
            bad = f"a data order that is not one of the {n} training images"
    if bad:
        raise DataError(
            f"the checkpoint in {run.run_dir} (epoch {state.epoch}, step {state.step}) holds {bad}; "
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
    "rank_every",
    "rank_samples",
    "report",
    "tensorboard",
    "checkpoint_every",
    "keep_checkpoints",
    "compile",
    "precision",
    "preset",
}


def config_changes(saved: dict, cfg: Config) -> str:
    """The options that differ from the checkpoint's, as 'width 0.125 (now 0.25), ...' (options of
    the run's method only: an older version's checkpoint records every method's)."""
    now = cfg.to_dict()
    diff = [(k, v, now[k]) for k, v in saved.items() if k in now and k not in _NOT_THE_MODEL and now[k] != _plain(v)]
    return ", ".join(f"--{k.replace('_', '-')} {_plain(v)} (now {n})" for k, v, n in diff)


def _plain(v):
    return tuple(v) if isinstance(v, list) else v
