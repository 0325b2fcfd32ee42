"""What every benchmark shares: the machine line (CPU model, AMX or not, cores, GPU, versions),
a timed rate, and writing one script's section of benchmarks/RESULTS.md."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

RESULTS = Path(__file__).with_name("RESULTS.md")


def has_amx() -> bool:
    """The CPU has AMX-BF16 matrix units (bf16 is then fast on it; elsewhere ~20x slower than fp32)."""
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()).group(1).strip()
    except (OSError, AttributeError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (
        f"{cpu} ({'AMX-BF16' if has_amx() else 'no AMX'}), {cores} cores usable ({torch.get_num_threads()} torch "
        f"threads){gpu}; torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"Python {platform.python_version()}"
    )


def commit() -> str:
    """The simsiam commit the numbers come from (marked when the working tree has changes)."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout
    except OSError:
        return "unknown commit"
    return f"commit {sha.strip() or 'unknown'}" + (" + uncommitted changes" if dirty.strip() else "")


def rate(step: Callable[[], int], seconds: float, warmup: int) -> float:
    """Items per second of `step()` (which returns the items it processed) over `seconds`, after
    `warmup` untimed calls; a CUDA step is synchronised before the clock is read."""
    for _ in range(warmup):
        step()
    sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += step()
    sync()
    return n / (time.perf_counter() - t0)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def write_section(script: str, section: str) -> None:
    """Replace `script`'s section of RESULTS.md (between its begin/end markers), or append it."""
    begin, end = f"<!-- benchmarks/{script}: begin -->", f"<!-- benchmarks/{script}: end -->"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    block = f"{begin}\n{section.rstrip()}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)
