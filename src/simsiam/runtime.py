"""Where and how a run executes: device, precision, logging, run metadata, peak memory.

Shared by training, evaluation, export and the experiments; nothing here knows about a method.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from tqdm import tqdm

from .errors import TrainingError


def log(msg: str) -> None:
    """A line on stdout that does not break a progress bar."""
    tqdm.write(msg, file=sys.stdout)
    sys.stdout.flush()


def resolve_device(name: str) -> torch.device:
    """`auto` -> the GPU when there is one, else the CPU; a named GPU that is not there is an error."""
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


def autocast(device: torch.device, bf16: bool) -> AbstractContextManager:
    """The forward passes' precision: bf16 autocast when `bf16`, else a no-op."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def seed_everything(seed: int) -> None:
    """Seed torch's global generator (weight initialisation). Data order and augmentation draw from
    the run's own `torch.Generator` (seeded in `train.setup`), so evaluation in between never
    shifts them; nothing in simsiam draws from Python's or NumPy's global generators."""
    torch.manual_seed(seed)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


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


def git_sha() -> str | None:
    """The commit of the simsiam sources, when they are a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_metadata(device: torch.device, bf16: bool) -> dict:
    """RUN_DIR/run.json: what produced the run."""
    return {
        "git_sha": git_sha(),
        "command": sys.argv,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "bf16": bf16,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
