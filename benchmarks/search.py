"""What similarity search costs: embedding a folder, building the index, answering a query.

    python benchmarks/search.py                          # 10k, 100k and 1M vectors
    python benchmarks/search.py --sizes 10000 100000     # skip the 1M build (minutes on 2 cores)

1. Embedding: images/s of `simsiam index`'s embedding loop (`search.embed_stream`: JPEG files decoded
   by DataLoader workers while the backbone runs) against the bare forward pass of the same backbone
   on the same images already decoded in memory, side by side in one run (the ResNet-18 of the
   cifar10 preset, 512-d features; CIFAR-10 test JPEGs from ../shared).
2. Index and query, at each size: vectors of the backbone's dimension (512), synthetic: 1000
   cluster centres, each vector a centre plus a spread along 16 directions of its own plus a little
   isotropic noise, L2-normalised (real features have a low intrinsic dimension; isotropic
   Gaussian vectors would be the worst case of any approximate index). Exact search (IndexFlatIP)
   and HNSW as `simsiam index` builds it (efSearch chosen by `search.tune_ef` on the index's own
   vectors): build seconds, and over 300 held-out queries from the same distribution, one query at
   a time, latency p50/p99 and recall@10 against exact search.

Prints the tables and writes them to benchmarks/RESULTS.md with the machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _common import cifar_folder, commit, machine, write_section

DIM = 512
CLUSTERS = 1000
LATENT = 16
QUERIES = 300


def synthetic(n: int, seed: int, structure_seed: int = 0, chunk: int = 100_000) -> np.ndarray:
    """n clustered unit vectors (see the module's docstring); the clusters come from `structure_seed`,
    the points from `seed` (queries: another seed, the same clusters)."""
    s = np.random.default_rng(structure_seed)
    centres = s.standard_normal((CLUSTERS, DIM)).astype(np.float32) / np.sqrt(DIM)
    axes = s.standard_normal((CLUSTERS, LATENT, DIM)).astype(np.float32) / np.sqrt(DIM)
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        c = rng.integers(0, CLUSTERS, m)
        z = rng.standard_normal((m, LATENT)).astype(np.float32) * 0.6
        x = centres[c] + np.einsum("ml,mld->md", z, axes[c]) + 0.05 * rng.standard_normal((m, DIM)).astype(np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def latencies(index, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(ms per query, the ids found), one query at a time."""
    ms, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        _, ids = index.search(q[None], k)
        ms.append(1000 * (time.perf_counter() - t0))
        found.append(ids[0])
    return np.array(ms), np.array(found)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def index_rows(sizes: list[int]) -> list[str]:
    import faiss

    from simsiam import search as S

    rows = []
    queries = synthetic(QUERIES, seed=1)
    for n in sizes:
        vectors = synthetic(n, seed=0)
        truth = S.exact_neighbours(vectors, queries, 10)
        t0 = time.perf_counter()
        exact = faiss.IndexFlatIP(DIM)
        exact.add(vectors)
        built = time.perf_counter() - t0
        ms, found = latencies(exact, queries)
        rows.append(
            f"| {n:,} | exact (IndexFlatIP) | {built:.1f} | | {np.percentile(ms, 50):.2f} | "
            f"{np.percentile(ms, 99):.2f} | {recall(found, truth):.3f} |"
        )
        print(rows[-1], flush=True)
        del exact
        hnsw, info, order = S.build(vectors, "hnsw", log=print)
        ms, found = latencies(hnsw, queries)
        found = order[found]  # the index holds vectors[order]: back to the vectors' own ids
        rows.append(
            f"| {n:,} | HNSW (M {S.HNSW_M}, efConstruction {S.EF_CONSTRUCTION}) | {info['build_seconds']:.1f} | "
            f"{info['ef_search']} | {np.percentile(ms, 50):.2f} | {np.percentile(ms, 99):.2f} | "
            f"{recall(found, truth):.3f} |"
        )
        print(rows[-1], flush=True)
        del hnsw, vectors
    return rows


@torch.no_grad()
def embedding_rows(folder, images: int, batch_size: int, workers: list[int], seconds_note: list[str]) -> list[str]:
    from simsiam import build_backbone, from_preset
    from simsiam import search as S
    from simsiam.data.augment import prepare
    from simsiam.data.datasets import _Decode, list_images

    cfg = from_preset("cifar10")
    backbone, dim = build_backbone(cfg.arch, cfg.cifar_stem, cfg.width, image_size=cfg.image_size)
    backbone.eval()
    paths = list_images(str(folder))[:images]
    decoded = torch.stack([_Decode(paths, cfg.stored_size)[i] for i in range(len(paths))])
    device = torch.device("cpu")

    def bare() -> float:
        t0 = time.perf_counter()
        for i in range(0, len(decoded), batch_size):
            backbone(prepare(decoded[i : i + batch_size], cfg.image_size, cfg.mean, cfg.std))
        return len(decoded) / (time.perf_counter() - t0)

    def embed(w: int) -> float:
        t0 = time.perf_counter()
        n = sum(len(k) for k, _, _ in S.embed_stream(backbone, cfg, paths, batch_size, device, w))
        return n / (time.perf_counter() - t0)

    bare()  # warm-up
    rows = []
    for w in workers:  # bare forward measured beside each, alternating: the machine's drift hits both
        b, e = bare(), embed(w)
        rows.append(f"| {w} | {e:.0f} | {b:.0f} | **{e / b:.2f}** |")
        print(rows[-1], flush=True)
    seconds_note.append(f"{len(paths)} images of {folder}, batch {batch_size}, {dim}-d features")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--images", type=int, default=2048, help="images of the embedding measurement")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers to compare")
    ap.add_argument("--data", help="a folder of images to embed (default: CIFAR-10's test folder from ../shared)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md as it is")
    args = ap.parse_args()

    note: list[str] = []
    folder = args.data or cifar_folder() / "test"
    emb = embedding_rows(folder, args.images, args.batch_size, args.workers, note)
    idx = index_rows(args.sizes)
    section = "\n".join(
        [
            "## Similarity search (`benchmarks/search.py`)",
            "",
            f"Measured at {commit()} on {machine()}.",
            "",
            f"Embedding a folder ({note[0]}): `simsiam index`'s loop against the bare forward pass of the same "
            "backbone on the same images decoded beforehand (target >= 0.9):",
            "",
            "| decoding workers | embedding (images/s) | bare forward (images/s) | ratio |",
            "|---|---|---|---|",
            *emb,
            "",
            f"Index and query ({DIM}-d synthetic clustered vectors, {QUERIES} held-out queries, one at a time; "
            "recall@10 against exact search; target at 1M: p99 <= 10 ms with recall@10 >= 0.95):",
            "",
            "| vectors | index | build (s) | efSearch | p50 (ms) | p99 (ms) | recall@10 |",
            "|---|---|---|---|---|---|---|",
            *idx,
        ]
    )
    print("\n" + section)
    if not args.no_write:
        write_section("search.py", section)
        print("\nwrote benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
