"""Checkpoints: atomic save, safe load, and plain parameter names whatever wraps the model.

A training checkpoint (RUN_DIR/checkpoint.pt) is a dict: epoch, model (state_dict with plain
keys), optimizer, generator (the run's data-order + augmentation RNG state), train_seconds,
knn_random_init, config, memory (the Sec. 5.2 target provider's state or None).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
import torch.nn as nn

from .errors import DataError, TrainingError

CHECKPOINT = "checkpoint.pt"


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel (`.module`) and torch.compile
    (`._orig_mod`) wrappers: where a method's hooks and attributes live."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model


def plain_keys(state: dict) -> dict:
    """A state_dict's keys as the bare model names them: leading `module.` (DDP) removed, and
    `_orig_mod.` (torch.compile, of the model or of any submodule) removed wherever it appears."""

    def plain(key: str) -> str:
        while key.startswith("module."):
            key = key[len("module.") :]
        return key.replace("_orig_mod.", "")

    return {plain(k): v for k, v in state.items()}


def model_state(model: nn.Module) -> dict:
    """The state_dict to store: plain keys, loadable into the bare model."""
    return plain_keys(unwrap(model).state_dict())


def save(path: Path, state: dict) -> None:
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


def load(path: str | Path, map_location: str | torch.device = "cpu"):
    """torch.load with weights_only=True: tensors and plain Python values only, so a crafted file
    cannot run code while it is read. Any failure is one DataError line naming the file."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise DataError(
            f"{path} holds objects other than tensors and plain values; refusing to load it (unpickling could "
            "run code). Load only checkpoints written by simsiam or the official SimSiam code"
        ) from None
    except Exception as e:  # noqa: BLE001 - truncated, not a zip, not torch: the same one-line answer
        raise DataError(
            f"cannot read checkpoint {path} ({type(e).__name__}); is it a complete torch checkpoint?"
        ) from None
