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
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoint import write_atomic
from ..config import Config
from ..errors import ConfigError, DataError, TrainingError
from ..records import Summary
from ..runs import read_summary


@dataclass(frozen=True)
class Scale:
    """A base preset and the overrides every run of an experiment at this scale gets."""

    preset: str
    overrides: dict


@dataclass
class Variant:
    label: str  # what the tables show
    overrides: dict = field(default_factory=dict)
    paper: float | None = None  # the paper's number for this variant (ImageNet linear top-1, 100 epochs)
    epochs_x: int = 1  # this variant trains epochs_x times the scale's epochs (a collapse that needs the steps)
    key: str = ""  # what checks and code refer to it by (default: the label's slug)

    def __post_init__(self) -> None:
        self.key = self.key or slug(self.label)


def overrides(
    scale: str,
    data_dir: str | None = None,
    dataset: str | None = None,
    epochs: int | None = None,
    device: str | None = None,
    sets: Sequence[str] = (),
) -> dict:
    """The config overrides an experiment applies to every run, checked before anything trains:
    --data-dir found (ImageNet's at the paper's scale), --set KEY=VALUE parsed (JSON values, else
    the bare string: --set arch=resnet34)."""
    from ..data.datasets import require_folder

    if scale == "paper" and not data_dir and dataset in (None, "folder"):
        raise ConfigError("--scale paper trains on ImageNet: give --data-dir DIR (train/ and val/ class folders)")
    if data_dir:
        require_folder(data_dir, "give --data-dir a folder of images (sub-folders = classes) or a dataset copy")
    common = {
        k: v
        for k, v in [
            ("data_dir", data_dir),
            ("dataset", dataset or ("folder" if data_dir else None)),
            ("epochs", epochs),
            ("device", device),
        ]
        if v is not None
    }
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item}: write KEY=VALUE, e.g. --set width=0.5")
        try:
            common[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            common[key.replace("-", "_")] = value
    return common


def slug(label: str) -> str:
    """A label as a file and key name: "asym. 2x" -> "asym-2x"."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


Job = tuple[Variant, Config, Path]


def run_variants(
    jobs: list[Job],
    index_path: Path,
    log: Callable[[str], None] = print,
    name: str = "",
    runner: Callable[[Config], Summary] | None = None,
    fresh: bool = False,
) -> list[dict]:
    """Train each job unless a run of the same configuration finished under the index with the same
    simsiam source code (then its summary is reused); `fresh` retrains regardless. Each row is the
    run's summary plus variant, seed, paper and run_dir. `runner(cfg) -> summary` defaults to
    `simsiam.engine.train`."""
    from ..engine import train

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
        finished = read_summary(run_dir)
        if finished is not None and not fresh and entry.get("code") == code:
            summary = finished
            log(f"{name} / {v.label} (seed {cfg.seed}): same configuration and code already trained in {run_dir}")
        else:
            why = ("--fresh" if fresh else "trained by other simsiam code") if finished is not None else ""
            log(f"{name} / {v.label} (seed {cfg.seed}) -> {run_dir}" + (f" (again: {why})" if why else ""))
            if run_dir.exists():  # interrupted, stale or --fresh: start it again from scratch
                _clear(run_dir)
            summary = run(cfg.replace(run_dir=str(run_dir)))
            index_path.parent.mkdir(parents=True, exist_ok=True)
            index = json.loads(index_path.read_text()) if index_path.exists() else {}
            index[key] = {"run_dir": str(run_dir), "code": code}
            index_path.write_text(json.dumps(index, indent=1) + "\n")
        row = {**summary.to_json(), "variant": v.label, "key": v.key, "seed": cfg.seed, "paper": v.paper}
        rows.append({**row, "run_dir": str(run_dir)})
    return rows


def fit(cfg: Config) -> Summary:
    """`simsiam.engine.fit` (the experiments' one door to the engine): a run, no report."""
    from ..engine import fit as engine_fit

    return engine_fit(cfg)


def train_in_subprocess(cfg: Config) -> Summary:
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
    summary = read_summary(run_dir)
    if summary is None:
        raise TrainingError(f"training {cfg.method} wrote no summary in {run_dir}; its output is above")
    if summary.peak_memory_of == "process RSS":
        summary.peak_memory_mb = usage.ru_maxrss / 1024  # KiB on Linux
    write_atomic(run_dir / "summary.json", json.dumps(summary.to_json(), indent=2) + "\n")
    return summary


def config_key(cfg: Config) -> str:
    """Identity of a training configuration (everything but where it is written)."""
    return hashlib.sha256(json.dumps(cfg.replace(run_dir=None).to_dict(), sort_keys=True).encode()).hexdigest()[:16]


# Modules that only build configurations (keyed in full by config_key) or render tables: a change
# to a table or a claim's check does not retrain finished runs.
NOT_TRAINING = {
    "experiments/reproduce.py",
    "experiments/compare.py",
    "experiments/tables.py",
    "experiments/plots.py",
    "experiments/tune.py",
}


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
    from ..evaluation import evaluate

    cached = run_dir / "eval_linear_fast.json"
    if cached.exists():
        return json.loads(cached.read_text())["top1"]
    try:
        return evaluate(run_dir, "linear", fast=True, device=device, progress=False).top1
    except DataError:
        return None
