"""Where and how a run executes: device, precision, the process group and this process's rank,
seeding, logging (rank 0 only), run metadata, peak memory.

Shared by training, evaluation, export and the experiments; nothing here knows about a method.
One process by default; under `torchrun` (WORLD_SIZE > 1) `init_distributed` joins its process
group: NCCL when the processes have GPUs, gloo on CPUs.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from tqdm import tqdm

from .errors import ConfigError
from .parallel import is_main, rank_and_world

_HELD_LOCKS: set[int] = set()  # file descriptors of the run-directory locks this process holds


def hold_lock(fd: int, held: bool = True) -> None:
    """Record (or forget) a lock's descriptor, for `drop_inherited_locks`."""
    (_HELD_LOCKS.add if held else _HELD_LOCKS.discard)(fd)


def drop_inherited_locks(worker_id: int = 0) -> None:
    """DataLoader's `worker_init_fn`: a forked worker closes the run lock's descriptor it inherited.
    A flock lives as long as any descriptor of it, so a worker that outlives a killed trainer would
    otherwise keep the run directory locked."""
    for fd in list(_HELD_LOCKS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCKS.clear()


class Bar(tqdm):
    """tqdm without its monitor thread: a thread of the trainer that holds a lock when a DataLoader
    worker is forked leaves the worker a copy of that lock that nobody releases."""

    monitor_interval = 0


def log(msg: str) -> None:
    """A line on stdout that does not break a progress bar; rank 0 only."""
    if is_main():
        tqdm.write(msg, file=sys.stdout)
        sys.stdout.flush()


def resolve_device(name: str | torch.device) -> torch.device:
    """`auto` -> the GPU when there is one (this process's under torchrun), else the CPU; a name
    that is no device (`options.DEVICE`), or a device that is not there, is a one-line ConfigError.
    A torch.device is taken as it is (library functions accept either)."""
    from .options import DEVICE, check

    if isinstance(name, torch.device):
        return name
    check("--device", name, DEVICE)
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", torch.cuda.current_device()) if rank_and_world()[1] > 1 else torch.device("cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} asked for, but no CUDA GPU is visible; use --device cpu")
    if name.startswith("cuda:") and int(name[5:]) >= (n := torch.cuda.device_count()):
        raise ConfigError(f"--device {name}: only {n} CUDA GPUs are visible (cuda:0 to cuda:{n - 1})")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps asked for, but this machine has no Apple GPU (MPS); use --device cpu")
    return torch.device(name)


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast when asked, and by default (`auto`) on GPUs with bf16. Never by default on a
    CPU: without AMX it is emulated (~20x slower), and with AMX the oneDNN kernels of torch 2.14
    gave NaN weight gradients at random in small convolutions (design notes); `--precision bf16`
    still turns it on."""
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast(device: torch.device, bf16: bool) -> AbstractContextManager:
    """The forward passes' precision: bf16 autocast when `bf16`, else a no-op."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def seed_everything(seed: int) -> None:
    """Seed torch's global generator (weight initialisation). Data order and augmentation draw from
    the run's own `torch.Generator` (seeded in `train.setup`), so evaluation in between never
    shifts them; nothing in simsiam draws from Python's or NumPy's global generators."""
    torch.manual_seed(seed)


class StopSignals:
    """While inside: SIGINT (Ctrl-C) and SIGTERM (what a scheduler sends before a pre-emption) only
    set `received`; the training loop then writes a checkpoint at the next step boundary and stops.
    A second SIGINT raises KeyboardInterrupt at once, a second SIGTERM terminates. Outside the
    main thread (or where signals are not available) nothing is installed."""

    def __init__(self) -> None:
        self.received: str | None = None
        self.previous: dict = {}

    def __enter__(self) -> StopSignals:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        import signal

        self.received = signal.Signals(signum).name
        log(f"{self.received}: writing a checkpoint at the next step, then stopping (again to stop at once)")
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def __exit__(self, *exc) -> None:
        import signal

        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def resident_memory_mb() -> float | None:
    """This process's resident memory now (Linux), for the metrics: it must not grow epoch by epoch."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


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


def _git(*args: str) -> str:
    """`git ARGS` run in the simsiam sources: its output, "" when git or a checkout is missing."""
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def git_sha() -> str | None:
    """The commit of the simsiam sources, when they are a git checkout."""
    return _git("rev-parse", "HEAD") or None


def has_amx() -> bool:
    """The CPU has AMX-BF16 matrix units (bf16 is then fast on it; elsewhere ~20x slower than fp32)."""
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def machine() -> str:
    """One line for a recorded figure: CPU model, AMX or not, cores, GPU, versions."""
    import re

    import torchvision

    cpu = platform.processor() or platform.machine()
    try:
        found = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (
        f"{cpu} ({'AMX-BF16' if has_amx() else 'no AMX'}), {cores} cores usable ({torch.get_num_threads()} torch "
        f"threads){gpu}; torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"Python {platform.python_version()}"
    )


def commit() -> str:
    """The simsiam commit a figure comes from, marked when the checkout has uncommitted changes."""

    sha = _git("rev-parse", "--short", "HEAD")
    if not sha:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"simsiam {version('simsiam')} (not a git checkout)"
        except PackageNotFoundError:
            return "unknown commit"
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return f"commit {sha}" + (" + uncommitted changes" if dirty else "")


def run_metadata(device: torch.device, bf16: bool) -> dict:
    """RUN_DIR/run.json: what produced the run."""
    return {
        "world_size": rank_and_world()[1],
        "git_sha": git_sha(),
        "command": sys.argv,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "bf16": bf16,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
