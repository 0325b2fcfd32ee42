"""Shared fixtures. CIFAR-10 comes from ../shared (CI has it); tests that need it skip without it."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

CIFAR_TAR = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


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


TINY = ["--width", "0.125", "--dim", "64", "--pred-dim", "16", "--proj-hidden", "64"]  # a model that trains in seconds
