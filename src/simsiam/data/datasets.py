"""Datasets as uint8 tensors in memory: embedded digits, CIFAR-10/100 and STL-10 through
torchvision, and ImageFolder trees (labelled or a flat folder without labels).

Small datasets are decoded once into one uint8 tensor (N, 3, S, S) that can live on the device;
batches are then drawn by index, with no DataLoader. Decoded folders are cached as .npy files
keyed by the file list, sizes and mtimes, so a second run loads in about a second.
`load_splits(cfg)` returns (train, test): the test split is the data's own (`test/` or `val/`)
or a fixed held-out part of the images. Images without a label carry label -1 (UNLABELED).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..config import Config
from ..errors import DataError, warn
from ..parallel import rank_and_world
from ..runtime import drop_inherited_locks

WORKER_STALL_SECONDS = 120  # a DataLoader worker silent this long is stuck (FileSet._decoded)
HOLDOUT_SEED = 1234  # the held-out split never depends on --seed, so runs stay comparable
UNLABELED = -1
TORCHVISION_SETS = ("cifar10", "cifar100", "stl10")
CACHE_VERSION = 1
# Images with more pixels are skipped as unreadable: PIL's decompression-bomb limit (about 89.5 M
# pixels, a 9,500 px square), above which PIL would warn and, at twice it, refuse.
MAX_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8 (N, 3, S, S)
    labels: torch.Tensor  # int64 (N,), UNLABELED where unknown
    classes: list[str]
    paths: list[str] | None = None  # the file of each image, when read from a folder

    def __len__(self) -> int:
        return self.images.shape[0]

    def select(self, idx: torch.Tensor) -> ImageSet:
        paths = None if self.paths is None else [self.paths[i] for i in idx.flatten().tolist()]
        return ImageSet(self.images[idx], self.labels[idx], self.classes, paths)

    def to(self, device) -> ImageSet:
        return ImageSet(self.images.to(device), self.labels.to(device), self.classes, self.paths)

    def labeled(self) -> ImageSet:
        """The images with a label (the kNN bank / evaluation set)."""
        return self.select(torch.nonzero(self.labels >= 0).flatten())

    def take(self, idx) -> torch.Tensor:
        """uint8 images (len(idx), 3, S, S), on the set's device."""
        return self.images[idx]

    def batches(
        self,
        batch_size: int,
        order: torch.Tensor | None = None,
        drop_last: bool = False,
        workers: int = 0,
        pin_memory: bool = False,
        min_batch: int = 1,
    ):
        """uint8 batches in `order` (default: stored order); no workers needed, they are in memory.
        `min_batch` is FileSet's: images in memory are all readable, no batch shrinks."""
        order = torch.arange(len(self), device=self.images.device) if order is None else order.to(self.images.device)
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        for i in range(0, stop, batch_size):
            yield self.images[order[i : i + batch_size]]


@dataclass
class FileSet:
    """Images left on disk and decoded by DataLoader workers batch by batch (`--placement stream`),
    for folders too large to hold decoded in memory. Same interface as ImageSet; a file that cannot
    be decoded is dropped from its batch and counted (see `batches`)."""

    paths: list[str]
    labels: torch.Tensor  # int64 (N,), UNLABELED where unknown
    classes: list[str]
    size: int
    strict: bool = False

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, idx: torch.Tensor) -> FileSet:
        rows = torch.as_tensor(idx).flatten().tolist()
        return FileSet([self.paths[i] for i in rows], self.labels[rows], self.classes, self.size, self.strict)

    def to(self, device) -> FileSet:
        return self  # batches move to the device as they are drawn

    def labeled(self) -> FileSet:
        return self.select(torch.nonzero(self.labels >= 0).flatten())

    def take(self, idx) -> torch.Tensor:
        """uint8 images (len(idx), 3, S, S) of exactly these files, decoded here: the callers pair
        the rows with labels or targets by index, so an unreadable file is a DataError, not a skip."""
        rows = torch.as_tensor(idx).flatten().tolist()
        arrays = [decode_image(self.paths[i], self.size) for i in rows]
        bad = [self.paths[i] for i, a in zip(rows, arrays) if a is None]
        if bad:
            raise DataError(f"cannot read image {bad[0]}, which this step needs; fix or remove it")
        return torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in arrays if a is not None])

    def batches(
        self,
        batch_size: int,
        order: torch.Tensor | None = None,
        drop_last: bool = False,
        workers: int = 0,
        pin_memory: bool = False,
        min_batch: int = 1,
    ):
        """uint8 batches decoded by `workers` DataLoader workers, in page-locked memory with
        `pin_memory` (so the copy to a GPU can run without blocking).

        An unreadable file is dropped from its batch (with `strict`: a DataError naming it, raised
        here, not in the worker), and a batch left with fewer than `min_batch` images (training: 2,
        for BatchNorm) is dropped; each is counted in one warning at the end of the pass. Under
        torchrun with more than one process a dropped batch is a DataError instead: the processes
        step together, and one that skipped a step would leave the others waiting for it. A pass
        that yields no batch at all (every file unreadable, or every batch dropped) is a DataError."""
        from torch.utils.data import BatchSampler

        order = torch.arange(len(self)) if order is None else order.cpu()
        plan = list(BatchSampler(order.tolist(), batch_size, drop_last))
        min_batch = max(1, min_batch)
        bad: list[str] = []
        read = yielded = dropped = 0
        for images, bad_paths in self._decoded(plan, workers, pin_memory):
            if bad_paths and self.strict:
                raise DataError(
                    f"cannot read image {bad_paths[0]}; fix or remove it, or drop --strict to skip bad files"
                )
            bad += bad_paths
            read += len(images) + len(bad_paths)
            if len(images) >= min_batch:
                yielded += 1
                yield images
                continue
            dropped += 1
            world = rank_and_world()[1]
            if world > 1:
                raise DataError(
                    f"a batch of {len(images) + len(bad_paths)} image files under {self._root()} has "
                    f"{len(images)} readable, fewer than {min_batch}, and with {world} processes it cannot be "
                    f"dropped (they step together); {_fix(bad_paths)}"
                )
        too_few = "no readable image" if min_batch == 1 else f"fewer than {min_batch} readable images"
        if dropped and not yielded:  # batches were asked for and none came: an empty pass would crash later
            if len(bad) == read:
                raise DataError(f"none of the {read} image files under {self._root()} could be read; check the files")
            raise DataError(
                f"every batch of the {read} image files under {self._root()} was left with {too_few}; {_fix(bad)}"
            )
        if bad:
            warn(
                f"skipped {len(bad)} unreadable image file(s) while streaming {self._root()}, "
                f"e.g. {', '.join(bad[:3])} (--strict stops at the first)"
            )
        if dropped:
            warn(f"dropped {dropped} batch(es) left with {too_few}")

    def _decoded(self, plan: list[list[int]], workers: int, pin_memory: bool):
        """(images, unreadable paths) of each batch of `plan`, in order, decoded by `workers`
        DataLoader workers. A worker that sends nothing for WORKER_STALL_SECONDS is taken for stuck
        (a forked worker can inherit a lock that a thread of the parent held at the fork, and then
        waits forever): the workers are stopped, and the rest of the pass is decoded here, with a
        warning. The batches are the same either way."""
        from torch.utils.data import DataLoader

        dataset = _Decode(self.paths, self.size)
        done = 0
        if workers > 0:
            loader = DataLoader(
                dataset,
                num_workers=workers,
                collate_fn=_stack_good,
                batch_sampler=plan,
                pin_memory=pin_memory,
                worker_init_fn=drop_inherited_locks,  # the run lock stays the trainer's alone
                timeout=WORKER_STALL_SECONDS,
            )
            batches = iter(loader)
            try:
                while done < len(plan):
                    try:
                        item = next(batches)
                    except RuntimeError as e:
                        if "timed out" not in str(e):
                            raise
                        warn(
                            f"the {workers} image-decoding worker(s) sent no batch in {WORKER_STALL_SECONDS} s; "
                            f"decoding the other {len(plan) - done} batch(es) of this pass in the main process "
                            "(if this repeats, use --workers 0)"
                        )
                        break
                    done += 1
                    yield item
            finally:
                del batches  # stops the workers, a stuck one included (terminated)
        for rows in plan[done:]:
            yield _stack_good([dataset[i] for i in rows])

    def _root(self) -> str:
        """The folder that holds the files (for messages)."""
        return os.path.commonpath([os.path.dirname(p) or "." for p in self.paths])


class _Decode(torch.utils.data.Dataset):
    """Decodes file i in a DataLoader worker: a (3, S, S) uint8 tensor, or the path (str) of a file
    that cannot be read. Never raises: an exception in a worker reaches the main process as a
    multi-line 'Caught DataError in DataLoader worker process 0 ... Original Traceback'."""

    def __init__(self, paths, size):
        self.paths, self.size = paths, size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        a = decode_image(self.paths[i], self.size)
        return self.paths[i] if a is None else torch.from_numpy(a).permute(2, 0, 1)


Images = ImageSet | FileSet  # in memory, or streamed from disk: the same interface
T = TypeVar("T", ImageSet, FileSet)


def _fix(bad: list[str]) -> str:
    if not bad:
        return "use a --batch-size that leaves no short last batch"
    return f"fix or remove the unreadable files ({len(bad)}, e.g. {', '.join(bad[:3])})"


def _stack_good(items):
    """(the readable images stacked, the paths of the unreadable ones) of one batch."""
    good = [x for x in items if not isinstance(x, str)]
    return (torch.stack(good) if good else torch.zeros(0, dtype=torch.uint8)), [x for x in items if isinstance(x, str)]


def load_splits(cfg: Config) -> tuple[Images, Images]:
    """(train, test) of `cfg`'s data: ImageSets in memory, or FileSets when a folder is streamed."""
    if cfg.dataset == "digits":
        return holdout_split(load_digits(cfg.stored_size), cfg.holdout)
    cache = cache_root(cfg.cache_dir) if cfg.cache else None
    if cfg.dataset in TORCHVISION_SETS and not (cfg.data_dir and _has_split_folders(cfg.data_dir)):
        return load_torchvision(cfg.dataset, cfg.data_dir, cfg.stored_size, cfg.cache_dir)
    return load_folder(
        cfg.data_dir,
        cfg.stored_size,
        cfg.holdout,
        strict=cfg.strict,
        cache=cache,
        placement=cfg.placement,
        memory_budget_gb=cfg.memory_budget_gb,
    )


def labeled_splits(cfg: Config, purpose: str = "evaluation") -> tuple[Images, Images]:
    """(train, test) of `cfg`'s data with the labelled images only, or a DataError naming the fix."""
    train, test = load_splits(cfg)
    train, test = train.labeled(), test.labeled()
    if len(train) == 0 or len(test) == 0:
        raise DataError(
            f"{purpose} needs labelled images and {cfg.data_dir or cfg.dataset} has none; "
            "give --data-dir a folder with class sub-folders"
        )
    return train, test


def cache_root(cache_dir: str | None) -> Path:
    return Path(cache_dir or os.environ.get("SIMSIAM_CACHE") or Path.home() / ".cache" / "simsiam")


def load_digits(size: int = 32) -> ImageSet:
    """scikit-learn's 1,797 handwritten digits (8x8, values 0..16), upscaled to size x size."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # N,1,8,8 in [0,1]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return ImageSet(x, torch.tensor(d.target, dtype=torch.int64), [str(i) for i in range(10)])


def holdout_split(data: T, fraction: float) -> tuple[T, T]:
    g = torch.Generator().manual_seed(HOLDOUT_SEED)
    perm = torch.randperm(len(data), generator=g)
    n_test = max(1, int(round(fraction * len(data))))
    return data.select(perm[n_test:].sort().values), data.select(perm[:n_test].sort().values)


# --- torchvision datasets ------------------------------------------------------------------------


def load_torchvision(name: str, root: str | None, size: int, cache_dir: str | None = None) -> tuple[ImageSet, ImageSet]:
    """CIFAR-10/100 (train/test) or STL-10 (unlabeled + train for pretraining, test for queries)
    through torchvision: an existing copy under `root`, or downloaded (with torchvision's checksum
    check) into the cache dir when no root is given."""
    from urllib.error import URLError

    from torchvision import datasets as tvd

    download = root is None
    root = root or str(cache_root(cache_dir) / name)
    if not download:
        require_folder(
            root,
            f"give --data-dir the folder that holds {name} (torchvision layout or train/ and test/ class "
            "folders), or omit it to download",
        )
    try:
        if name == "stl10":
            unlabeled = tvd.STL10(root, split="unlabeled", download=download)
            train, test = tvd.STL10(root, split="train"), tvd.STL10(root, split="test")
            classes = list(train.classes)
            images = np.concatenate([unlabeled.data, train.data])  # N,3,96,96 already
            labels = np.concatenate([np.full(len(unlabeled.data), UNLABELED), train.labels])
            tr, te = (images, labels), (test.data, test.labels)
        else:
            cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
            train, test = cls(root, train=True, download=download), cls(root, train=False, download=download)
            classes = list(train.classes)
            tr = (train.data.transpose(0, 3, 1, 2), np.asarray(train.targets))
            te = (test.data.transpose(0, 3, 1, 2), np.asarray(test.targets))
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        raise DataError(
            f"{name} not found or corrupted under {root} ({str(e).splitlines()[0]}); point --data-dir "
            f"at the folder torchvision downloaded it to, or omit --data-dir to download"
        ) from None
    except (URLError, OSError) as e:
        raise DataError(
            f"could not download {name} into {root} ({e}); download it on a machine with internet and pass --data-dir"
        ) from None
    return tuple(  # type: ignore[return-value]  # two items: train, test
        ImageSet(
            _resize_uint8(torch.from_numpy(np.ascontiguousarray(x)), size),
            torch.as_tensor(y, dtype=torch.int64),
            classes,
        )
        for x, y in (tr, te)
    )


def _resize_uint8(x: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Square uint8 images to size x size (antialiased); a no-op at the native size."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    out = [
        F.interpolate(x[i : i + chunk].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        .round_()
        .clamp_(0, 255)
        .to(torch.uint8)
        for i in range(0, len(x), chunk)
    ]
    return torch.cat(out)


def _has_split_folders(root: str) -> bool:
    return os.path.isdir(os.path.join(root, "train")) and any(
        os.path.isdir(os.path.join(root, s)) for s in ("test", "val")
    )


# --- image folders -------------------------------------------------------------------------------


def load_folder(
    root: str | None,
    size: int,
    holdout: float = 0.2,
    strict: bool = False,
    cache: Path | None = None,
    placement: str = "memory",
    memory_budget_gb: float = 8.0,
):
    """An ImageFolder tree (sub-folders = classes). With `train/` and `test/` (or `val/`)
    sub-folders those are the splits; otherwise a fixed fraction is held out as the test split.
    A folder with images but no class sub-folders is read as unlabeled (pretraining only).

    placement: "memory" decodes everything once into uint8 tensors (cached); "stream" leaves the
    files on disk (FileSet); "auto" streams when the decoded images would exceed the budget."""
    root = require_folder(root, "give --data-dir a folder of images (sub-folders = classes)")
    dirs = [root]
    if _has_split_folders(root):
        dirs = [
            os.path.join(root, "train"),
            next(os.path.join(root, s) for s in ("test", "val") if os.path.isdir(os.path.join(root, s))),
        ]
    listing = _Listing(root, dirs)
    listed: list[list[tuple[str, int]]] = []
    classes: list[str] = []
    for d in dirs:
        found, samples = _list_samples(d, listing)
        if listed and found != classes:
            raise DataError(
                f"the classes of {d} ({len(found)}) differ from the training split's ({len(classes)}); "
                "give both splits the same class folders"
            )
        classes = found
        listed.append(samples)
    listing.warn()
    n = sum(len(s) for s in listed)
    if placement == "auto":
        placement = "stream" if n * 3 * size * size > memory_budget_gb * 2**30 else "memory"
    sets: list[Any]
    if placement == "stream":
        sets = [
            FileSet([p for p, _ in s], torch.tensor([y for _, y in s], dtype=torch.int64), classes, size, strict)
            for s in listed
        ]
    else:
        sets = [_decode_samples(d, s, classes, size, strict, cache) for d, s in zip(dirs, listed)]
    return tuple(sets) if len(sets) == 2 else holdout_split(sets[0], holdout)


def require_folder(root: str | None, todo: str) -> str:
    """`root`, or a one-line DataError unless it is a folder we can list; `todo` says what to give
    instead."""
    if root and os.path.isfile(root):
        raise DataError(f"data folder {root} is a file, not a folder; {todo}")
    if not root or not os.path.isdir(root):
        raise DataError(f"data folder {root} does not exist; {todo}")
    if not os.access(root, os.R_OK | os.X_OK):
        raise DataError(f"cannot read data folder {root} (permission denied); check its permissions")
    return root


def list_images(root: str) -> list[str]:
    """Every image file under root (any depth), sorted, so orders are stable; each real file once."""
    listing = _Listing(root, [])
    paths = sorted(listing.images(root))
    listing.warn()
    return paths


def typical_size(root: str, sample: int = 256) -> tuple[int, int] | None:
    """(median shorter side in pixels, files measured) of up to `sample` image files spread evenly
    over the folder's sorted listing, from their headers only; None when none can be read (the
    loading that follows reports why)."""
    if not os.path.isdir(root):
        return None
    paths = sorted(_Listing(root, []).images(root))  # no warning here: the loading warns once
    sides = []
    for path in paths[:: max(1, len(paths) // sample)][:sample]:
        try:
            with _open(path) as im:
                sides.append(min(im.size))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue
    return (int(np.median(sides)), len(sides)) if sides else None


def _list_samples(root: str, listing: _Listing) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, [(path, label)]) of an ImageFolder; a flat folder gives no classes, label -1."""
    found = listing.class_folders(root)
    if found:
        samples = [(p, label) for label, c in enumerate(found) for p in listing.images(os.path.join(root, c))]
    else:  # no class sub-folders: a flat folder of unlabeled images
        samples = [(p, UNLABELED) for p in sorted(listing.images(root))]
    if not samples:
        raise DataError(f"no images ({', '.join(IMG_EXTENSIONS[:4])}, ...) found under {root}; check --data-dir")
    return found, samples


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks
    except OSError:  # a link loop (ELOOP): not a folder; with an image name it is an unreadable file
        return False


def _class_names(folder: str) -> list[str]:
    """Sorted sub-folder names, as torchvision's find_classes (which crashes on a looping link)."""
    try:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries if _is_dir(e))
    except OSError as e:
        raise DataError(f"cannot list data folder {folder} ({e.strerror}); check its permissions") from None


_IMAGE_SUFFIXES = tuple(e.lower() for e in IMG_EXTENSIONS)


class _Listing:
    """The image files of a data folder in torchvision's ImageFolder order (classes sorted; in each,
    folders by path and files by name), except that symlinks are followed at most once per real
    folder and each real file is listed once (by os.path.realpath). So a link loop (`cats/up -> ..`)
    or a linked copy cannot multiply the images or put one image in both splits. `splits` are the
    folders whose sub-folders are classes: a link from one class into another, into a split or
    up to the data folder is skipped too. What is skipped is counted for one warning."""

    def __init__(self, root: str, splits: list[str]):
        self.name, self.root = root, os.path.realpath(root)
        self.containers = {self.root, *(os.path.realpath(s) for s in splits)}
        self.classes = {os.path.realpath(os.path.join(s, c)) for s in splits for c in _class_names(s)}
        self.folders: set[str] = set()  # real paths of the folders read (or about to be)
        self.files: set[str] = set()  # real paths of the files listed
        self.skipped: list[str] = []  # links (and files) that lead to something listed already
        self.unlistable: list[str] = []

    def _repeats(self, real: str) -> bool:
        """Reading folder `real` again would repeat images: read already, a split, or above the data."""
        return real in self.folders or real in self.containers or self.root.startswith(real.rstrip(os.sep) + os.sep)

    def class_folders(self, split: str) -> list[str]:
        """The sub-folders of `split`, sorted, less links up to the data folder or to a folder
        listed already (`cats2 -> cats`): those would be classes of repeated images."""
        names, reals = [], set()
        for c in _class_names(split):
            real = os.path.realpath(os.path.join(split, c))
            if self._repeats(real) or real in reals:
                self.skipped.append(os.path.join(split, c))
            else:
                names.append(c)
                reals.add(real)
        return names

    def images(self, top: str) -> list[str]:
        """Image files under top, in the order of torchvision's make_dataset."""
        real = os.path.realpath(top)
        self.folders.add(real)
        stack, found = [(top, real)], []
        while stack:
            folder, real = stack.pop()
            try:
                with os.scandir(folder) as it:
                    entries = sorted(((e, _is_dir(e)) for e in it), key=lambda x: x[0].name)
            except OSError as err:
                self.unlistable.append(f"{folder} ({err.strerror})")
                continue
            found.append((folder, real, [e for e, is_dir in entries if not is_dir]))
            for e, _ in reversed([x for x in entries if x[1]]):  # depth first, sorted: which alias wins is stable
                sub = os.path.realpath(e.path) if e.is_symlink() else os.path.join(real, e.name)
                if self._repeats(sub) or sub in self.classes:
                    self.skipped.append(e.path)
                else:
                    self.folders.add(sub)
                    stack.append((e.path, sub))
        paths = []
        for _, real, files in sorted(found, key=lambda x: x[0]):
            for e in files:
                if not e.name.lower().endswith(_IMAGE_SUFFIXES):
                    continue
                # a dangling or looping link keeps its own path: listed, it is counted as unreadable
                resolves = e.is_symlink() and os.path.exists(e.path)
                key = os.path.realpath(e.path) if resolves else os.path.join(real, e.name)
                if key in self.files:
                    self.skipped.append(e.path)
                else:
                    self.files.add(key)
                    paths.append(e.path)
        return paths

    def warn(self) -> None:
        if self.skipped:
            e = self.skipped[0]
            warn(
                f"skipped {len(self.skipped)} symlinked folder(s) or file(s) under {self.name} that loop or repeat "
                f"images listed already, e.g. {e} -> {os.path.realpath(e)}; each real image is read once"
            )
        if self.unlistable:
            warn(
                f"skipped {len(self.unlistable)} folder(s) under {self.name} that cannot be listed, "
                f"e.g. {self.unlistable[0]}; check their permissions"
            )


def read_image_folder(root: str, size: int, strict: bool = False, cache: Path | None = None) -> ImageSet:
    require_folder(root, "give a folder of images (sub-folders = classes)")
    listing = _Listing(root, [root])
    found, samples = _list_samples(root, listing)
    listing.warn()
    return _decode_samples(root, samples, found, size, strict, cache)


def _decode_samples(root, samples, found, size, strict, cache) -> ImageSet:
    cached = None
    if cache:
        key = _cache_key(samples, size)
        cached = _load_cache(cache, key)
    if cached is not None:
        images, labels, bad = cached
    else:
        images, labels, bad = _decode_all(samples, size, strict)
        if cache:
            _save_cache(cache, key, images, labels, bad)
    if bad and strict:  # a cache hit holds the bad files of the decode that filled it
        raise DataError(f"cannot read image {bad[0]}; fix or remove it, or drop --strict to skip bad files")
    if bad:
        warn(
            f"skipped {len(bad)} unreadable image file(s) under {root}, e.g. {', '.join(bad[:3])} "
            "(--strict stops at the first)"
        )
    if len(labels) == 0:
        raise DataError(f"none of the {len(samples)} image files under {root} could be read; check the files")
    unread = set(bad)
    paths = [p for p, _ in samples if p not in unread]  # decoded in listing order, the unreadable left out
    kept = paths if len(paths) == len(labels) else None
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels), found, kept)


def _decode_all(samples, size: int, strict: bool):
    paths = [p for p, _ in samples]
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        arrays = pool.map(lambda p: decode_image(p, size), paths)
        kept, labels, bad = [], [], []
        for (path, label), a in zip(samples, arrays):
            if a is None:
                if strict:
                    raise DataError(f"cannot read image {path}; fix or remove it, or drop --strict to skip bad files")
                bad.append(path)
            else:
                kept.append(a)
                labels.append(label)
    images = np.stack(kept).transpose(0, 3, 1, 2).copy() if kept else np.zeros((0, 3, size, size), np.uint8)
    return images, np.asarray(labels, dtype=np.int64), bad


def decode_image(path: str, size: int) -> np.ndarray | None:
    """RGB uint8 (size, size, 3): shorter side resized to `size`, then centre-cropped. Any mode
    (palette, CMYK, RGBA, 16-bit) becomes 8-bit RGB; None for a file that cannot be decoded or has
    more than MAX_PIXELS pixels (a decompression bomb), by its header or once decoded. Memory is
    bounded by MAX_PIXELS for the source and by the output's size for the resize (`_resize_crop`)."""
    if not os.path.isfile(path):  # a FIFO named x.jpg would block the open forever
        return None
    try:
        with _open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                return None
            im.load()
            if im.width * im.height > MAX_PIXELS:  # some decoders (ICNS, EPS) settle on another size at load
                return None
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit gray: scale, do not clip at 255
                im = Image.fromarray(_scale_to_uint8(np.asarray(im)))
            rgb = im if im.mode == "RGB" else im.convert("RGB")  # convert would copy an RGB image
            return np.array(_resize_crop(rgb, size), dtype=np.uint8)  # a writable copy
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


# Resizing the shorter side to `size` first builds an image as elongated as the source: a 6 KB PNG of
# 2,000,000 x 1 pixels would become 448,000,000 x 224 (400 GB). Above this many output squares
# (aspect ratios beyond about 16:1) the output is resampled from the centre region directly.
MAX_INTERMEDIATE = 16


def _resize_crop(im: Image.Image, size: int) -> Image.Image:
    """`im` with its shorter side resized to `size` (bicubic), then the centre size x size."""
    if im.size == (size, size):
        return im
    w, h = im.size
    s = size / min(w, h)
    big_w, big_h = max(size, round(w * s)), max(size, round(h * s))
    left, top = (big_w - size) // 2, (big_h - size) // 2
    if big_w * big_h <= MAX_INTERMEDIATE * size * size:  # every ordinary image: bit for bit as it always was
        return im.resize((big_w, big_h), Image.Resampling.BICUBIC).crop((left, top, left + size, top + size))
    # The same scale and sample positions (PIL samples output pixel i at box[0] + (i + 0.5) * scale),
    # computed for the crop only. Not bit for bit: PIL may run its two 8-bit passes in the other
    # order (a level or two apart on photos; more on noise, where bicubic overshoot is clipped).
    sx, sy = w / big_w, h / big_h
    box = (left * sx, top * sy, min(w, (left + size) * sx), min(h, (top + size) * sy))
    return im.resize((size, size), Image.Resampling.BICUBIC, box=box)


def _scale_to_uint8(a: np.ndarray) -> np.ndarray:
    """16-bit (or 32-bit) gray to uint8, scaled by 255 / max when the max is above 255 (not clipped).
    In blocks of rows (about 4 M pixels): the values of one whole-array float64 expression, without
    its two float64 copies of the image (16 bytes a pixel, 1.4 GB at MAX_PIXELS)."""
    top = float(a.max())
    f = 255.0 / top if top > 255 else 1.0
    out = np.empty(a.shape, np.uint8)
    rows = max(1, 2**22 // max(1, a.shape[1]))
    for i in range(0, a.shape[0], rows):
        out[i : i + rows] = (a[i : i + rows].astype(np.float64) * f).astype(np.uint8)
    return out


_OPEN_LOCK = threading.Lock()


def _new_open_lock() -> None:
    """A forked child (a DataLoader worker) gets a fresh lock: its copy of one that a decode thread
    of the parent held at the fork would never be released."""
    global _OPEN_LOCK
    _OPEN_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_new_open_lock)


def _open(path: str) -> Image.Image:
    """Image.open (it reads the header only) without PIL's raw warnings, several lines each: a
    DecompressionBombWarning (decode_image counts such images as unreadable instead) or one about
    corrupt metadata (TIFF/EXIF tags). Warning filters are process-wide state, not thread-safe, and
    the decode threads open files concurrently, hence the lock."""
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"PIL\.")
        return Image.open(path)


# --- decode-once cache ---------------------------------------------------------------------------


def _cache_key(samples, size: int) -> str:
    """Changes whenever a file is added, removed, renamed, relabelled, resized or touched."""
    h = hashlib.sha1(f"v{CACHE_VERSION} size={size}".encode())
    for path, label in samples:
        try:
            st = os.stat(path)
            stamp = f"{st.st_size}\0{st.st_mtime_ns}"
        except OSError:  # a dangling or looping link: an unreadable file, until it is fixed
            stamp = "missing"
        h.update(f"{os.path.abspath(path)}\0{label}\0{stamp}\n".encode())
    return h.hexdigest()[:20]


def _load_cache(cache: Path, key: str):
    meta_path = cache / f"{key}.json"
    try:
        meta = json.loads(meta_path.read_text())
        return np.load(cache / f"{key}.images.npy"), np.load(cache / f"{key}.labels.npy"), meta["bad"]
    except (OSError, ValueError, KeyError):
        return None


def _save_cache(cache: Path, key: str, images: np.ndarray, labels: np.ndarray, bad: list[str]) -> None:
    """Best effort: an unwritable cache dir costs the next run a decode, nothing else."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        for name, arr in (("images", images), ("labels", labels)):
            tmp = cache / f"{key}.{name}.tmp.npy"
            np.save(tmp, arr)
            os.replace(tmp, cache / f"{key}.{name}.npy")
        (cache / f"{key}.json").write_text(json.dumps({"bad": bad, "shape": list(images.shape)}))
    except OSError as e:
        warn(f"could not write the decode cache in {cache} ({e.strerror or e}); set --cache-dir to a writable folder")
