"""`simsiam select`: which images to label first, from the backbone's features alone.

- typiclust (Hacohen, Dekel & Weinshall, ICML 2022, "Active learning on a budget"): k-means into
  as many clusters as the budget; from each cluster, largest first, its most typical image, the one
  whose mean distance to its 20 nearest neighbours in the cluster is the smallest (typicality is
  its inverse). Clusters under 5 images are skipped while larger ones remain, as in the paper.
- kcenter (Sener & Savarese, ICLR 2018, "core-set"): greedy farthest-first traversal from one image
  drawn with the seed: each pick is the image farthest from every image picked so far.
- random: a seeded draw.
Distances are Euclidean between L2-normalised features (the order of cosine similarity).
"""

from __future__ import annotations

import numpy as np

from . import search as S
from .cluster import kmeans
from .errors import ConfigError

STRATEGIES = ("typiclust", "kcenter", "random")
TYPICALITY_NEIGHBOURS = 20
MIN_CLUSTER = 5


def typicality(vectors: np.ndarray) -> np.ndarray:
    """1 / mean Euclidean distance of each vector to its min(20, n - 1) nearest others."""
    n = len(vectors)
    if n == 1:
        return np.ones(1)
    k = min(TYPICALITY_NEIGHBOURS, n - 1)
    index = S.faiss_module().IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    sims, ids = index.search(vectors, k + 1)
    own = ids == np.arange(n)[:, None]
    keep = ~own
    keep[own.sum(1) == 0, -1] = False  # a row that missed itself (ties): drop its farthest instead
    d = np.sqrt(np.maximum(0.0, 2 - 2 * sims[keep].reshape(n, k)))
    return 1.0 / (d.mean(1) + 1e-12)


def typiclust(vectors: np.ndarray, budget: int, seed: int = 0) -> list[int]:
    labels, _ = kmeans(vectors, budget, seed)
    sizes = np.bincount(labels, minlength=budget)
    order = sorted(range(budget), key=lambda c: (-sizes[c], c))
    big = [c for c in order if sizes[c] >= MIN_CLUSTER]
    small = [c for c in order if 0 < sizes[c] < MIN_CLUSTER]
    picks: list[int] = []
    for c in (big + small)[:budget]:
        members = np.flatnonzero(labels == c)
        picks.append(int(members[np.argmax(typicality(vectors[members]))]))
    rest = np.setdiff1d(np.arange(len(vectors)), picks)
    if len(picks) < budget:  # empty clusters: fill with the most typical images left
        extra = rest[np.argsort(-typicality(vectors)[rest], kind="stable")][: budget - len(picks)]
        picks += [int(i) for i in extra]
    return picks


def kcenter(vectors: np.ndarray, budget: int, seed: int = 0) -> list[int]:
    picks = [int(np.random.default_rng(seed).integers(len(vectors)))]
    nearest = 2 - 2 * vectors @ vectors[picks[0]]  # squared distance to the closest pick
    for _ in range(budget - 1):
        nearest[picks] = -1.0
        far = int(np.argmax(nearest))
        picks.append(far)
        nearest = np.minimum(nearest, 2 - 2 * vectors @ vectors[far])
    return picks


def random_pick(vectors: np.ndarray, budget: int, seed: int = 0) -> list[int]:
    return [int(i) for i in np.random.default_rng(seed).choice(len(vectors), size=budget, replace=False)]


def check_budget(budget: int, n: int) -> None:
    if budget > n:
        raise ConfigError(f"--budget {budget} is more than the {n} images; choose --budget <= {n}")


def choose(vectors: np.ndarray, budget: int, strategy: str = "typiclust", seed: int = 0) -> list[int]:
    """`budget` distinct indices of `vectors` to label first, in the order picked."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    check_budget(budget, len(vectors))
    pick = {"typiclust": typiclust, "kcenter": kcenter, "random": random_pick}[strategy]
    return pick(vectors, budget, seed)
