"""One training loop for every method.

dataset (uint8 tensor on the device) -> batched two-view augmentation -> method(x1, x2) -> SGD.
Per epoch: cosine lr, metrics to RUN_DIR/metrics.jsonl, an atomic checkpoint, the kNN monitor
every `knn_every` epochs. At the end: RUN_DIR/backbone.pt and RUN_DIR/summary.json.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .backbones import build_backbone
from .config import Config
from .data import Augment, ImageSet, load_splits
from .errors import ConfigError, DataError, SimSiamError, TrainingError
from .eta import TargetMemory, block_length, block_targets
from .evaluate import knn_accuracy
from .methods import METHODS
from .runs import read_metrics

CHECKPOINT = "checkpoint.pt"


def log(msg: str) -> None:
    tqdm.write(msg, file=sys.stdout)
    sys.stdout.flush()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"--device {name} asked for, but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast where it is fast: GPUs with bf16, CPUs with AMX matrix units."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:  # private but stable since torch 2.2; absent elsewhere -> fp32
        return bool(torch._C._cpu._init_amx())
    except AttributeError:
        return False


def build_model(cfg: Config) -> torch.nn.Module:
    backbone, feature_dim = build_backbone(cfg.arch, cfg.cifar_stem, cfg.width)
    return METHODS[cfg.method](cfg, backbone, feature_dim)


def build_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.SGD:
    """SGD at lr = base_lr x batch/256 on every group; weight decay on all parameters (Sec. 3)."""
    groups = [
        dict(g, lr=cfg.scaled_lr, fix_lr=g["fix_lr"] and cfg.fix_pred_lr) for g in model.param_groups() if g["params"]
    ]
    return torch.optim.SGD(groups, lr=cfg.scaled_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def cosine_lr(base_lr: float, progress: float) -> float:
    """Half-cosine from base_lr at progress 0 to 0 at progress 1 (official code)."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_at(cfg: Config, epoch: int, step: int, steps_per_epoch: int) -> tuple[float, float]:
    """(lr of the decayed groups, lr of the fixed ones) at this step. No warm-up by default
    (official code); `warmup_epochs` ramps both linearly per step, then the cosine runs over the
    remaining epochs, per epoch or per step (`schedule`)."""
    base, warm = cfg.scaled_lr, cfg.warmup_epochs
    done = epoch * steps_per_epoch + step  # steps before this one
    if done < warm * steps_per_epoch:
        lr = base * (done + 1) / (warm * steps_per_epoch)
        return lr, lr
    t = epoch if cfg.schedule == "epoch" else done / steps_per_epoch
    return cosine_lr(base, (t - warm) / (cfg.epochs - warm)), base


def set_lr(optimizer: torch.optim.Optimizer, lr: float, fixed_lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = fixed_lr if group["fix_lr"] else lr


def save_checkpoint(path: Path, state: dict) -> None:
    """Write to a temporary file, then rename: a crash or a full disk never leaves a torn file,
    and the previous checkpoint stays until the new one is complete."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise TrainingError(
            f"could not write checkpoint {path} ({e.strerror or e}); free disk space or "
            f"choose another --run-dir; the previous checkpoint is intact"
        ) from None


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def default_run_dir(cfg: Config) -> str:
    return os.path.join("runs", f"{cfg.preset or cfg.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")


def train(cfg: Config) -> dict:
    """Train `cfg.method` as configured; returns the summary (also in RUN_DIR/summary.json)."""
    run_dir = Path(cfg.run_dir or default_run_dir(cfg))
    cfg = cfg.replace(run_dir=str(run_dir))
    ckpt_path = run_dir / CHECKPOINT
    if cfg.resume and not ckpt_path.exists():
        raise TrainingError(
            f"--resume: no {CHECKPOINT} in {run_dir}; start without --resume or give the right --run-dir"
        )
    if not cfg.resume and ckpt_path.exists():
        raise TrainingError(f"{run_dir} already holds a run; add --resume to continue it or choose another --run-dir")

    device = resolve_device(cfg.device)
    bf16 = use_bf16(cfg.precision, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(cfg.seed)
    t_load = time.perf_counter()
    bank_set, test_set = load_splits(cfg)  # kNN bank: the whole train split, even with --subset
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
    has_labels = len(bank_set) > 0 and len(test_set) > 0
    if not has_labels:
        log("no labelled images: kNN monitoring is off (give class sub-folders to evaluate)")
    run_dir.mkdir(parents=True, exist_ok=True)  # only now: bad data or options leave no empty run dir behind
    train_set, bank_set, test_set = train_set.to(device), bank_set.to(device), test_set.to(device)
    placement = "in memory" if isinstance(train_set, ImageSet) else f"streamed by {cfg.workers} workers"
    if (cfg.alternation != "off" or cfg.target_memory) and not isinstance(train_set, ImageSet):
        raise ConfigError("--alternation and --target-memory index the training images; use --placement memory")

    model = build_model(cfg).to(device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = build_optimizer(model, cfg)
    augment = Augment.from_config(cfg)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)  # data order + augmentation
    z_healthy = 1 / math.sqrt(model.dim)
    memory = TargetMemory(len(train_set), model.dim, cfg.memory_momentum, device) if cfg.target_memory else None

    def views(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(x.contiguous(memory_format=memory_format) for x in augment.two_views(images, gen))

    def knn() -> float | None:
        if not has_labels:
            return None
        return knn_accuracy(
            model.backbone,
            bank_set,
            test_set,
            cfg.image_size,
            cfg.mean,
            cfg.std,
            cfg.knn_k,
            cfg.knn_t,
            channels_last=cfg.channels_last,
        )

    start_epoch, train_seconds, knn_random = 0, 0.0, None
    if cfg.resume:
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as e:
            raise TrainingError(
                f"{ckpt_path} does not match this configuration ({str(e).splitlines()[0]}); "
                "resume with the run's own options"
            ) from None
        gen.set_state(state["generator"].cpu())  # generator states are CPU byte tensors
        if memory is not None:
            memory.load_state_dict(state["memory"])
        start_epoch, train_seconds, knn_random = state["epoch"], state["train_seconds"], state["knn_random_init"]
        log(f"resumed {run_dir} at epoch {start_epoch}/{cfg.epochs}")
    else:
        (run_dir / "metrics.jsonl").write_text("")
        if cfg.knn_random_init and has_labels:
            knn_random = knn()
            log(f"kNN top-1 of the backbone at random init: {100 * knn_random:.2f}%")
        if memory is not None:
            memory.fill(model.encoder, train_set, augment, gen, cfg.batch_size, memory_format)

    (run_dir / "config.json").write_text(json.dumps(cfg.replace(resume=False).to_dict(), indent=2) + "\n")
    (run_dir / "run.json").write_text(
        json.dumps(
            {
                "git_sha": _git_sha(),
                "command": sys.argv,
                "torch": torch.__version__,
                "python": platform.python_version(),
                "device": str(device),
                "bf16": bf16,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
            indent=2,
        )
        + "\n"
    )
    log(
        f"{cfg.method} on {cfg.dataset} ({len(train_set)} train / {len(test_set)} test images), "
        f"{cfg.arch} width {cfg.width}, batch {cfg.batch_size}, lr {cfg.scaled_lr:g}, {cfg.epochs} epochs, "
        f"{device}{' bf16' if bf16 else ''}, data {placement} -> {run_dir}"
    )

    writer = _tensorboard(run_dir) if cfg.tensorboard else None
    low_epochs = 0  # consecutive epochs with z-std under the collapse threshold
    steps_per_epoch = len(train_set) // cfg.batch_size  # drop_last, as the official loader
    total_steps = steps_per_epoch * cfg.epochs
    block = block_length(cfg.alternation, steps_per_epoch)  # k-step alternation (0 = off)
    pairs = 2 if cfg.symmetry == "asym2x" else 1  # Sec. 4.6: asym. 2x draws two pairs per image
    bar = tqdm(
        total=total_steps,
        initial=start_epoch * steps_per_epoch,
        unit="step",
        dynamic_ncols=True,
        mininterval=1.0,
        file=sys.stderr,
    )
    model.train()
    last = {}
    for epoch in range(start_epoch, cfg.epochs):
        if hasattr(model, "on_epoch_start"):  # method hooks (methods/__init__.py)
            model.on_epoch_start(epoch)
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        zstd_sum = torch.zeros((), device=device)
        perm = torch.randperm(len(train_set), generator=gen, device=device)
        bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}")
        batches = train_set.batches(cfg.batch_size, order=perm, drop_last=True, workers=cfg.workers)
        n_steps = 0
        bs = cfg.batch_size
        for step, images in enumerate(batches):
            set_lr(optimizer, *lr_at(cfg, epoch, step, steps_per_epoch))
            images = images.to(device, non_blocking=True)  # a no-op when the data lives on the device
            index = perm[step * bs : (step + 1) * bs]
            extra = {}
            if block and step % block == 0:  # Sec. 5.2: eta for the next `block` steps, then replay their views
                replay = gen.get_state()
                future = [
                    views(train_set.take(perm[j * bs : (j + 1) * bs]))
                    for j in range(step, min(step + block, steps_per_epoch))
                ]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    etas = block_targets(model.encoder, future)
                gen.set_state(replay)
                del future
            if block:
                extra["targets"] = etas[step % block]
            if memory is not None:
                extra["targets"] = memory.targets(index)
            outs = []
            for _ in range(pairs):
                x1, x2 = views(images)
                if cfg.small_crops:  # multi-crop (SwAV): drawn after the two large views
                    extra["small"] = [
                        x.contiguous(memory_format=memory_format)
                        for x in augment.small_views(images, gen, cfg.small_crops)
                    ]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    outs.append(model(x1, x2, **extra))
            out = outs[0] if pairs == 1 else dict(outs[0], loss=sum(o["loss"] for o in outs) / pairs)
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            if hasattr(model, "after_backward"):
                model.after_backward(epoch)
            optimizer.step()
            if hasattr(model, "after_step"):
                model.after_step((epoch * steps_per_epoch + step + 1) / total_steps)
            if memory is not None:
                memory.update(index, out["z1"], out["z2"])
            loss_sum += out["loss"].detach().float()
            zstd_sum += out["z_std"]
            n_steps += 1
            bar.update(1)
            if (step + 1) % cfg.log_every == 0:
                loss_now = _check_finite(out["loss"], epoch, step, cfg)
                elapsed = time.perf_counter() - t0
                if writer is not None:
                    global_step = epoch * steps_per_epoch + step + 1
                    writer.add_scalar("step/loss", loss_now, global_step)
                    writer.add_scalar("step/z_std", out["z_std"].item(), global_step)
                bar.set_postfix(
                    loss=f"{loss_now:.4f}",
                    z_std=f"{out['z_std'].item():.4f}",
                    img_s=f"{(step + 1) * cfg.batch_size / elapsed:.0f}",
                    refresh=False,
                )
        _check_finite(out["loss"], epoch, step, cfg)  # never checkpoint a non-finite epoch
        epoch_seconds = time.perf_counter() - t0
        train_seconds += epoch_seconds
        last = {
            "epoch": epoch + 1,
            "loss": (loss_sum / n_steps).item(),
            "z_std": (zstd_sum / n_steps).item(),
            "z_std_healthy": z_healthy,
            "lr": optimizer.param_groups[0]["lr"],
            "lr_groups": {g["name"]: g["lr"] for g in optimizer.param_groups},
            "images_per_second": n_steps * cfg.batch_size / epoch_seconds,
            "epoch_seconds": epoch_seconds,
        }
        if has_labels and (epoch + 1 == cfg.epochs or (cfg.knn_every and (epoch + 1) % cfg.knn_every == 0)):
            last["knn_top1"] = knn()
            log(
                f"epoch {epoch + 1}: loss {last['loss']:.4f}, z-std {last['z_std']:.4f}, "
                f"kNN top-1 {100 * last['knn_top1']:.2f}%"
            )
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(last) + "\n")
        low_epochs = low_epochs + 1 if last["z_std"] < cfg.collapse_fraction * z_healthy else 0
        if low_epochs == cfg.collapse_patience:
            log(
                f"warning: looks collapsed: z-std {last['z_std']:.4f} has been under {cfg.collapse_fraction:g} x "
                f"1/sqrt(d) = {cfg.collapse_fraction * z_healthy:.4f} for {low_epochs} epochs "
                f"(loss {last['loss']:.3f}). "
                "Likely causes: no stop-gradient or no predictor (the paper's collapse cases), an lr too high, "
                "or BN removed from the heads."
            )
        if writer is not None:
            for key, value in last.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    writer.add_scalar(f"epoch/{key}", value, epoch + 1)
            for name, value in last["lr_groups"].items():
                writer.add_scalar(f"lr/{name}", value, epoch + 1)
            writer.flush()
        save_checkpoint(
            ckpt_path,
            {
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": gen.get_state(),
                "train_seconds": train_seconds,
                "knn_random_init": knn_random,
                "config": cfg.to_dict(),
                "memory": memory.state_dict() if memory is not None else None,
            },
        )
    bar.close()
    if writer is not None:
        writer.close()

    if not last:  # resumed a finished run: nothing trained, report the stored numbers
        last = read_metrics(run_dir)[-1]
        if "knn_top1" not in last:
            last["knn_top1"] = knn()
    torch.save(model.backbone.state_dict(), run_dir / "backbone.pt")
    summary = {
        "method": cfg.method,
        "dataset": cfg.dataset,
        "data_dir": cfg.data_dir,
        "preset": cfg.preset,
        "arch": cfg.arch,
        "width": cfg.width,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "num_train": len(train_set),
        "num_test": len(test_set),
        "train_seconds": train_seconds,
        "images_per_second": total_steps * cfg.batch_size / max(train_seconds, 1e-9),
        "knn_top1": last.get("knn_top1"),
        "knn_top1_random_init": knn_random,
        "loss": last["loss"],
        "z_std": last["z_std"],
        "z_std_healthy": z_healthy,
        "collapsed": last["z_std"] < cfg.collapse_fraction * z_healthy,
        "device": str(device),
        "precision": "bf16" if bf16 else "fp32",
        "run_dir": str(run_dir),
        **peak_memory(device),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if cfg.report:
        from .report import write_report

        try:
            log(f"report: {write_report(run_dir, device=str(device))}")
        except SimSiamError as e:  # the run itself is complete; a failed plot must not hide that
            log(f"warning: no report written ({e}); try `simsiam report {run_dir}`")
    return summary


def peak_memory(device: torch.device) -> dict:
    """Peak memory of this run: CUDA memory allocated on a GPU; on a CPU the peak resident size of
    the whole process (per run only when each run has its own process, as in `simsiam compare`)."""
    if device.type == "cuda":
        return {"peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20, "peak_memory_of": "cuda allocated"}
    try:
        import resource
    except ImportError:  # Windows
        return {"peak_memory_mb": None, "peak_memory_of": None}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return {"peak_memory_mb": rss / (2**20 if sys.platform == "darwin" else 2**10), "peak_memory_of": "process RSS"}


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _check_finite(loss: torch.Tensor, epoch: int, step: int, cfg: Config) -> float:
    value = loss.item()
    if not math.isfinite(value):
        kept = f"the checkpoint of epoch {epoch} is kept" if epoch > 0 else "no checkpoint was written yet"
        raise TrainingError(
            f"loss is {value} at epoch {epoch + 1}, step {step + 1}; lower --lr (now {cfg.lr:g}) "
            f"or check the data; {kept}"
        )
    return value
