"""What every benchmark shares: the machine line (CPU model, AMX or not, cores, GPU, versions),
a timed rate, and writing one script's section of benchmarks/RESULTS.md."""

from __future__ import annotations

import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from simsiam.runtime import commit, has_amx, machine  # noqa: F401 (the benchmarks import them from here)

RESULTS = Path(__file__).with_name("RESULTS.md")
CACHE = Path(__file__).with_name(".cache")  # git-ignored: the extracted CIFAR-10 folder
TARBALL = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def cifar_folder(tarball: Path = TARBALL) -> Path:
    """CIFAR-10 as train/ and test/ class folders, extracted once from ../shared's tarball into CACHE."""
    root = CACHE / "cifar10"
    if not (root / ".complete").exists():
        if not tarball.exists():
            raise SystemExit(f"CIFAR-10 tarball not found at {tarball}; give --data")
        CACHE.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as tar:
            tar.extractall(CACHE, filter="data")
        (root / ".complete").write_text("")
    return root


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
