"""One runner for every experiment: train each (variant, config, run_dir) job unless the same
configuration already finished with the same simsiam source code, and return one row per job.

A finished job is recorded in OUT/index.json (config key -> run directory, code fingerprint), so
an interrupted experiment continues where it stopped, and a configuration shared by several
experiments (the default SimSiam of most ablation groups) trains once. Changed code, or `fresh`,
trains again. A job runs in this process, or with `isolate=True` in a `simsiam train` child
process of its own (so its peak memory is its own).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config
from ..errors import DataError, TrainingError


@dataclass(frozen=True)
class Scale:
    """A base preset and the overrides every run of an experiment at this scale gets."""

    preset: str
    overrides: dict


@dataclass
class Variant:
    label: str
    overrides: dict = field(default_factory=dict)
    paper: float | None = None  # the paper's number for this variant (ImageNet linear top-1, 100 epochs)
    epochs_x: int = 1  # this variant trains epochs_x times the scale's epochs (a collapse that needs the steps)


Job = tuple[Variant, Config, Path]


def run_variants(
    jobs: list[Job],
    index_path: Path,
    log: Callable[[str], None] = print,
    name: str = "",
    runner: Callable[[Config], dict] | None = None,
    fresh: bool = False,
) -> list[dict]:
    """Train each job unless a run of the same configuration finished under the index with the same
    simsiam source code (then its summary is reused); `fresh` retrains regardless. Each row is the
    run's summary plus variant, seed, paper and run_dir. `runner(cfg) -> summary` defaults to
    `simsiam.train.train`."""
    from ..train import train

    run = runner or train
    code = code_fingerprint()
    rows = []
    for v, cfg, run_dir in jobs:
        index = json.loads(index_path.read_text()) if index_path.exists() else {}
        key = config_key(cfg)
        entry = index.get(key) or {}
        if isinstance(entry, str):  # index written before the code fingerprint was recorded
            entry = {"run_dir": entry, "code": None}
        run_dir = Path(entry.get("run_dir") or run_dir)
        done = run_dir / "summary.json"
        if done.exists() and not fresh and entry.get("code") == code:
            summary = json.loads(done.read_text())
            log(f"{name} / {v.label} (seed {cfg.seed}): same configuration and code already trained in {run_dir}")
        else:
            why = ("--fresh" if fresh else "trained by other simsiam code") if done.exists() else ""
            log(f"{name} / {v.label} (seed {cfg.seed}) -> {run_dir}" + (f" (again: {why})" if why else ""))
            if run_dir.exists():  # interrupted, stale or --fresh: start it again from scratch
                _clear(run_dir)
            summary = run(cfg.replace(run_dir=str(run_dir)))
            index_path.parent.mkdir(parents=True, exist_ok=True)
            index = json.loads(index_path.read_text()) if index_path.exists() else {}
            index[key] = {"run_dir": str(run_dir), "code": code}
            index_path.write_text(json.dumps(index, indent=1) + "\n")
        rows.append({**summary, "variant": v.label, "seed": cfg.seed, "paper": v.paper, "run_dir": str(run_dir)})
    return rows


def train_in_subprocess(cfg: Config) -> dict:
    """`simsiam train` in a child process: the child's peak memory is this run's alone."""
    run_dir = Path(cfg.run_dir or "")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir.with_name(run_dir.name + ".config.json")
    cfg_path.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    child = subprocess.Popen([sys.executable, "-m", "simsiam", "train", "--config", str(cfg_path)])
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise TrainingError(
            f"training {cfg.method} failed (exit {child.returncode}); its output is above, its run directory {run_dir}"
        )
    summary = json.loads((run_dir / "summary.json").read_text())
    if summary.get("peak_memory_of") == "process RSS":
        summary["peak_memory_mb"] = usage.ru_maxrss / 1024  # KiB on Linux
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def config_key(cfg: Config) -> str:
    """Identity of a training configuration (everything but where it is written)."""
    return hashlib.sha256(json.dumps(cfg.replace(run_dir=None).to_dict(), sort_keys=True).encode()).hexdigest()[:16]


# Modules that only build configurations (keyed in full by config_key) or render tables: a change
# to a table or a claim's check does not retrain finished runs.
NOT_TRAINING = {"experiments/reproduce.py", "experiments/compare.py", "experiments/tables.py", "experiments/plots.py"}


def code_fingerprint() -> str:
    """Hash of the installed simsiam sources that train and evaluate: a finished run is reused only
    by the code that made it."""
    h = hashlib.sha256()
    for f, name in source_files():
        if name not in NOT_TRAINING:
            h.update(name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def source_files() -> list[tuple[Path, str]]:
    """Every .py file of the simsiam package, with its path inside the package."""
    root = Path(__file__).parents[1]
    return [(f, f.relative_to(root).as_posix()) for f in sorted(root.rglob("*.py"))]


def _clear(run_dir: Path) -> None:
    for p in sorted(run_dir.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()


def linear_fast(run_dir: Path, device: str = "auto") -> float | None:
    """The fast linear probe's top-1 of a finished run (cached in RUN_DIR/eval_linear_fast.json);
    None without labelled images."""
    from ..evaluate import evaluate

    cached = run_dir / "eval_linear_fast.json"
    if cached.exists():
        return json.loads(cached.read_text())["top1"]
    try:
        return evaluate(run_dir, "linear", fast=True, device=device, progress=False)["top1"]
    except DataError:
        return None
