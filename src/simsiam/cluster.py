"""`simsiam cluster`: k-means of a folder's backbone features: pseudo-labels for images with none.

Spherical k-means (FAISS; the features are L2-normalised, so it clusters by cosine similarity).
Without -k, K is the one of --k-range with the highest silhouette (cosine, on a sample of at most
SILHOUETTE_SAMPLE images). Within a cluster, images are ranked by their similarity to its centroid:
the most typical first. When the images sit in two or more class sub-folders, the clusters are
compared with them (NMI, ARI); the folders are never used to cluster.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from . import search as S
from .errors import ConfigError

SILHOUETTE_SAMPLE = 5000
NITER = 25
NREDO = 3  # k-means runs from other random starts; the lowest objective is kept


def kmeans(vectors: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(the cluster of each vector, its cosine similarity to that cluster's centroid)."""
    faiss = S.faiss_module()
    if k > len(vectors):
        raise ConfigError(f"-k {k} is more clusters than the {len(vectors)} images; choose -k <= {len(vectors)}")
    km = faiss.Kmeans(vectors.shape[1], k, niter=NITER, nredo=NREDO, seed=seed, spherical=True, verbose=False)
    km.cp.min_points_per_centroid = 1  # small folders: no warning for fewer than 39 points a centroid
    km.train(vectors)
    sims, ids = km.index.search(vectors, 1)
    return ids[:, 0].astype(np.int64), sims[:, 0]


def silhouettes(vectors: np.ndarray, ks: list[int], seed: int = 0) -> dict[int, float]:
    """{K: silhouette score (cosine) of k-means with K clusters} on one sample of the vectors."""
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(seed)
    sample = rng.choice(len(vectors), size=min(SILHOUETTE_SAMPLE, len(vectors)), replace=False)
    out = {}
    for k in ks:
        if k >= len(vectors):
            break
        labels, _ = kmeans(vectors, k, seed)
        if len(set(labels[sample])) < 2:
            continue
        out[k] = float(silhouette_score(vectors[sample], labels[sample], metric="cosine"))
    return out


def folder_classes(paths: list[str]) -> list[str] | None:
    """The parent folder of each image when there are at least two of them, else None."""
    parents = [Path(p).parent.name for p in paths]
    return parents if len(set(parents)) >= 2 else None


def cluster(
    data_dir,
    source=None,
    k: int | None = None,
    k_range: tuple[int, int] = (2, 20),
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    workers: int = 2,
    progress: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """{paths, labels, similarity (to the centroid), k, silhouettes, nmi, ari, skipped}."""
    lo, hi = k_range
    if k is None and not 2 <= lo <= hi:
        raise ConfigError(f"--k-min {lo} --k-max {hi}: give 2 <= --k-min <= --k-max")

    def fits(n: int) -> None:
        if k is not None and k > n:
            raise ConfigError(f"-k {k} is more clusters than the {n} images; choose -k <= {n}")
        if k is None and n < 3:
            raise ConfigError(f"{n} images: too few to choose K by silhouette; give -k")

    paths, vectors, skipped = S.folder_vectors(data_dir, source, batch_size, device, workers, progress, fits)
    scores: dict[int, float] = {}
    if k is None:
        scores = silhouettes(vectors, list(range(lo, hi + 1)), seed)
        k = max(scores, key=lambda c: scores[c])
        log("silhouette (cosine) by K: " + ", ".join(f"{c}: {s:.3f}" for c, s in scores.items()) + f" -> K = {k}")
    labels, sims = kmeans(vectors, k, seed)
    result = {
        "paths": paths,
        "labels": labels,
        "similarity": sims,
        "k": k,
        "silhouettes": scores,
        "skipped": skipped,
        "nmi": None,
        "ari": None,
    }
    classes = folder_classes(paths)
    if classes is not None:
        from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

        result["nmi"] = float(normalized_mutual_info_score(classes, labels))
        result["ari"] = float(adjusted_rand_score(classes, labels))
        result["num_classes"] = len(set(classes))
    return result


def by_cluster(result: dict) -> list[list[int]]:
    """The images of each cluster, most typical first; clusters largest first."""
    labels, sims = result["labels"], result["similarity"]
    found = [np.flatnonzero(labels == c) for c in range(result["k"])]
    members: list[list[int]] = [m[np.argsort(-sims[m], kind="stable")].tolist() for m in found if len(m)]
    return sorted(members, key=len, reverse=True)


def write_csv(result: dict, out) -> Path:
    table = io.StringIO(newline="")
    w = csv.writer(table)
    w.writerow(["path", "cluster", "rank_in_cluster", "similarity_to_centroid"])
    for c, members in enumerate(by_cluster(result)):
        for rank, i in enumerate(members, 1):
            w.writerow([result["paths"][i], c, rank, f"{result['similarity'][i]:.4f}"])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_atomic(out, table.getvalue())
    return out


def write_html(result: dict, out, per_cluster: int = 24) -> Path:
    from .gallery import write_gallery

    groups = [
        (
            f"cluster {c}: {len(members)} images",
            [(result["paths"][i], f"{result['similarity'][i]:.3f}") for i in members[:per_cluster]],
        )
        for c, members in enumerate(by_cluster(result))
    ]
    note = f"k-means (cosine), K = {result['k']}; in each cluster the {per_cluster} most typical images"
    return write_gallery(out, "simsiam cluster", groups, note)
