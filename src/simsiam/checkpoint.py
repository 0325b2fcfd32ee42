"""Checkpoints and the run directory's files: durable writes, verified checkpoints, safe loading,
plain parameter names whatever wraps the model, and the lock of a running `simsiam train`.

A training checkpoint is a dict: epoch, step (within the epoch; 0 at an epoch's end), order (the
epoch's data permutation when mid-epoch), model (state_dict with plain keys), optimizer,
generator (the run's data-order + augmentation RNG), rng (torch's CPU and CUDA generators),
train_seconds, knn_random_init, config, memory (the Sec. 5.2 target provider's state), metrics
(every finished epoch's metrics line) and partial (the unfinished epoch's sums).

RUN_DIR/checkpoint.pt is always the newest. The older ones are kept as checkpoint-<step>.pt
(`--keep-checkpoints`), and RUN_DIR/checkpoints.json records each file's size and SHA-256: a
truncated or corrupt newest checkpoint is detected on loading, reported, and the previous one used.
Every file is written to a temporary file in the same directory, flushed, fsynced and renamed,
so a crash or a full disk never leaves a torn file in place of a good one.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import IO

import torch
import torch.nn as nn

from .errors import DataError, TrainingError

CHECKPOINT = "checkpoint.pt"
MANIFEST = "checkpoints.json"
LOCK = ".lock"


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
    """torch.save(state) to `path`, durably (see `write_atomic`)."""
    write_atomic(path, lambda f: torch.save(state, f))


def write_atomic(path: Path, write) -> None:
    """`write(file)` into a temporary file beside `path`, flushed and fsynced, then renamed over
    `path`: a crash or a full disk never leaves a torn file, and the previous version stays until
    the new one is complete. `write` may also be bytes or text."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            if isinstance(write, str):
                f.write(write.encode())
            elif isinstance(write, bytes):
                f.write(write)
            else:
                write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        tmp.unlink(missing_ok=True)
        raise TrainingError(_cannot_write(path, e)) from None


def append_line(path: Path, line: str) -> None:
    """One line appended to a log (metrics.jsonl), a one-line error when it cannot be (the reader
    skips a torn last line, and a resume rewrites the file from the checkpoint)."""
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError as e:
        raise TrainingError(_cannot_write(Path(path), e)) from None


def _cannot_write(path: Path, e: Exception) -> str:
    why = getattr(e, "strerror", None) or str(e).splitlines()[0]
    kept = "; the previous checkpoint is intact" if path.name.startswith("checkpoint") else ""
    return f"could not write {path} ({why}); free disk space, fix the permissions or choose another --run-dir{kept}"


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


# --- the run directory's checkpoints --------------------------------------------------------


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checkpoint(run_dir: Path, state: dict, global_step: int, keep: int = 2) -> Path:
    """`state` as RUN_DIR/checkpoint.pt; the one it replaces becomes checkpoint-<its step>.pt, the
    manifest records every kept file's size and hash, and all but the `keep` newest are deleted."""
    run_dir = Path(run_dir)
    latest = run_dir / CHECKPOINT
    manifest = read_manifest(run_dir)
    tmp = run_dir / (CHECKPOINT + ".new")
    try:
        save(tmp, state)  # complete and fsynced before the current one moves
        entry = {
            "file": CHECKPOINT,
            "global_step": global_step,
            "epoch": state["epoch"],
            "step": state["step"],
            "size": tmp.stat().st_size,
            "sha256": sha256(tmp),
        }
        if latest.exists():
            older = [m for m in manifest if m["file"] == CHECKPOINT]
            step = older[0]["global_step"] if older else global_step - 1
            os.replace(latest, run_dir / f"checkpoint-{step:09d}.pt")
            for m in older:
                m["file"] = f"checkpoint-{step:09d}.pt"
        os.replace(tmp, latest)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise TrainingError(_cannot_write(latest, err)) from None
    kept = [entry, *[m for m in manifest if m["file"] != CHECKPOINT]][: max(1, keep)]
    for m in manifest:
        if m not in kept:
            (run_dir / m["file"]).unlink(missing_ok=True)
    write_atomic(run_dir / MANIFEST, json.dumps(kept, indent=1) + "\n")
    return latest


def read_manifest(run_dir: Path) -> list[dict]:
    """The manifest's entries, newest first ([] when there is none or it is unreadable)."""
    try:
        entries = json.loads((Path(run_dir) / MANIFEST).read_text())
        return sorted(entries, key=lambda e: -e["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def load_latest(run_dir: Path, map_location: str | torch.device = "cpu", warn=None) -> dict:
    """The newest checkpoint of a run directory that is complete: each candidate (checkpoint.pt,
    then the older kept ones, newest first) is checked against the manifest's size and hash and
    must load; a bad one is reported through `warn` and the next one tried."""
    run_dir = Path(run_dir)
    manifest = {e["file"]: e for e in read_manifest(run_dir)}
    candidates = [CHECKPOINT, *[f for f in manifest if f != CHECKPOINT]]
    problems = []
    for name in candidates:
        path = run_dir / name
        if not path.exists():
            continue
        entry = manifest.get(name)
        if entry and (path.stat().st_size != entry["size"] or sha256(path) != entry["sha256"]):
            problems.append(f"{path} does not match its recorded size and hash (torn or corrupt)")
        else:
            try:
                state = load(path, map_location)
            except DataError as e:
                problems.append(str(e))
            else:
                if problems and warn is not None:
                    warn(f"{'; '.join(problems)}; using {path} instead")
                return state
    raise DataError(
        f"no readable checkpoint in {run_dir}"
        + (f" ({'; '.join(problems)})" if problems else "")
        + "; start the run again without --resume"
    )


class RunLock:
    """An exclusive lock on a run directory for as long as a `simsiam train` writes it: a second
    one into the same directory refuses to start instead of interleaving (fcntl; no lock where the
    platform has none)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.file: IO[str] | None = None

    def __enter__(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # Windows: no lock
            return self
        try:
            f = open(self.path, "a+")  # noqa: SIM115 - held open (and locked) until __exit__
        except OSError as e:
            raise TrainingError(_cannot_write(self.path, e)) from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise TrainingError(
                f"{self.path.parent} is in use by another simsiam train ({holder}); wait for it to finish "
                "or choose another --run-dir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        self.file = f
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()  # releases the lock
            self.file = None
