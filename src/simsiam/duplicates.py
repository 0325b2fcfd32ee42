"""`simsiam duplicates`: exact duplicates (the same bytes) and near-duplicates (backbone features
whose cosine similarity reaches a threshold), grouped by connected components.

Near-duplicate pairs come from each image's nearest neighbours in a FAISS index (`search.build`:
exact up to search.EXACT_MAX images, HNSW beyond); two images are in one group when a chain of
pairs above the threshold joins them. Each group lists its most central image first (the highest
summed similarity to the others), then the rest by their similarity to it.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint
from . import search as S
from .errors import warn

THRESHOLD = 0.99  # cosine; the best F1 of two CIFAR backbones in benchmarks/duplicates.py
NEIGHBOURS = 32  # nearest neighbours looked at per image
SWEEP = (0.95, 0.97, 0.98, 0.99, 0.995)  # thresholds whose pair counts are printed, to choose another


def file_hash(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class _Components:
    """Union-find over 0..n-1."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)

    def groups(self) -> list[list[int]]:
        out: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            out.setdefault(self.find(i), []).append(i)
        return [g for g in out.values() if len(g) > 1]


def neighbour_pairs(vectors: np.ndarray, k: int = NEIGHBOURS, log: Callable[[str], None] = lambda _: None):
    """(i, j, similarity) with i < j for each image's k nearest neighbours (cosine: the vectors are
    L2-normalised), each pair once."""
    index, _, order = S.build(vectors, "auto", log)
    sims, ids = index.search(vectors[order], min(k + 1, len(vectors)))
    pairs: dict[tuple[int, int], float] = {}
    for row, (s_row, i_row) in enumerate(zip(sims, ids)):
        a = int(order[row])
        for s, b in zip(s_row, i_row):
            if b < 0:
                continue
            b = int(order[b])
            if a != b:
                pairs[(min(a, b), max(a, b))] = float(s)
    return pairs


def group(vectors: np.ndarray, hashes: list[str], pairs: dict, threshold: float) -> list[dict]:
    """Groups of images (indices) joined by pairs at or above `threshold`, or by equal bytes."""
    comps = _Components(len(vectors))
    for (a, b), s in pairs.items():
        if s >= threshold:
            comps.join(a, b)
    by_hash: dict[str, int] = {}
    for i, h in enumerate(hashes):
        if h in by_hash:
            comps.join(by_hash[h], i)
        by_hash.setdefault(h, i)
    out: list[dict[str, Any]] = []
    for members in comps.groups():
        sims = vectors[members] @ vectors[members].T
        centre = int(np.argmax(sims.sum(1)))
        ranked = sorted(range(len(members)), key=lambda m: (m != centre, -sims[centre, m]))
        same_bytes = len({hashes[members[m]] for m in ranked}) == 1
        out.append(
            {
                "kind": "exact" if same_bytes else "near",
                "members": [members[m] for m in ranked],
                "similarity": [float(sims[centre, m]) for m in ranked],
            }
        )
    out.sort(key=lambda g: (-len(g["members"]), -min(g["similarity"])))
    return out


def find(
    data_dir,
    source=None,
    threshold: float = THRESHOLD,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    workers: int = 2,
    progress: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """Exact and near-duplicate groups of the images under `data_dir` (through the backbone of
    `source`), or of an index folder's images (`data_dir` holds meta.json; `source` not needed).
    Returns {paths, groups, sweep: pairs per threshold, skipped}."""
    paths, vectors, skipped = S.folder_vectors(data_dir, source, batch_size, device, workers, progress)
    if len(paths) < 2:
        return {"paths": paths, "groups": [], "sweep": {t: 0 for t in SWEEP}, "skipped": skipped}
    hashes = [file_hash(p) for p in paths]
    pairs = neighbour_pairs(vectors, log=log)
    groups = group(vectors, hashes, pairs, threshold)
    if groups and len(groups[0]["members"]) > max(10, len(paths) // 10):
        warn(
            f"the largest group holds {len(groups[0]['members'])} of {len(paths)} images: at --threshold "
            f"{threshold:g} chains of similar images join; raise --threshold"
        )
    sweep = {t: sum(s >= t for s in pairs.values()) for t in SWEEP}
    return {"paths": paths, "groups": groups, "sweep": sweep, "skipped": skipped}


def write_csv(found: dict, out) -> Path:
    """One row per image in a group: group, kind, path, similarity to the group's first."""
    table = io.StringIO(newline="")
    w = csv.writer(table)
    w.writerow(["group", "kind", "size", "path", "similarity"])
    for n, g in enumerate(found["groups"], 1):
        for i, s in zip(g["members"], g["similarity"]):
            w.writerow([n, g["kind"], len(g["members"]), found["paths"][i], f"{s:.4f}"])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_atomic(out, table.getvalue())
    return out


def write_html(found: dict, out, threshold: float) -> Path:
    from .gallery import write_gallery

    groups = [
        (
            f"group {n}: {len(g['members'])} images, {g['kind']} duplicates",
            [(found["paths"][i], f"{s:.3f}") for i, s in zip(g["members"], g["similarity"])],
        )
        for n, g in enumerate(found["groups"], 1)
    ]
    note = f"cosine similarity of the backbone features >= {threshold:g}, or the same bytes; first: the most central"
    return write_gallery(out, "simsiam duplicates", groups, note)
