"""`simsiam eval`: a trained backbone (a run directory, a checkpoint, an official SimSiam
checkpoint), the data to evaluate it on (its own unless given), one protocol (`evaluate.py`'s kNN or
linear probe; or, with no labels needed, the effective rank of its features), a typed result
written as JSON beside the source.

    from simsiam.evaluation import evaluate, evaluate_rank
    res = evaluate("runs/digits-...", "knn")      # res.top1, res.collapsed; RUN_DIR/eval_knn.json
    evaluate_rank("runs/digits-...").rank         # RUN_DIR/eval_rank.json
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TypeVar

from . import checkpoint
from .config import Config
from .data import labeled_splits, load_splits
from .errors import ConfigError
from .evaluate import knn_report, linear_report
from .health import embedding_ranks, rank_images
from .options import FinetuneOptions, KnnOptions, LinearOptions, RankOptions
from .parallel import is_main, rank_and_world
from .records import Evaluation, FinetuneResult, RankResult
from .runs import OFFICIAL, load_backbone
from .runtime import resolve_device


def evaluate(
    source: str | Path,
    protocol: str = "knn",
    *,
    data_dir: str | None = None,
    dataset: str | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    k: int = 200,
    t: float = 0.1,
    fast: bool = False,
    epochs: int = 90,
    batch_size: int = 4096,
    lr: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    report: str = "final",
) -> Evaluation:
    """Evaluate the backbone of `source` (a run directory, a checkpoint, or an official SimSiam
    checkpoint) with `protocol` "knn" or "linear" (`fast` for the L-BFGS probe) on its own data,
    or on `data_dir` / `dataset`. The result is written as JSON beside the source (RUN_DIR/eval_knn.json,
    eval_linear.json, eval_linear_fast.json; CKPT.eval_knn.json for a file) or to `out`, and
    returned with its "path"."""
    if protocol not in ("knn", "linear"):
        raise ConfigError(f"unknown evaluation protocol {protocol!r}; choose knn or linear")
    if protocol == "knn":  # the options' declared checks (`simsiam eval`'s), before anything is read
        KnnOptions(device=device, k=k, t=t)
    else:
        LinearOptions(device=device, fast=fast, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, report=report)
    backbone, cfg = load_backbone(source, resolve_device(device))
    cfg = _data_to_evaluate(cfg, data_dir, dataset)
    train_set, test_set = labeled_splits(cfg)
    size, mean, std = cfg.image_size, cfg.mean, cfg.std
    res: Evaluation
    if protocol == "knn":
        res = knn_report(backbone, train_set, test_set, size, mean, std, k=k, t=t)
        name = "eval_knn"
    else:
        res = linear_report(
            backbone,
            train_set,
            test_set,
            size,
            mean,
            std,
            fast=fast,
            epochs=epochs,
            batch_size=batch_size,
            base_lr=lr,
            seed=seed,
            progress=progress,
            report=report,
        )
        name = "eval_linear_fast" if fast else "eval_linear"
    return _written(res, source, cfg, out, name)


def evaluate_finetune(
    source: str | Path,
    *,
    data_dir: str | None = None,
    dataset: str | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    **options,
) -> FinetuneResult:
    """SimCLR's semi-supervised protocol (`finetune.py`) on the backbone of `source`, or with
    `from_scratch` on its architecture from random init: fine-tune it with a linear head on a
    class-balanced subset of the train split's labels (`label_fraction` or `labels_per_class`, or the
    images of `subset_file`), test top-1 on the test split. Written as JSON beside the source
    (RUN_DIR/eval_finetune.json, eval_finetune_scratch.json) or to `out`; the subset file (unless it
    was given) beside the JSON, named by its fraction and seed. `options`: FinetuneOptions' fields."""
    from .finetune import (
        balanced_subset,
        default_epochs,
        finetune,
        read_subset,
        scratch_like,
        subset_digest,
        subset_names,
        write_subset,
    )
    from .runtime import use_bf16

    o = FinetuneOptions(**options)
    if rank_and_world()[1] > 1:
        raise ConfigError("eval finetune runs in one process; run it without torchrun")
    if o.subset_file is None and (o.label_fraction is None) == (o.labels_per_class is None):
        raise ConfigError("give one of --label-fraction F, --labels-per-class K or --subset-file FILE")
    device = resolve_device(o.device)
    backbone, cfg = load_backbone(source, device)
    cfg = _data_to_evaluate(cfg, data_dir, dataset)
    train_set, test_set = labeled_splits(cfg, "fine-tuning")
    names = subset_names(train_set, cfg.data_dir)
    if o.subset_file is not None:
        subset = read_subset(o.subset_file, names, cfg.data_dir)
    else:
        subset = balanced_subset(train_set.labels, len(train_set.classes), o.label_fraction, o.labels_per_class, o.seed)
    name = "eval_finetune_scratch" if o.from_scratch else "eval_finetune"
    path = Path(out) if out else _beside(Path(source), name)
    subset_file = o.subset_file
    if subset_file is None:  # written first: a baseline can be started on it while this one trains
        what = f"{o.label_fraction:g}" if o.label_fraction is not None else f"{o.labels_per_class}-per-class"
        subset_file = str(path.with_name(f"finetune-subset-{what}-seed{o.seed}.txt"))
        share = f"{o.label_fraction:g} of each class" if o.label_fraction else f"{o.labels_per_class} a class"
        of = f"{len(subset)} of {len(train_set)} train images of {cfg.data_dir or cfg.dataset}"
        write_subset(Path(subset_file), subset, names, f"{of}, {share}, seed {o.seed}")
    if o.from_scratch:
        backbone = scratch_like(cfg, device, o.seed)
    res = finetune(
        backbone,
        train_set,
        test_set,
        subset,
        cfg,
        epochs=o.epochs or default_epochs(len(subset), len(train_set)),
        batch_size=o.batch_size,
        base_lr=o.lr,
        momentum=o.momentum,
        weight_decay=o.weight_decay,
        crop_min=o.crop_min,
        seed=o.seed,
        bf16=use_bf16(cfg.precision, device),
        progress=progress,
        save=o.save,
    )
    res = dataclasses.replace(
        res,
        init="random" if o.from_scratch else "pretrained",
        label_fraction=o.label_fraction if o.subset_file is None else None,
        labels_per_class=o.labels_per_class if o.subset_file is None else None,
        subset_file=str(subset_file),
        subset_sha256=subset_digest(subset, names),
        seed=o.seed,
    )
    return _written(res, source, cfg, out, name)


def evaluate_rank(
    source: str | Path,
    *,
    data_dir: str | None = None,
    dataset: str | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    samples: int = 1024,
) -> RankResult:
    """The effective rank (RankMe, `health.py`) of the backbone of `source` (a run directory, a
    checkpoint, an official SimSiam checkpoint) on a fixed sample of `samples` images of its own
    data's train split, or of `data_dir` / `dataset`; labels are not needed. Written as JSON beside
    the source (RUN_DIR/eval_rank.json, CKPT.eval_rank.json) or to `out`."""
    RankOptions(device=device, samples=samples)
    backbone, cfg = load_backbone(source, resolve_device(device))
    cfg = _data_to_evaluate(cfg, data_dir, dataset)
    train_set, _ = load_splits(cfg)
    sample = rank_images(train_set, samples)
    r = embedding_ranks(backbone, None, sample, cfg.image_size, cfg.mean, cfg.std)
    res = RankResult(
        rank=r["rank_backbone"], rank_max=r["rank_backbone_max"], num_images=len(sample), feature_dim=r["dim_backbone"]
    )
    return _written(res, source, cfg, out, "eval_rank")


_R = TypeVar("_R", Evaluation, FinetuneResult, RankResult)


def _written(res: _R, source: str | Path, cfg: Config, out: str | Path | None, name: str) -> _R:
    """`res` with where it came from and where it went, written (rank 0) as JSON to `out` or beside
    the source (RUN_DIR/NAME.json, CKPT.NAME.json)."""
    path = Path(out) if out else _beside(Path(source), name)
    res = dataclasses.replace(res, source=str(source), dataset=cfg.dataset, data_dir=cfg.data_dir, path=str(path))
    if is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.write_atomic(path, json.dumps(res.to_json(), indent=2) + "\n")
    return res


def _data_to_evaluate(cfg: Config, data_dir: str | None, dataset: str | None) -> Config:
    """The run's config with the data to evaluate on: the run's own unless given."""
    if cfg.preset == OFFICIAL and not data_dir:
        raise ConfigError("an official SimSiam checkpoint does not record its data; give --data-dir DIR")
    if data_dir:
        return cfg.replace(data_dir=data_dir, dataset=dataset or "folder")
    if dataset:
        return cfg.replace(dataset=dataset, data_dir=None if dataset == "digits" else cfg.data_dir)
    return cfg


def _beside(source: Path, name: str) -> Path:
    return source / f"{name}.json" if source.is_dir() else source.with_name(f"{source.stem}.{name}.json")
