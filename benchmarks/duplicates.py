"""Near-duplicates: `simsiam duplicates` against pHash (imagehash), the tool people reach for today.

    python benchmarks/duplicates.py --backbone RUN_DIR

A folder built here from CIFAR-10 test images (../shared): --distinct images in random order, and
for the first --planted of them five edited copies each: a crop (80-90% of each side, resized back),
a rescale (x2), JPEG quality 30, a colour shift (saturation and brightness x 0.6-1.4 and 0.8-1.2)
and a horizontal flip. Truth: two files are duplicates when they come from the same original.

Both methods group the same way (pairs at or above a threshold, joined into connected
components); every pair of files in a group is a predicted pair. Pair precision, recall and F1 for
pHash (Hamming distance of the 64-bit hashes) at its best-F1 threshold and at its best recall with
precision >= 0.95, and the same for the backbone's cosine similarity (`simsiam duplicates`, its
default threshold too); recall per kind of edit (the copy grouped with its original); and the
groups each finds in the distinct images alone.

Prints the tables and writes them to benchmarks/RESULTS.md with the machine.
"""

from __future__ import annotations

import argparse
import io
import random
import shutil
from pathlib import Path

import numpy as np
from _common import CACHE, cifar_folder, commit, machine, write_section
from PIL import Image, ImageEnhance, ImageOps

EDITS = ("crop", "rescale", "jpeg30", "colour", "flip")


def edit(im: Image.Image, kind: str, r: random.Random) -> Image.Image:
    w, h = im.size
    if kind == "crop":
        s = r.uniform(0.8, 0.9)
        cw, ch = int(w * s), int(h * s)
        x, y = r.randint(0, w - cw), r.randint(0, h - ch)
        return im.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.BICUBIC)
    if kind == "rescale":
        return im.resize((2 * w, 2 * h), Image.Resampling.BICUBIC)
    if kind == "jpeg30":
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=30)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if kind == "colour":
        im = ImageEnhance.Color(im).enhance(r.uniform(0.6, 1.4))
        return ImageEnhance.Brightness(im).enhance(r.uniform(0.8, 1.2))
    return ImageOps.mirror(im)


def planted_folder(
    source: Path, work: Path, distinct: int, planted: int, seed: int = 0
) -> tuple[Path, dict[str, tuple[int, str]]]:
    """The folder, and {path: (original's number, kind: "original" or the edit)}."""
    from simsiam.data.datasets import list_images

    root = work / f"duplicates-{distinct}-{planted}-{seed}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    sources = list_images(str(source))
    r = random.Random(seed)
    r.shuffle(sources)
    truth = {}
    for i, src in enumerate(sources[:distinct]):
        im = Image.open(src).convert("RGB")
        path = root / f"{i:05d}.png"
        im.save(path)
        truth[str(path)] = (i, "original")
        if i < planted:
            for kind in EDITS:
                path = root / f"{i:05d}-{kind}.png"
                edit(im, kind, r).save(path)
                truth[str(path)] = (i, kind)
    return root, truth


def components(n: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    """The group label of each of n items joined by `pairs`."""
    from simsiam.duplicates import _Components

    c = _Components(n)
    for a, b in pairs:
        c.join(a, b)
    return np.array([c.find(i) for i in range(n)])


def pair_scores(labels: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """Pair precision, recall, F1 of the grouping `labels` against the true groups `truth`."""
    iu = np.triu_indices(len(labels), 1)
    pred = (labels[:, None] == labels[None, :])[iu]
    true = (truth[:, None] == truth[None, :])[iu]
    tp = int((pred & true).sum())
    p = tp / max(1, int(pred.sum()))
    r = tp / max(1, int(true.sum()))
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def sweep(n: int, scored: list[tuple[int, int, float]], thresholds, truth: np.ndarray, higher: bool) -> list[dict]:
    rows = []
    for t in thresholds:
        kept = [(a, b) for a, b, s in scored if (s >= t if higher else s <= t)]
        labels = components(n, kept)
        p, r, f = pair_scores(labels, truth)
        rows.append({"threshold": t, "precision": p, "recall": r, "f1": f, "labels": labels})
    return rows


def best(rows: list[dict]) -> tuple[dict, dict | None]:
    """(the best-F1 row, the best-recall row with precision >= 0.95)."""
    ok = [r for r in rows if r["precision"] >= 0.95]
    return max(rows, key=lambda r: r["f1"]), (max(ok, key=lambda r: r["recall"]) if ok else None)


def per_edit(labels: np.ndarray, paths: list[str], truth: dict) -> dict[str, float]:
    """Of the copies of each kind of edit: the share grouped with their original."""
    where = {truth[p]: i for i, p in enumerate(paths)}
    out = {}
    for kind in EDITS:
        copies = [(where[(o, "original")], i) for (o, k), i in where.items() if k == kind]
        out[kind] = sum(labels[a] == labels[b] for a, b in copies) / max(1, len(copies))
    return out


def phash_scores(paths: list[str]) -> list[tuple[int, int, float]]:
    import imagehash

    bits = np.array([imagehash.phash(Image.open(p)).hash.flatten() for p in paths], dtype=bool)
    packed = np.packbits(bits, axis=1)
    out = []
    for i in range(len(paths)):
        d = np.unpackbits(packed[i] ^ packed[i + 1 :], axis=1).sum(1)
        out += [(i, i + 1 + j, float(x)) for j, x in enumerate(d) if x <= 24]  # beyond 24 of 64: never a pair
    return out


def cosine_scores(paths: list[str], backbone: str) -> tuple[list[tuple[int, int, float]], np.ndarray]:
    import torch

    from simsiam import duplicates as D
    from simsiam import search as S
    from simsiam.runs import load_backbone

    net, cfg = load_backbone(backbone)
    kept, vectors, bad = S.embed_all(net, cfg, paths, 256, torch.device("cpu"), 0, False)
    assert kept == paths and not bad
    pairs = D.neighbour_pairs(vectors)
    return [(a, b, s) for (a, b), s in pairs.items()], vectors


def describe(name: str, row: dict | None, fmt: str) -> str:
    if row is None:
        return f"| {name} | (no threshold reaches precision 0.95) | | | |"
    t = format(row["threshold"], fmt)
    return f"| {name} | {t} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", required=True, help="RUN_DIR|CHECKPOINT whose features `simsiam duplicates` uses")
    ap.add_argument("--distinct", type=int, default=1000)
    ap.add_argument("--planted", type=int, default=200)
    ap.add_argument("--data", help="the distinct images' folder (default: CIFAR-10's test folder from ../shared)")
    ap.add_argument("--work", default=str(CACHE), help="where the planted folder is built (default benchmarks/.cache)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from simsiam.duplicates import THRESHOLD

    source = Path(args.data) if args.data else cifar_folder() / "test"
    root, truth = planted_folder(source, Path(args.work), args.distinct, args.planted)
    paths = sorted(truth)
    groups = np.array([truth[p][0] for p in paths])
    n = len(paths)
    hashes = phash_scores(paths)
    cos, _ = cosine_scores(paths, args.backbone)
    ph = sweep(n, hashes, range(0, 25), groups, higher=False)
    cs = sweep(n, cos, sorted({THRESHOLD, *np.round(np.arange(0.90, 1.0, 0.0025), 4)}), groups, higher=True)
    ph_f1, ph_95 = best(ph)
    cs_f1, cs_95 = best(cs)
    cs_default = next(r for r in cs if r["threshold"] == THRESHOLD)
    table = [
        "| method, threshold chosen by | threshold | precision | recall | F1 |",
        "|---|---|---|---|---|",
        describe("pHash (Hamming <=), best F1", ph_f1, "g"),
        describe("pHash, best recall at precision >= 0.95", ph_95, "g"),
        describe("simsiam duplicates (cosine >=), best F1", cs_f1, ".4f"),
        describe("simsiam duplicates, best recall at precision >= 0.95", cs_95, ".4f"),
        describe(f"simsiam duplicates, its default --threshold {THRESHOLD:g}", cs_default, ".4f"),
    ]
    edits = ["| method | " + " | ".join(EDITS) + " |", "|---|" + "---|" * len(EDITS)]
    for name, row in (("pHash, best F1", ph_f1), ("simsiam duplicates, default threshold", cs_default)):
        shares = per_edit(row["labels"], paths, truth)
        edits.append(f"| {name} | " + " | ".join(f"{shares[k]:.2f}" for k in EDITS) + " |")

    originals = [i for i, p in enumerate(paths) if truth[p][1] == "original"]
    keep = set(originals)
    sub = {i: j for j, i in enumerate(originals)}
    control = []
    for name, scored, t, higher in (
        ("pHash, best F1", hashes, ph_f1["threshold"], False),
        ("simsiam duplicates, default threshold", cos, THRESHOLD, True),
    ):
        kept = [(sub[a], sub[b]) for a, b, s in scored if a in keep and b in keep and (s >= t if higher else s <= t)]
        labels = components(len(originals), kept)
        sizes = np.bincount(np.unique(labels, return_inverse=True)[1])
        control.append(f"| {name} | {int((sizes > 1).sum())} | {int(sizes[sizes > 1].sum())} |")

    section = "\n".join(
        [
            "## Near-duplicates (`benchmarks/duplicates.py`)",
            "",
            f"Measured at {commit()} on {machine()}. Backbone: `{args.backbone}`. Folder: {args.distinct} CIFAR-10 "
            f"test images, {args.planted} of them with 5 edited copies each ({', '.join(EDITS)}): {n} files, "
            f"{int(((groups[:, None] == groups[None, :]).sum() - n) // 2)} true pairs. Pair precision/recall/F1 of "
            "the groups (connected components):",
            "",
            *table,
            "",
            "Share of the edited copies grouped with their original, by edit:",
            "",
            *edits,
            "",
            f"The {len(originals)} distinct images alone (no planted copies; CIFAR-10 has a few near-duplicates "
            "of its own):",
            "",
            "| method | groups found | images in them |",
            "|---|---|---|",
            *control,
        ]
    )
    print(section)
    if not args.no_write:
        write_section("duplicates.py", section)
        print("\nwrote benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
