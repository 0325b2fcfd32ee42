"""Datasets as uint8 tensors in memory: the embedded digits and ImageFolder trees.

Small datasets are decoded once into one uint8 tensor (N, 3, S, S) that can live on the device;
batches are then drawn by index, with no DataLoader. `load_splits(cfg)` returns (train, test):
the test split is the data's own (`test/` or `val/`) or a fixed held-out part of the images.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from ..errors import DataError

HOLDOUT_SEED = 1234  # the held-out split never depends on --seed, so runs stay comparable


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8 (N, 3, S, S)
    labels: torch.Tensor  # int64 (N,)
    classes: list[str]

    def __len__(self) -> int:
        return self.images.shape[0]

    def select(self, idx: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images[idx], self.labels[idx], self.classes)

    def to(self, device) -> "ImageSet":
        return ImageSet(self.images.to(device), self.labels.to(device), self.classes)


def load_splits(cfg) -> tuple[ImageSet, ImageSet]:
    if cfg.dataset == "digits":
        return holdout_split(load_digits(cfg.image_size), cfg.holdout)
    return load_folder(cfg.data_dir, cfg.image_size, cfg.holdout)


def load_digits(size: int = 32) -> ImageSet:
    """scikit-learn's 1,797 handwritten digits (8x8, values 0..16), upscaled to size x size."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # N,1,8,8 in [0,1]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return ImageSet(x, torch.tensor(d.target, dtype=torch.int64), [str(i) for i in range(10)])


def holdout_split(data: ImageSet, fraction: float) -> tuple[ImageSet, ImageSet]:
    g = torch.Generator().manual_seed(HOLDOUT_SEED)
    perm = torch.randperm(len(data), generator=g)
    n_test = max(1, int(round(fraction * len(data))))
    return data.select(perm[n_test:].sort().values), data.select(perm[:n_test].sort().values)


def load_folder(root: str, size: int, holdout: float = 0.2) -> tuple[ImageSet, ImageSet]:
    """An ImageFolder tree (sub-folders = classes). With `train/` and `test/` (or `val/`)
    sub-folders those are the splits; otherwise a fixed fraction is held out as the test split."""
    if not os.path.isdir(root):
        raise DataError(f"data folder {root} does not exist; give --data-dir a folder of images (sub-folders = classes)")
    train_dir = os.path.join(root, "train")
    test_dir = next((os.path.join(root, s) for s in ("test", "val") if os.path.isdir(os.path.join(root, s))), None)
    if os.path.isdir(train_dir) and test_dir:
        train = read_image_folder(train_dir, size)
        test = read_image_folder(test_dir, size, classes=train.classes)
        return train, test
    return holdout_split(read_image_folder(root, size), holdout)


def read_image_folder(root: str, size: int, classes: list[str] | None = None) -> ImageSet:
    try:
        found, class_to_idx = find_classes(root)
    except FileNotFoundError:
        raise DataError(f"no class sub-folders in {root}; put the images in {root}/<class>/*.jpg") from None
    if classes is not None and found != classes:
        raise DataError(f"the classes of {root} ({len(found)}) differ from the training split's ({len(classes)}); "
                        "give both splits the same class folders")
    samples = make_dataset(root, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise DataError(f"no images ({', '.join(IMG_EXTENSIONS[:4])}, ...) found under {root}; check --data-dir")
    paths = [p for p, _ in samples]
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        arrays = list(pool.map(lambda p: decode_image(p, size), paths))
    bad = [p for p, a in zip(paths, arrays) if a is None]
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s) in {root}, e.g. {', '.join(bad[:3])}", stacklevel=2)
    keep = [i for i, a in enumerate(arrays) if a is not None]
    if not keep:
        raise DataError(f"none of the {len(paths)} image files under {root} could be read; check the files")
    images = torch.from_numpy(np.stack([arrays[i] for i in keep])).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([samples[i][1] for i in keep], dtype=torch.int64)
    return ImageSet(images, labels, found)


def decode_image(path: str, size: int) -> np.ndarray | None:
    """RGB uint8 (size, size, 3): shorter side resized to `size`, then centre-cropped."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                w, h = im.size
                s = size / min(w, h)
                im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
                left, top = (im.width - size) // 2, (im.height - size) // 2
                im = im.crop((left, top, left + size, top + size))
            return np.array(im, dtype=np.uint8)  # a writable copy
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
