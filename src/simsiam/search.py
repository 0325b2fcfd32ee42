"""Similarity search over a folder's backbone features: `simsiam index` and `simsiam search`.

An index is a folder:
- index.faiss: FAISS over the L2-normalised backbone features (cosine similarity = inner product);
  exact (IndexFlatIP) up to EXACT_MAX vectors, HNSW beyond (`--kind` overrides the choice);
- paths.csv: row i is the image of vector i;
- meta.json: the SHA-256 of the backbone's weights and where it came from (a query through another
  backbone is refused), the kind of index and, for HNSW, the efSearch that reached RECALL_TARGET
  recall@10 against exact search on queries drawn from the index itself, and the recall measured.

`--add DIR` embeds only the images not yet in the index and appends them; crossing EXACT_MAX turns an
exact index of kind auto into HNSW (the vectors are kept in the index: nothing is recomputed).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from . import checkpoint
from .config import Config
from .data.datasets import list_images
from .errors import ConfigError, DataError, warn
from .export import embed_stream
from .export import list_images as image_files

EXACT_MAX = 20_000  # vectors; beyond, HNSW (benchmarks/search.py: an exact query takes 17 ms at 100k on 2 cores)
RECALL_TARGET = 0.95  # recall@10 against exact search that the HNSW efSearch is raised to reach
HNSW_M = 32  # links per vector
EF_CONSTRUCTION = 64
EF_SEARCH = (16, 32, 64, 128, 256, 512, 1024)  # tried in turn until RECALL_TARGET
RECALL_QUERIES = 500  # vectors of the index used as queries to measure recall
FORMAT = 1


def faiss_module():
    """faiss, or a one-line error naming the package."""
    try:
        import faiss
    except ImportError:
        raise ConfigError("similarity search needs FAISS: pip install faiss-cpu (or faiss-gpu)") from None
    return faiss


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = 65536) -> np.ndarray:
    """(Q, k) ids of the k largest inner products of each query, by brute force in chunks (no copy
    of the vectors)."""
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.zeros((len(queries), k), np.int64)
    for start in range(0, len(vectors), chunk):
        s = queries @ vectors[start : start + chunk].T
        ids = np.arange(start, start + s.shape[1])[None, :].repeat(len(queries), 0)
        s, ids = np.concatenate([best_s, s], 1), np.concatenate([best_i, ids], 1)
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(ids, top, 1)
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(best_i, order, 1)


def recall_at(index, base: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    """Recall@k of `index` (which holds `base`) against exact search over `base`, for `queries`
    that are not in it (a vector of the index finds itself: that would flatter the index)."""
    truth = exact_neighbours(base, queries, k)
    _, found = index.search(queries, k)
    return float(np.mean([len(set(t) & set(f)) / k for t, f in zip(truth, found)]))


def build(
    vectors: np.ndarray, kind: str = "auto", log: Callable[[str], None] = lambda _: None, seed: int = 0
) -> tuple[Any, dict, np.ndarray]:
    """(a FAISS index over `vectors`, what it is: kind, efSearch, recall@10 and build seconds, the
    order in which it holds them: id i is vectors[order[i]]). HNSW is built without a random
    sample of up to RECALL_QUERIES vectors, which then serve as held-out queries for `tune_ef`, and
    are added last."""
    faiss = faiss_module()
    n, d = vectors.shape
    chosen = kind if kind != "auto" else ("exact" if n <= EXACT_MAX else "hnsw")
    t0 = time.perf_counter()
    if chosen == "exact":
        index = faiss.IndexFlatIP(d)
        index.add(vectors)
        info = {"kind": "exact", "build_seconds": time.perf_counter() - t0, "recall_at_10": 1.0}
        return index, info, np.arange(n)
    held = max(1, min(RECALL_QUERIES, n // 10))
    order = np.random.default_rng(seed).permutation(n)
    order = np.concatenate([np.sort(order[held:]), np.sort(order[:held])])  # the held-out sample last
    index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = EF_CONSTRUCTION
    index.add(vectors[order[:-held]])
    tuned = tune_ef(index, vectors[order[:-held]], vectors[order[-held:]], log)
    index.add(vectors[order[-held:]])
    return index, {"kind": "hnsw", "build_seconds": time.perf_counter() - t0, **tuned}, order


def tune_ef(index, base: np.ndarray, queries: np.ndarray, log: Callable[[str], None] = lambda _: None) -> dict:
    """The smallest efSearch of EF_SEARCH whose recall@10 for `queries` (held out of `index`, which
    holds `base`) reaches RECALL_TARGET (the largest, with a warning, when none does); set on
    `index`."""
    recall, ef = 0.0, EF_SEARCH[0]
    for ef in EF_SEARCH:
        index.hnsw.efSearch = ef
        recall = recall_at(index, base, queries)
        log(f"HNSW efSearch {ef}: recall@10 against exact {recall:.3f} ({len(queries)} held-out queries)")
        if recall >= RECALL_TARGET:
            break
    else:
        warn(f"HNSW reached recall@10 {recall:.3f} only (< {RECALL_TARGET}) at efSearch {ef}; use --kind exact")
    return {"ef_search": ef, "recall_at_10": recall, "recall_queries": len(queries)}


def vectors_of(index) -> np.ndarray:
    """Every vector an index holds (flat and HNSW-flat keep them)."""
    n = index.ntotal
    return index.reconstruct_n(0, n) if n else np.zeros((0, index.d), np.float32)


def unit(f: torch.Tensor) -> np.ndarray:
    """Features L2-normalised, as float32 on the host: what an index holds."""
    return torch.nn.functional.normalize(f, dim=1).cpu().numpy()


def embed_all(backbone, cfg, paths, batch_size, device, workers, progress) -> tuple[list[str], np.ndarray, list[str]]:
    """(readable paths, their L2-normalised features, unreadable paths), with a progress bar and a
    warning naming the unreadable files."""
    from .runtime import Bar

    kept, feats, bad = [], [], []
    batches = math.ceil(len(paths) / batch_size)
    stream = embed_stream(backbone, cfg, paths, batch_size, device, workers)
    for k, f, b in Bar(stream, total=batches, desc="embed", unit="batch", disable=not progress):
        kept += k
        bad += b
        if k:
            feats.append(unit(f))
    if bad:
        warn(f"skipped {len(bad)} unreadable image file(s), e.g. {', '.join(bad[:3])}")
    return kept, (np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)), bad


def embed_folder(
    data_dir, source, batch_size: int, device, workers: int, progress: bool, check: Callable[[int], None]
) -> tuple[list[str], np.ndarray, list[str], nn.Module, Config]:
    """(readable paths, L2-normalised features, unreadable paths, the backbone, its config) of the
    images under `data_dir` through the backbone of `source`; `check(number of images)` before
    anything is embedded and again on those that could be read."""
    from .runs import load_backbone
    from .runtime import resolve_device

    files = image_files(data_dir, "give a folder of images")
    check(len(files))
    device = resolve_device(device)
    backbone, cfg = load_backbone(source, device)
    paths, vectors, bad = embed_all(backbone, cfg, files, batch_size, device, workers, progress)
    if not paths:
        raise DataError(f"none of the {len(files)} image files under {data_dir} could be read")
    check(len(paths))
    return paths, vectors, bad, backbone, cfg


def folder_vectors(
    data_dir,
    source=None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    workers: int = 2,
    progress: bool = True,
    check: Callable[[int], None] = lambda _: None,
) -> tuple[list[str], np.ndarray, int]:
    """(paths, L2-normalised features, unreadable files skipped) of the images under `data_dir`
    through the backbone of `source` (run dir or checkpoint), or of an index folder (it holds
    meta.json: nothing is embedded, `source` is not needed). `check(number of images)` runs before
    anything is embedded (and again on the images that could be read): a request the folder cannot
    meet fails at once."""
    data_dir = Path(data_dir)
    if (data_dir / "meta.json").exists():
        index, paths, _ = load(data_dir)
        check(len(paths))
        return paths, vectors_of(index), 0
    if source is None:
        raise DataError(f"give --backbone RUN_DIR|CHECKPOINT to embed {data_dir} (or give an index folder)")
    paths, vectors, bad, _, _ = embed_folder(data_dir, source, batch_size, device, workers, progress, check)
    return paths, vectors, len(bad)


def _write(out: Path, index, paths: list[str], meta: dict) -> None:
    faiss = faiss_module()
    out.mkdir(parents=True, exist_ok=True)
    table = io.StringIO(newline="")
    w = csv.writer(table)
    w.writerow(["index", "path"])
    w.writerows(enumerate(paths))
    # meta.json last: an index whose meta.json is missing or older is rebuilt, never trusted torn
    checkpoint.write_atomic(out / "index.faiss", faiss.serialize_index(index).tobytes())
    checkpoint.write_atomic(out / "paths.csv", table.getvalue())
    checkpoint.write_atomic(out / "meta.json", json.dumps(meta, indent=2) + "\n")


def _backbone_record(source, backbone: nn.Module, cfg: Config) -> dict:
    from .evaluate import fingerprint

    return {"source": str(Path(source).resolve()), "sha256": fingerprint(backbone), "arch": cfg.arch}


def create(
    source,
    data_dir,
    out,
    kind: str = "auto",
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    workers: int = 2,
    progress: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """Index every image under `data_dir` through the backbone of `source` (run dir or checkpoint)
    into the folder `out`; returns its meta.json."""
    out = Path(out)
    if (out / "meta.json").exists():
        raise DataError(f"{out} already holds an index; add images with --add DIR, or choose another --out")
    t0 = time.perf_counter()
    kept, vectors, bad, backbone, cfg = embed_folder(
        data_dir, source, batch_size, device, workers, progress, check=lambda _: None
    )
    embed_seconds = time.perf_counter() - t0
    index, info, order = build(vectors, kind, log)
    kept = [kept[i] for i in order]
    meta = {
        "format": FORMAT,
        "backbone": _backbone_record(source, backbone, cfg),
        "dim": int(vectors.shape[1]),
        "count": len(kept),
        "skipped": len(bad),
        "kind_requested": kind,
        **info,
        "embed_images_per_second": len(kept) / embed_seconds,
    }
    _write(out, index, kept, meta)
    return meta


def read_meta(index_dir) -> dict:
    index_dir = Path(index_dir)
    path = index_dir / "meta.json"
    if not path.exists():
        raise DataError(
            f"{index_dir} is not an index (no meta.json); build one with "
            f"`simsiam index RUN_DIR --data-dir DIR --out {index_dir}`"
        )
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        found = meta.get("format")
        raise DataError(f"{index_dir}: index format {found} is not {FORMAT}; rebuild it with `simsiam index`")
    return meta


def load(index_dir) -> tuple[Any, list[str], dict]:
    """(the FAISS index, its paths, its meta.json) of an index folder."""
    faiss = faiss_module()
    index_dir = Path(index_dir)
    meta = read_meta(index_dir)
    with open(index_dir / "paths.csv", newline="") as f:
        paths = [row[1] for row in list(csv.reader(f))[1:]]
    index = faiss.deserialize_index(np.fromfile(index_dir / "index.faiss", dtype=np.uint8))
    if index.ntotal != len(paths) or index.ntotal != meta["count"]:
        raise DataError(f"{index_dir}: index.faiss, paths.csv and meta.json disagree on the count; rebuild the index")
    if meta["kind"] == "hnsw":
        index.hnsw.efSearch = meta["ef_search"]
    return index, paths, meta


def index_backbone(meta: dict, source=None, device: torch.device | str = "cpu") -> tuple[nn.Module, Config]:
    """The backbone an index was built with: from `source` when given, else from where the index
    recorded it; refused unless its weights are the index's (by SHA-256)."""
    from .evaluate import fingerprint
    from .runs import load_backbone

    recorded = meta["backbone"]
    source = source or recorded["source"]
    if not Path(source).exists():
        raise DataError(
            f"the index's backbone {source} is gone; give the run or checkpoint it was built with (--backbone)"
        )
    backbone, cfg = load_backbone(source, device)
    sha = fingerprint(backbone)
    if sha != recorded["sha256"]:
        raise DataError(
            f"{source} is another backbone than the index's (weights SHA-256 {sha[:12]} vs {recorded['sha256'][:12]}, "
            f"from {recorded['source']}): features of two backbones cannot be compared; query with the index's "
            "backbone or build a new index"
        )
    return backbone, cfg


def add(
    index_dir,
    data_dir,
    source=None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    workers: int = 2,
    progress: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """Embed the images under `data_dir` that the index does not hold yet and add them; returns
    the new meta.json (with `added`)."""
    from .runtime import resolve_device

    index_dir = Path(index_dir)
    index, paths, meta = load(index_dir)
    device = resolve_device(device)
    known = set(paths)
    new = [p for p in image_files(data_dir, "give --add a folder of images") if p not in known]
    backbone, cfg = index_backbone(meta, source, device)
    if not new:
        log(f"every image under {data_dir} is already in the index")
        return {**meta, "added": 0}
    kept, vectors, bad = embed_all(backbone, cfg, new, batch_size, device, workers, progress)
    if kept:
        total, listed = index.ntotal + len(kept), paths + kept
        if meta["kind"] == "exact" and meta["kind_requested"] == "auto" and total > EXACT_MAX:
            log(f"{total} vectors: past {EXACT_MAX}, the exact index becomes HNSW")
            index, info, order = build(np.concatenate([vectors_of(index), vectors]), "hnsw", log)
            listed = [listed[i] for i in order]
        elif meta["kind"] == "hnsw":  # the new vectors, before they join, are held-out queries
            info = meta
            if len(kept) >= 50:
                sample = np.random.default_rng(0).permutation(len(kept))[:RECALL_QUERIES]
                info = tune_ef(index, vectors_of(index), vectors[sample], log)
            index.add(vectors)
        else:
            index.add(vectors)
            info = {"recall_at_10": 1.0}
        meta = {**meta, **info, "count": total, "skipped": meta["skipped"] + len(bad)}
        _write(index_dir, index, listed, meta)
    return {**meta, "added": len(kept)}


def query_paths(queries: list[str]) -> list[str]:
    """Image files, and every image under the folders, among `queries`."""
    found: list[str] = []
    for q in queries:
        if os.path.isdir(q):
            found += list_images(q)
        elif os.path.isfile(q):
            found.append(q)
        else:
            raise DataError(f"query {q} does not exist; give image files or folders")
    if not found:
        raise DataError(f"no image files in {', '.join(queries)}")
    return found


def search(
    index_dir,
    queries: list[str],
    k: int = 10,
    source=None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> list[dict]:
    """The k nearest images of the index to each query image: rows {query, rank, path, score}
    (cosine similarity), in query order then rank."""
    from .runtime import resolve_device

    index, paths, meta = load(index_dir)
    device = resolve_device(device)
    files = query_paths(queries)
    backbone, cfg = index_backbone(meta, source, device)
    rows: list[dict] = []
    unreadable: list[str] = []
    for kept, f, bad in embed_stream(backbone, cfg, files, batch_size, device, workers=0):
        unreadable += bad
        if not kept:
            continue
        scores, ids = index.search(unit(f), min(k, index.ntotal))
        for q, s_row, i_row in zip(kept, scores, ids):
            ranked = [(s, i) for s, i in zip(s_row, i_row) if i >= 0]
            rows += [
                {"query": q, "rank": r + 1, "path": paths[i], "score": float(s)} for r, (s, i) in enumerate(ranked)
            ]
    if not rows:
        raise DataError(f"none of the {len(files)} query files could be read as images, e.g. {unreadable[0]}")
    if unreadable:
        warn(f"skipped {len(unreadable)} query file(s) that cannot be read as images, e.g. {', '.join(unreadable[:3])}")
    return rows


def write_rows(rows: list[dict], out) -> Path:
    """Rows as CSV (out ends in .csv) or JSON (anything else)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        table = io.StringIO(newline="")
        w = csv.DictWriter(table, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        checkpoint.write_atomic(out, table.getvalue())
    else:
        checkpoint.write_atomic(out, json.dumps(rows, indent=2) + "\n")
    return out


def search_gallery(rows: list[dict], out) -> Path:
    """An HTML page: each query, then its neighbours with their similarity."""
    from .gallery import write_gallery

    groups: dict[str, list[tuple[str, str]]] = {}
    for r in rows:
        groups.setdefault(r["query"], [(r["query"], "query")]).append((r["path"], f"{r['rank']}. {r['score']:.3f}"))
    return write_gallery(out, "simsiam search", [(q, items) for q, items in groups.items()])
