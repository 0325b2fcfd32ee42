"""Semi-supervised fine-tuning (SimCLR App. B.5, BYOL Sec. 4.2): the whole backbone and a linear
head trained on a class-balanced fraction of the train split's labels, scored on the test split;
beside it, the same architecture from random init on the same images (`from_scratch`).

SimCLR's recipe, the defaults: SGD with Nesterov momentum 0.9, batch 4096, lr = 0.05 x batch/256
(0.8) with the batch asked for (a subset smaller than the batch is one step an epoch, at that lr),
no warm-up, a half-cosine per step, no weight decay, RandomResizedCrop (scale 0.08-1) + flip only,
60 epochs for 1% of the labels and 30 for 10% (here: 60 when the subset is at most 1% of the
train split, else 30).

The subset is a text file of the chosen images, one a line (the path under the data folder, or the
index for data read without paths), written beside the result and read back with `subset_file`, so
that two backbones are compared on the same images: SimCLR's ImageNet subset files (file names)
are read too. The data order and the crops come from `seed` alone, so a pretrained and a
from-scratch run with the same subset and seed see identical batches.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones import build_backbone, feature_dim
from .config import Config
from .data.augment import Augment
from .errors import ConfigError, DataError, TrainingError
from .evaluate import _judged, fingerprint, linear_head, pooled_features
from .optim import cosine_lr, set_lr
from .records import FinetuneResult
from .runtime import Bar, autocast

SUBSET_HEADER = "# simsiam label subset"


def balanced_subset(
    labels: torch.Tensor, num_classes: int, fraction: float | None = None, per_class: int | None = None, seed: int = 0
) -> torch.Tensor:
    """Sorted indices of a class-balanced subset: `per_class` images of every class, or the same
    `fraction` of each class (rounded, at least one), drawn with `seed`."""
    if (fraction is None) == (per_class is None):
        raise ConfigError("give one of --label-fraction F and --labels-per-class K")
    rng = np.random.default_rng(seed)
    y = labels.cpu().numpy()
    picked = []
    for c in range(num_classes):
        members = np.flatnonzero(y == c)
        if len(members) == 0:
            continue
        k = per_class if per_class is not None else max(1, round(fraction * len(members)))  # type: ignore[operator]
        if k > len(members):
            raise ConfigError(
                f"--labels-per-class {per_class}: class {c} has only {len(members)} train images; ask for fewer"
            )
        picked.append(rng.choice(members, size=k, replace=False))
    return torch.from_numpy(np.sort(np.concatenate(picked))).long()


def subset_names(train, root: str | None) -> list[str]:
    """What identifies each train image in a subset file: its path under `root` (the data folder),
    or its index when the data was read without paths (digits, torchvision's CIFAR files)."""
    paths = train.paths  # an ImageSet's (None for data read without paths) or a FileSet's
    if paths is None:
        return [str(i) for i in range(len(train))]
    base = root or os.path.commonpath(paths)
    return [os.path.relpath(p, base) for p in paths]


def write_subset(path: Path, idx: torch.Tensor, names: list[str], comment: str) -> None:
    from .checkpoint import write_atomic

    lines = [f"{SUBSET_HEADER}: {comment}", *(names[i] for i in idx.tolist())]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "\n".join(lines) + "\n")


def read_subset(path: str | Path, names: list[str], root: str | None = None) -> torch.Tensor:
    """The sorted indices a subset file names: each line a name as `subset_names` writes it, an
    absolute path under `root` (the data folder), or a bare file name (SimCLR's lists) when it is
    unique among the train images. Blank lines and lines starting with # are skipped; an unknown
    name is a one-line DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--subset-file {path} does not exist; give a file written by `simsiam eval finetune`")
    index = {n: i for i, n in enumerate(names)}
    by_base: dict[str, list[int]] = {}
    for row, n in enumerate(names):
        by_base.setdefault(os.path.basename(n), []).append(row)
    picked: set[int] = set()
    unknown: list[str] = []
    for line in path.read_text().splitlines():
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        found = index.get(name)
        if found is None and os.path.isabs(name) and root:
            found = index.get(os.path.relpath(name, root))
        if found is None and len(by_base.get(os.path.basename(name), [])) == 1:
            found = by_base[os.path.basename(name)][0]
        if found is None:
            unknown.append(name)
        else:
            picked.add(found)
    if unknown:
        raise DataError(
            f"{path}: {len(unknown)} of its images are not in this train split (e.g. {unknown[0]!r}); "
            "use the subset with the data it was made for"
        )
    if not picked:
        raise DataError(f"{path} names no image; give a file written by `simsiam eval finetune`")
    return torch.tensor(sorted(picked), dtype=torch.long)


def subset_digest(idx: torch.Tensor, names: list[str]) -> str:
    """SHA-256 of the subset's sorted names: equal digests, equal labelled images."""
    return hashlib.sha256("\n".join(sorted(names[i] for i in idx.tolist())).encode()).hexdigest()


def default_epochs(num_labeled: int, num_train: int) -> int:
    """SimCLR: 60 epochs on 1% of the labels, 30 on 10%."""
    return 60 if num_labeled <= 0.01 * num_train + 0.5 else 30


def finetune(
    backbone: nn.Module,
    train,
    test,
    subset: torch.Tensor,
    cfg: Config,
    *,
    epochs: int,
    batch_size: int = 4096,
    base_lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    crop_min: float = 0.08,
    seed: int = 0,
    bf16: bool = False,
    progress: bool = True,
    save: str | Path | None = None,
) -> FinetuneResult:
    """Fine-tune `backbone` (changed in place) with a linear head on `train`'s images `subset`; test
    top-1 on `test`. Batches of `batch_size` (the subset in one when smaller), lr = base_lr x
    batch_size / 256, half-cosine per step, SGD with Nesterov momentum. `save`: the fine-tuned
    classifier as safetensors (`save_classifier`)."""
    device = next(backbone.parameters()).device
    size, mean, std = cfg.image_size, cfg.mean, cfg.std
    before = fingerprint(backbone)
    if len(subset) < 2:
        raise ConfigError("fine-tuning needs at least 2 labelled images (BatchNorm); ask for more labels")
    dim = feature_dim(backbone, size)
    g = torch.Generator(device="cpu").manual_seed(seed)  # the head's init and the data order
    head = linear_head(dim, len(train.classes), g).to(device)
    crop = Augment(
        size, crop_scale=(crop_min, 1.0), hflip=cfg.hflip, jitter_p=0.0, gray_p=0.0, blur_p=0.0, mean=mean, std=std
    )
    views = torch.Generator(device=device).manual_seed(seed)  # the crops: the same for every backbone
    params = [*backbone.parameters(), *head.parameters()]
    for p in params:
        p.requires_grad_(True)
    lr = base_lr * batch_size / 256
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay)
    labels = train.labels.to(device)
    steps_per_epoch = len(batches(subset, batch_size))
    total, done = epochs * steps_per_epoch, 0
    backbone.train()
    t0 = time.perf_counter()
    for _ in Bar(range(epochs), desc="finetune", unit="epoch", disable=not progress, leave=False):
        order = subset[torch.randperm(len(subset), generator=g)]
        for idx in batches(order, batch_size):
            set_lr(opt, cosine_lr(lr, done / total))
            x = crop(train.take(idx).to(device), views)
            with autocast(device, bf16):
                logits = head(backbone(x).float())
            loss = F.cross_entropy(logits.float(), labels[idx.to(device)])
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"fine-tuning loss is not finite at step {done + 1}; lower --lr (lr x batch/256 sets the step)"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
    seconds = time.perf_counter() - t0
    backbone.eval()
    with torch.no_grad():
        test_feats = pooled_features(backbone, test, size, mean, std)
        scores = head(test_feats)
    optimizer = (
        f"SGD, Nesterov momentum {momentum:g}, batch {batch_size}"
        + (f" (all {len(subset)} images a step)" if batch_size > len(subset) else "")
        + f", lr {base_lr:g} x {batch_size}/256, cosine per step, wd {weight_decay:g}, {epochs} epochs ({done} steps), "
        f"RandomResizedCrop({crop_min:g}-1)" + (" + flip" if cfg.hflip else "")
    )
    if save is not None:
        save_classifier(Path(save), backbone, head, cfg, train.classes)
    return FinetuneResult(
        protocol="finetune",
        model_file=str(save) if save is not None else "",
        optimizer=optimizer,
        num_labeled=len(subset),
        num_train=len(train),
        num_test_images=len(test),
        epochs=epochs,
        steps=done,
        seconds=seconds,
        backbone_changed=fingerprint(backbone) != before,
        **_judged(scores, test.labels.to(device), train.classes, test_feats),
    )


def save_classifier(path: Path, backbone: nn.Module, head: nn.Linear, cfg: Config, classes: list[str]) -> None:
    """The fine-tuned classifier as safetensors: `backbone.*` (the keys `simsiam export` writes),
    `head.weight` and `head.bias`; the metadata says how to rebuild and feed it, and the class of
    each output (`classes`, JSON)."""
    import json

    from safetensors.torch import save

    from .checkpoint import write_atomic
    from .export import export_metadata

    state = {f"backbone.{k}": v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    state.update({f"head.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**export_metadata(backbone, cfg), "classes": json.dumps(classes)}
    write_atomic(path, save(state, metadata=meta))


def batches(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """`order` in batches of `batch_size`; a last batch of one image joins the one before (a
    BatchNorm in training mode needs two)."""
    parts = list(order.split(batch_size))
    if len(parts) > 1 and len(parts[-1]) == 1:
        parts[-2:] = [torch.cat(parts[-2:])]
    return parts


def scratch_like(cfg: Config, device, seed: int) -> nn.Module:
    """The run's architecture with fresh random weights (torch's default init, seeded)."""
    if cfg.arch == "custom":
        raise ConfigError("--from-scratch cannot rebuild a custom backbone (arch 'custom'); build it yourself")
    torch.manual_seed(seed)
    backbone, _ = build_backbone(cfg.arch, cfg.cifar_stem, cfg.width, image_size=cfg.image_size)
    return backbone.to(device)
