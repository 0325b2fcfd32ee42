"""Shared fixtures. CIFAR-10 comes from ../shared (CI has it); tests that need it skip without it."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import NamedTuple

import pytest

CIFAR_TAR = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"

# The suite's expectations are the CPU's (fp32, deterministic kernels: bit-exact resumes, fixed
# accuracy bars). On a GPU machine `--device auto` would pick CUDA with bf16 and nondeterministic
# kernels, and 6 tests failed there (an H200, 2026-12-01). Set before torch first looks for CUDA,
# and inherited by the CLIs and torchrun jobs the tests start. SIMSIAM_TEST_GPU=1 keeps the GPUs.
if os.environ.get("SIMSIAM_TEST_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""


def extract_cifar_slice(dest: Path, per_class_train: int, per_class_test: int) -> Path:
    """Extract the first N images of every class of each split into dest/cifar10/{train,test}."""
    limits = {"train": per_class_train, "test": per_class_test}
    with tarfile.open(CIFAR_TAR, "r:gz") as tar:
        for m in tar:
            parts = Path(m.name).parts  # cifar10/<split>/<class>/NNNN.jpg
            if m.isfile() and len(parts) == 4 and parts[1] in limits and int(Path(parts[3]).stem) < limits[parts[1]]:
                tar.extract(m, dest, filter="data")
    return dest / "cifar10"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Tests (and the CLIs they start) keep their decode caches out of the user's ~/.cache."""
    monkeypatch.setenv("SIMSIAM_CACHE", str(tmp_path_factory.getbasetemp() / "simsiam-cache"))


@pytest.fixture(scope="session")
def cifar_slice(tmp_path_factory) -> Path:
    if not CIFAR_TAR.exists():
        pytest.skip(f"CIFAR-10 tarball not found at {CIFAR_TAR} (it lives in ../shared beside the repo)")
    return extract_cifar_slice(tmp_path_factory.mktemp("cifar"), per_class_train=100, per_class_test=20)


def make_folder(root, classes=("red", "blue"), n=24, size=20):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 80, (size, size + 4, 3), dtype=np.uint8)
            arr[..., c] += 150  # a colour per class
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root


def pattern_folder(root, n: int, seed: int = 0):
    """n distinct 32x32 images: random 6x6 black-and-white grids, upscaled, as PNG files."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a = (rng.random((6, 6)) > 0.5).astype(np.uint8) * 255
        Image.fromarray(a).resize((32, 32), Image.Resampling.BILINEAR).convert("RGB").save(root / f"{seed}-{i:04d}.png")
    return root


# --- the tiny run every test that trains shares --------------------------------------------------

TINY_OPTIONS = dict(
    width=0.125,  # CIFAR ResNet-18 at 1/8 width: 64-d features
    dim=64,
    pred_dim=16,
    proj_hidden=64,
    subset=128,  # 2 steps of 64 per epoch
    batch_size=64,
    epochs=2,
    knn_every=0,
    knn_random_init=False,
    report=False,
)
"""A digits run that trains in about a second on a CPU: no kNN, no report (ask for them)."""


def tiny_config(run_dir, preset: str = "digits", **overrides):
    """The tiny run as a Config (public API: `simsiam.from_preset`); overrides win."""
    from simsiam import from_preset

    return from_preset(preset, **{**TINY_OPTIONS, "run_dir": str(run_dir), **overrides})


def flags(options: dict) -> list[str]:
    """Config options as command-line flags: {"batch_size": 64, "report": False} ->
    ["--batch-size", "64", "--no-report"]."""
    out: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else flag.replace("--", "--no-", 1))
        else:
            out += [flag, *(str(v) for v in (value if isinstance(value, (list, tuple)) else [value]))]
    return out


TINY = flags(TINY_OPTIONS)  # the same run on the command line: `simsiam train *TINY --run-dir DIR`


# --- the command line, in this process --------------------------------------------------------


class Result(NamedTuple):
    """What a `simsiam` command did: as subprocess.CompletedProcess has it."""

    returncode: int
    stdout: str
    stderr: str


def simsiam(capsys, *args: str) -> Result:
    """`simsiam ARGS` through `simsiam.cli.main` in this process (seconds faster than a new Python
    that imports torch); argparse's exits (usage errors, --help) give their code."""
    from simsiam.cli import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return Result(code, out, err)


def assert_one_line_error(res, *needles: str) -> None:
    """A `simsiam: error: ...` line naming every needle, alone on stderr; no traceback; exit 2."""
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("simsiam: error: "), res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def assert_picture(path, min_width: int = 300, min_height: int = 200) -> tuple[int, int]:
    """`path` is a PNG of at least min_width x min_height pixels (and below 5000 a side) that shows
    something: not one flat colour, with ink of several shades on its background. Returns its size."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG", f"{path.name} is a {im.format}, not a PNG"
        width, height = im.size
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)
    assert min_width <= width < 5000 and min_height <= height < 5000, (path.name, width, height)
    background = np.median(pixels, axis=0)
    ink = np.abs(pixels.astype(int) - background).max(axis=1) > 32  # clearly off the background
    assert ink.mean() > 0.005, f"{path.name} is (almost) blank: {100 * ink.mean():.2f}% of its pixels drawn"
    assert len(np.unique(pixels[ink], axis=0)) >= 3, f"{path.name} has no shades"
    return width, height
