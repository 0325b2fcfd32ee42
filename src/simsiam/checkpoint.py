"""Checkpoints and the run directory's files: durable writes, verified checkpoints that a crash at
any point cannot lose, safe loading, plain parameter names whatever wraps the model, and the lock
of a running `simsiam train`.

A training checkpoint is the dict of a `records.TrainingState` (its one definition: what each
entry holds, and the checks when one is read back).

On disk, every checkpoint is RUN_DIR/checkpoint-<global step>.pt, written completely (temporary
file, fsync, rename) before anything else changes; RUN_DIR/checkpoint.pt then names the newest (a
hard link, one atomic rename; a copy where the file system has no hard links), and
RUN_DIR/checkpoints.json records the `--keep-checkpoints` newest files with their size and SHA-256.
Only after that are the files that fell out of the window deleted. A kill between any two of
those steps leaves a directory that `load_latest` reads correctly: it trusts the disk, not the
manifest (files the manifest lists but that are gone are ignored; complete checkpoint files it
does not list yet are used), and every file it reads must match its recorded size and hash, load,
and hold a training state, else the next older one is used. Nothing a run directory holds may
name a file outside it: manifest entries are checkpoint file names, nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO

import torch
import torch.nn as nn

from .errors import DataError, TrainingError, UnsafeFile
from .records import TrainingState
from .runtime import hold_lock

CHECKPOINT = "checkpoint.pt"  # the newest, always
HEALTHY = "checkpoint-healthy.pt"  # --on-collapse recover: the last healthy epoch's (outside the rotation)
MANIFEST = "checkpoints.json"
LOCK = ".lock"
_NUMBERED = re.compile(r"checkpoint-(\d{9,})\.pt")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def numbered(global_step: int) -> str:
    """The file name of the checkpoint written after `global_step` steps."""
    return f"checkpoint-{global_step:09d}.pt"


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
    the new one is complete. `write` may also be bytes or text. The temporary file is created new
    (a link planted under its name is removed, never followed), and a link at `path` is replaced,
    not written through: nothing outside the directory is ever written."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        _remove(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            if isinstance(write, str):
                f.write(write.encode())
            elif isinstance(write, bytes):
                f.write(write)
            else:
                write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _sync_dir(path.parent)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        try:
            _remove(tmp)
        except OSError:
            pass
        raise TrainingError(cannot_write(path, e)) from None


def append_line(path: Path, line: str) -> None:
    """One line appended to a log (metrics.jsonl), a one-line error when it cannot be (the reader
    skips a torn last line, and a resume rewrites the file from the checkpoint)."""
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError as e:
        raise TrainingError(cannot_write(Path(path), e)) from None


def cannot_write(path: Path, e: Exception) -> str:
    """The one-line message for a file that could not be written (full disk, permissions)."""
    why = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0]
    kept = "; the previous checkpoint is intact" if path.name.startswith("checkpoint") else ""
    return f"could not write {path} ({why}); free disk space, fix the permissions or choose another --run-dir{kept}"


def _remove(path: Path) -> None:
    """Unlink `path` if it is there (a link is removed, not what it points to)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _sync_dir(folder: Path) -> None:
    """fsync a directory, so that the renames in it survive a power loss (where the platform can)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path: str | Path, map_location: str | torch.device = "cpu"):
    """torch.load with weights_only=True: tensors and plain Python values only, so a crafted file
    cannot run code while it is read. Any failure is one DataError line naming the file."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise UnsafeFile(
            f"{path} holds objects other than tensors and plain values; refusing to load it (unpickling could "
            "run code). Load only checkpoints written by simsiam or the official SimSiam code"
        ) from None
    except Exception as e:  # noqa: BLE001 - truncated, not a zip, not torch: the same one-line answer
        raise DataError(
            f"cannot read checkpoint {path} ({type(e).__name__}); is it a complete torch checkpoint?"
        ) from None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- the run directory's checkpoints --------------------------------------------------------

Warn = Callable[[str], None] | None


def read_manifest(run_dir: Path, warn: Warn = None) -> list[dict]:
    """The manifest's well-formed entries, newest first ([] when there is none). An unreadable or
    malformed manifest, and each entry that is not a record of a checkpoint file in this
    directory (a name such as `../../x`, a step that is not a count, a hash that is not one), is
    reported through `warn` and left out: the files on disk are used instead (`checkpoints`)."""
    path = Path(run_dir) / MANIFEST
    try:
        entries = json.loads(path.read_bytes())
    except FileNotFoundError:
        return []
    except (OSError, ValueError, RecursionError) as e:
        if warn:
            warn(f"{path} is unreadable ({type(e).__name__}); using the checkpoint files on disk instead")
        return []
    if not isinstance(entries, list):
        entries = [entries]
    good = [e for e in entries if _well_formed(e)]
    if len(good) < len(entries) and warn:
        odd = next(e for e in entries if not _well_formed(e))
        warn(
            f"{path}: ignored {len(entries) - len(good)} entry(ies) that do not describe a checkpoint file "
            f"of this run directory, e.g. {json.dumps(odd)[:80]}"
        )
    return sorted(good, key=lambda e: -e["global_step"])


def _well_formed(e) -> bool:
    def count(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    return (
        isinstance(e, dict)
        and isinstance(e.get("file"), str)
        and all(count(e.get(k)) for k in ("global_step", "epoch", "step", "size"))
        and (e["file"] == CHECKPOINT or e["file"] == numbered(e["global_step"]))
        and isinstance(e.get("sha256"), str)
        and _SHA256.fullmatch(e["sha256"]) is not None
    )


def checkpoints(run_dir: Path, warn: Warn = None) -> list[dict]:
    """The checkpoints of a run directory as they are on disk, newest first: the manifest's
    entries whose file exists (with the size and hash to check it against), then the complete
    checkpoint files it does not list yet (written just before a crash; no hash), and the bare
    checkpoint.pt of a run from before numbered files. Only regular files inside the directory."""
    run_dir = Path(run_dir)
    listed = [e for e in read_manifest(run_dir, warn) if _inside(run_dir, e["file"])]
    names = {e["file"] for e in listed}
    try:
        on_disk = sorted(p.name for p in run_dir.iterdir() if _NUMBERED.fullmatch(p.name))
    except OSError:
        on_disk = []
    unlisted = [
        {"file": name, "global_step": int(_NUMBERED.fullmatch(name)[1])}  # type: ignore[index]
        for name in on_disk
        if name not in names and _inside(run_dir, name)
    ]
    found = sorted(listed + unlisted, key=lambda e: -e["global_step"])
    if not any(_NUMBERED.fullmatch(e["file"]) for e in found) and _inside(run_dir, CHECKPOINT):
        if not any(e["file"] == CHECKPOINT for e in found):  # a run from before numbered files, or
            found.append({"file": CHECKPOINT, "global_step": -1})  # every numbered file deleted by hand
    return found


def _inside(run_dir: Path, name: str) -> bool:
    """`name` is a regular file of `run_dir` itself (a link that leads elsewhere is not)."""
    path = run_dir / name
    real, home = os.path.realpath(path), os.path.realpath(run_dir)
    return os.path.dirname(real) == home and os.path.isfile(real)


def has_checkpoint(run_dir: Path) -> bool:
    """Whether the run directory holds any checkpoint file (readable or not)."""
    return bool(checkpoints(run_dir))


def newest(run_dir: Path) -> str:
    """The newest checkpoint recorded, in words: what an error says is kept."""
    listed = read_manifest(run_dir)
    if not listed:
        return f"{Path(run_dir) / CHECKPOINT} is kept" if has_checkpoint(run_dir) else "no checkpoint was written yet"
    e = listed[0]
    where = f"epoch {e['epoch'] + 1}, step {e['step']}" if e["step"] else f"the end of epoch {e['epoch']}"
    return f"the checkpoint of {where} ({Path(run_dir) / CHECKPOINT}) is kept"


def write_checkpoint(run_dir: Path, state: dict, global_step: int, keep: int = 2) -> Path:
    """`state` as RUN_DIR/checkpoint-<global_step>.pt, then RUN_DIR/checkpoint.pt names it, then the
    manifest records the `keep` newest checkpoints, then the older ones are deleted (in that order:
    see the module's docstring). Returns RUN_DIR/checkpoint.pt.

    What it deletes is only what it just retired: checkpoint files of this run older than the
    `keep` newest, and those of steps at or past `global_step` that a resume went back before
    (they could not be read). A bare checkpoint.pt of a run from before numbered files is first
    given its numbered name, so it is kept like the others."""
    run_dir = Path(run_dir)
    found = checkpoints(run_dir)
    name = numbered(global_step)
    path = run_dir / name
    try:
        found = [_numbered_legacy(run_dir, e, global_step) for e in found]
        save(path, state)  # 1. complete and durable under its own name
        entry = {
            "file": name,
            "global_step": global_step,
            "epoch": state["epoch"],
            "step": state["step"],
            "size": path.stat().st_size,
            "sha256": sha256(path),
        }
        _point_latest(run_dir, path)  # 2. checkpoint.pt names it
        older = [e for e in found if e["global_step"] < global_step and e["file"] != name]
        kept = [entry, *[_recorded(run_dir, e) for e in older[: max(1, keep) - 1]]]
        write_atomic(run_dir / MANIFEST, json.dumps(kept, indent=1) + "\n")  # 3. the record
        keep_files = {e["file"] for e in kept}
        for e in found:  # 4. only then, what fell out of the window
            if e["file"] not in keep_files and _NUMBERED.fullmatch(e["file"]):
                _remove(run_dir / e["file"])
        for p in run_dir.glob("checkpoint-*.pt.tmp"):  # half-written by a process killed here before
            if _NUMBERED.fullmatch(p.name[: -len(".tmp")]):
                _remove(p)
    except OSError as err:
        raise TrainingError(cannot_write(run_dir / CHECKPOINT, err)) from None
    return run_dir / CHECKPOINT


def _numbered_legacy(run_dir: Path, e: dict, global_step: int) -> dict:
    """A checkpoint.pt that is a checkpoint of its own (a run from before numbered files) gets its
    numbered name beside it (a hard link, else a copy) before checkpoint.pt is replaced."""
    if e["file"] != CHECKPOINT:
        return e
    step = e["global_step"] if e["global_step"] >= 0 else global_step - 1
    target = run_dir / numbered(step)
    if not target.exists():
        _link_or_copy(run_dir / CHECKPOINT, target)
    return {**e, "file": target.name, "global_step": step}


def _point_latest(run_dir: Path, path: Path) -> None:
    """RUN_DIR/checkpoint.pt becomes `path` in one rename: it is never missing."""
    tmp = run_dir / (CHECKPOINT + ".tmp")
    _link_or_copy(path, tmp)
    os.replace(tmp, run_dir / CHECKPOINT)
    _sync_dir(run_dir)


def mark_healthy(run_dir: Path, source: Path | None = None, state: dict | None = None) -> None:
    """RUN_DIR/checkpoint-healthy.pt becomes `source` (a checkpoint just written: a hard link, one
    atomic rename) or a new file of `state`; the rotation of numbered checkpoints never deletes it."""
    target = Path(run_dir) / HEALTHY
    try:
        if source is None:
            save(target, state or {})
            return
        tmp = target.with_name(HEALTHY + ".tmp")
        _link_or_copy(source, tmp)
        os.replace(tmp, target)
        _sync_dir(Path(run_dir))
    except OSError as err:
        raise TrainingError(cannot_write(target, err)) from None


def _link_or_copy(source: Path, target: Path) -> None:
    _remove(target)
    try:
        os.link(source, target)
    except OSError:  # no hard links here (FAT, some network and FUSE file systems): a durable copy
        shutil.copyfile(source, target, follow_symlinks=False)
        with open(target, "rb+") as f:
            os.fsync(f.fileno())


def _recorded(run_dir: Path, e: dict) -> dict:
    """A manifest entry for `e`: as recorded, or measured now for a file the manifest did not list."""
    if "sha256" in e:
        return e
    path = run_dir / e["file"]
    size, digest = path.stat().st_size, sha256(path)
    return {**e, "epoch": e.get("epoch", 0), "step": e.get("step", 0), "size": size, "sha256": digest}


def load_latest(run_dir: Path, map_location: str | torch.device = "cpu", warn: Warn = None) -> TrainingState:
    """The newest complete checkpoint of a run directory (see `checkpoints`): it must match its
    recorded size and hash, load, and hold a training state (`TrainingState.from_dict`); each one
    that does not is reported through `warn` and the next older one tried."""
    run_dir = Path(run_dir)
    problems = []
    for e in checkpoints(run_dir, warn):
        path = run_dir / e["file"]
        try:
            if "sha256" in e and (path.stat().st_size != e["size"] or sha256(path) != e["sha256"]):
                problems.append(f"{path} does not match its recorded size and hash (torn or corrupt)")
                continue
            state = TrainingState.from_dict(load(path, map_location), path)
        except UnsafeFile:
            raise  # a crafted file: stop here, do not go looking for another
        except (DataError, OSError) as err:
            problems.append(str(err))
            continue
        if problems and warn is not None:
            warn(f"{'; '.join(problems)}; using {path} instead")
        return state
    raise DataError(
        f"no readable checkpoint in {run_dir}"
        + (f" ({'; '.join(problems)})" if problems else "")
        + "; start the run again in another --run-dir (or delete this one's checkpoint files)"
    )


class RunLock:
    """An exclusive lock on a run directory for as long as a `simsiam train` writes it: a second
    one into the same directory refuses to start instead of interleaving (fcntl; no lock where the
    platform has none). The lock file is never followed if it is a link, and DataLoader workers
    drop their inherited copy of it (`runtime.drop_inherited_locks`), so the lock ends with the
    trainer."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.file: IO[str] | None = None

    def __enter__(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # Windows: no lock
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except OSError as e:
            raise TrainingError(cannot_write(self.path, e)) from None
        f = os.fdopen(fd, "r+", errors="replace")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read(100).strip() or "another process"
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
        hold_lock(f.fileno())
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            hold_lock(self.file.fileno(), held=False)
            self.file.close()  # releases the lock
            self.file = None
