"""A run report: PNG plots of the training curves, a retrieval grid, an embedding map and a
Markdown page tying them together, written to RUN_DIR/report/.

    from simsiam.report import write_report
    write_report("runs/digits-20250101-120000")   # -> runs/.../report/summary.md

Works on unfinished runs too (the plots that need missing numbers are skipped and the page says
so). Figures are drawn on matplotlib's Agg canvas through the object API (`Figure`, not pyplot):
nothing is registered globally, so nothing needs closing and the caller's backend (a notebook's,
say) is left alone.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from . import checkpoint
from .config import Config
from .configure import load_json
from .data import labeled_splits
from .data.datasets import FileSet
from .errors import ConfigError, DataError, warn
from .evaluate import extract_features
from .runs import load_backbone, read_events, read_metrics, read_summary
from .runtime import resolve_device

DPI = 110
PLOT_SIZE = (6, 4)  # inches: 660 x 440 px at DPI
FIGURES = ("loss.png", "z_std.png", "rank.png", "knn.png", "lr.png", "retrieval.png", "embedding.png")
SEED = 0  # picks the retrieval queries and the embedded points; fixed so reports are comparable
MAX_LEGEND = 20  # more classes than this: colours only, a legend would hide the map
SAME, OTHER, QUERY = "#1a9641", "#d7191c", "#2b83ba"  # green / red / blue frames in the retrieval grid


def write_report(
    run_dir: str | Path,
    *,
    retrieval: bool = True,
    embedding_map: bool = True,
    n_queries: int = 8,
    top_k: int = 8,
    max_points: int = 2000,
    embedding_method: str = "tsne",
    device: str = "auto",
    backbone: torch.nn.Module | None = None,
) -> Path:
    """Write RUN_DIR/report/{*.png, summary.md}; returns the path of summary.md.

    retrieval: grid of `n_queries` test images and their `top_k` nearest train images.
    embedding_map: 2-D map ("tsne", or "umap" if umap-learn is installed) of up to `max_points`
    test features coloured by class. Both need the backbone and the data; when either cannot be
    loaded they are skipped and the reason goes into summary.md. `backbone`: the module to load the
    weights into, for runs trained on a module given from Python (arch "custom").
    """
    if embedding_method not in ("tsne", "umap"):
        raise ConfigError(f"embedding_method {embedding_method!r}: choose tsne or umap")
    run_dir = Path(run_dir)
    metrics = _read_metrics(run_dir)
    recoveries = [e for e in read_events(run_dir) if e.get("event") == "recovery"]
    found = read_summary(run_dir, warn=warn)
    summary = found.to_json() if found is not None else None  # the page reads the JSON keys
    cfg = load_json(run_dir / "config.json") if (run_dir / "config.json").exists() else None
    out = run_dir / "report"
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise DataError(f"{out} is not a folder of this run (a link or a file); remove it to write the report")
    try:
        out.mkdir(exist_ok=True)
    except OSError as e:
        raise DataError(checkpoint.cannot_write(out, e)) from None
    for name in FIGURES:  # a plot from an earlier report must not pass for this one's
        (out / name).unlink(missing_ok=True)

    (out / "report.html").unlink(missing_ok=True)
    figures: list[tuple[str, str, str]] = []  # (file name, heading, caption), in page order
    map_points: dict | None = None  # report.html's interactive map
    notes: list[str] = []  # what was skipped and why

    def add(name: str, heading: str, fig: Figure | None, why_not: str = "", caption: str = "") -> None:
        if fig is None:
            notes.append(f"{heading}: {why_not}")
            return
        _save(fig, out / name)
        figures.append((name, heading, caption))

    add("loss.png", "Training loss", plot_loss(metrics, recoveries), "no loss in metrics.jsonl")
    add("z_std.png", "z-std", plot_z_std(metrics, cfg), "no z_std in metrics.jsonl")
    add(
        "rank.png",
        "Effective rank",
        plot_rank(metrics, recoveries),
        "not measured (--rank-samples 0, or an older run)",
    )
    random_init = (summary or {}).get("knn_top1_random_init")
    add("knn.png", "kNN top-1", plot_knn(metrics, random_init), "not measured yet")
    add("lr.png", "Learning rate", plot_lr(metrics), "no lr in metrics.jsonl")

    if retrieval or embedding_map:
        try:
            train_set, test_set, train_feats, test_feats = _features(run_dir, resolve_device(device), backbone)
        except (DataError, ConfigError) as e:  # no backbone yet, data folder moved, a custom arch, ...
            wanted = ["retrieval"] * retrieval + ["embedding map"] * embedding_map
            notes.append(f"{' and '.join(wanted)}: {e}")
        else:
            if retrieval:
                if len(train_set.classes) < 2:
                    notes.append("retrieval: the data has a single class, so matches cannot be judged")
                else:
                    fig, hits = plot_retrieval(train_set, test_set, train_feats, test_feats, n_queries, top_k)
                    add(
                        "retrieval.png",
                        "Nearest neighbours",
                        fig,
                        caption=f"{hits[0]} of {hits[1]} neighbours shown share their query's class.",
                    )
            if embedding_map:
                points, why = embedding_points(test_feats, test_set.labels, max_points, embedding_method)
                emb = draw_embedding(points, test_set.classes) if points is not None else None
                add("embedding.png", f"Embedding map ({embedding_method})", emb, why)
                if points is not None:
                    map_points = {**points, **_map_images(test_set, points["keep"], cfg)}

    from . import report_html

    html_missing = report_html.available()
    if html_missing:
        notes.append(html_missing)
    page = out / "summary.md"
    md = _markdown(run_dir, metrics, summary, cfg, figures, notes, recoveries)
    checkpoint.write_atomic(page, md)
    if not html_missing:
        report_html.write(out, md, map_points, f"simsiam report: {run_dir.name}")
    return page


def _map_images(images, keep: np.ndarray, cfg: Config | None) -> dict:
    """The classes, images (N, S, S, 3) and names of the map's points, for report.html's hover."""
    rows = torch.as_tensor(keep)
    pictures = images.take(rows).permute(0, 2, 3, 1).cpu().numpy()
    if isinstance(images, FileSet):
        names = [images.paths[i] for i in rows.tolist()]
    else:
        where = cfg.dataset if cfg is not None else "the data"
        names = [f"{where}: test image {i}" for i in rows.tolist()]
    return {"classes": images.classes, "images": pictures, "names": names}


# --- reading the run ---------------------------------------------------------------------------


def _read_metrics(run_dir: Path) -> list[dict]:
    """runs.read_metrics, but a missing or empty file is an error naming the fix."""
    if not run_dir.is_dir():
        raise DataError(f"{run_dir} is not a directory; give the run directory of `simsiam train`")
    if not (run_dir / "metrics.jsonl").exists():
        raise DataError(
            f"{run_dir} has no metrics.jsonl; train first (`simsiam train --run-dir {run_dir}`) "
            "or give the directory of a run"
        )
    rows = [m.to_json() for m in read_metrics(run_dir, warn=warn)]
    if not rows:
        raise DataError(f"{run_dir}/metrics.jsonl is empty; wait until the run's first epoch has finished")
    return rows


MAX_BANK = 10_000  # retrieval neighbours come from at most this many train images (ImageNet-size runs)


def _features(run_dir: Path, device: torch.device, backbone: torch.nn.Module | None = None):
    """(train set, test set, train features, test features) of the labelled images; the bank is
    the whole train split up to MAX_BANK images (a fixed random pick beyond that)."""
    backbone, cfg = load_backbone(run_dir, device, backbone)
    train_set, test_set = labeled_splits(cfg, "showing neighbours and classes")
    if len(train_set) > MAX_BANK:
        pick = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))[:MAX_BANK]
        train_set = train_set.select(pick.sort().values)

    def feats(images) -> torch.Tensor:  # an ImageSet or FileSet, moved to the device batch by batch
        return extract_features(backbone, images, cfg.image_size, cfg.mean, cfg.std).cpu()

    return train_set, test_set, feats(train_set), feats(test_set)


# --- figures -----------------------------------------------------------------------------------


def _figure(size=PLOT_SIZE) -> Figure:
    fig = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas: rendering never touches pyplot
    return fig


def _save(fig: Figure, path: Path) -> None:
    checkpoint.write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=DPI))


def _series(metrics: list[dict], key: str) -> tuple[list[int], list[float]]:
    rows = [m for m in metrics if m.get(key) is not None]
    return [m["epoch"] for m in rows], [m[key] for m in rows]


def _curve_axes(fig: Figure, title: str, ylabel: str):
    ax = fig.subplots()
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    ax.grid(alpha=0.3)
    return ax


def _marker(n: int) -> str:
    return "o" if n <= 30 else ""  # dots while each epoch is still distinguishable


def _mark_recoveries(ax, recoveries: list[dict], key: str) -> None:
    """--on-collapse recover: the abandoned epochs (grey crosses) and where each recovery went back to."""
    for i, e in enumerate(recoveries):
        rows = [m for m in e.get("abandoned", []) if isinstance(m, dict) and m.get(key) is not None]
        label = "abandoned by a recovery" if i == 0 else None
        ax.plot([m["epoch"] for m in rows], [m[key] for m in rows], "x", color="grey", label=label)
        label = "recovery: back to here, lr lowered" if i == 0 else None
        ax.axvline(e.get("back_to", 0), color="C3", linestyle=":", alpha=0.7, label=label)


def plot_loss(metrics: list[dict], recoveries: list[dict] | None = None) -> Figure | None:
    epochs, loss = _series(metrics, "loss")
    if not epochs:
        return None
    fig = _figure()
    ax = _curve_axes(fig, "Training loss", "loss (mean over the epoch)")
    ax.plot(epochs, loss, marker=_marker(len(epochs)), color="C0")
    if recoveries:
        _mark_recoveries(ax, recoveries, "loss")
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def plot_z_std(metrics: list[dict], cfg: Config | None) -> Figure | None:
    epochs, z = _series(metrics, "z_std")
    if not epochs:
        return None
    healthy = next((m["z_std_healthy"] for m in reversed(metrics) if m.get("z_std_healthy")), None)
    fig = _figure()
    ax = _curve_axes(fig, "Output spread: std of l2-normalised z per dimension", "z-std")
    ax.plot(epochs, z, marker=_marker(len(epochs)), color="C0", label="z-std")
    top = max(z)
    if healthy:
        ax.axhline(healthy, color="C2", linestyle="--", label=f"healthy 1/sqrt(d) = {healthy:.4f}")
        top = max(top, healthy)
        if cfg is not None:
            cut = cfg.collapse_fraction * healthy
            ax.axhline(
                cut, color="C3", linestyle=":", label=f"collapse threshold {cfg.collapse_fraction:g} x 1/sqrt(d)"
            )
    ax.set_ylim(0, 1.15 * top)  # from 0: how far from collapse matters more than the wiggles
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


def plot_rank(metrics: list[dict], recoveries: list[dict] | None = None) -> Figure | None:
    """The effective rank (RankMe) of the features and of z per epoch, each under its ceiling
    min(N, D): near the ceiling = spread over every dimension, 1 = complete collapse."""
    fig = None
    for i, (key, name) in enumerate((("rank_backbone", "backbone features"), ("rank_z", "z (projector)"))):
        epochs, ranks = _series(metrics, key)
        if not epochs:
            continue
        if fig is None:
            fig = _figure()
            ax = _curve_axes(fig, "Effective rank (RankMe) on a fixed sample of training images", "effective rank")
        ax.plot(epochs, ranks, marker=_marker(len(epochs)), color=f"C{i}", label=name)
        ceiling = next((m[f"{key}_max"] for m in reversed(metrics) if m.get(f"{key}_max")), None)
        if ceiling:
            ax.axhline(
                ceiling, color=f"C{i}", linestyle="--", alpha=0.6, label=f"{name}: ceiling min(N, D) = {ceiling}"
            )
    if fig is None:
        return None
    if recoveries:
        _mark_recoveries(ax, recoveries, "rank_z")
    ax.set_yscale("log")  # the two ceilings differ by up to 10x; collapse is the way down to 1
    ax.set_ylim(bottom=0.8)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def plot_curves(
    curves: dict[str, list[dict]],
    key: str,
    title: str,
    ylabel: str,
    hline: float | None = None,
    scale_by_healthy: bool = False,
) -> Figure | None:
    """One line per run (label -> its metrics) of `key` against the epoch: the z-std curves of
    `simsiam reproduce`, the kNN curves of `simsiam compare`. With `scale_by_healthy` z-std is
    divided by its 1/sqrt(d), so runs with different d share one axis (1 = healthy)."""
    fig = _figure((7, 4.5))
    ax = _curve_axes(fig, title, ylabel + (" / (1/sqrt d)" if scale_by_healthy else ""))
    drawn = False
    for i, (label, metrics) in enumerate(curves.items()):
        epochs, values = _series(metrics, key)
        if scale_by_healthy:
            values = [v / m["z_std_healthy"] for v, m in zip(values, [m for m in metrics if m.get(key) is not None])]
        if epochs:
            ax.plot(epochs, values, marker=_marker(len(epochs)), color=f"C{i % 10}", label=label)
            drawn = True
    if not drawn:
        return None
    if scale_by_healthy:
        hline = 1.0
    if hline is not None:
        ax.axhline(
            hline,
            color="C7",
            linestyle="--",
            label="healthy 1/sqrt(d)" + ("" if scale_by_healthy else f" = {hline:.4f}"),
        )
    ax.set_ylim(bottom=0)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def plot_knn(metrics: list[dict], random_init: float | None) -> Figure | None:
    epochs, acc = _series(metrics, "knn_top1")
    if not epochs:
        return None
    fig = _figure()
    ax = _curve_axes(fig, "kNN top-1 on the test split", "kNN top-1 (%)")
    ax.plot(epochs, [100 * a for a in acc], marker="o", color="C0", label="trained backbone")
    if random_init is not None:
        ax.axhline(100 * random_init, color="C7", linestyle="--", label=f"random init ({100 * random_init:.2f}%)")
    ax.margins(y=0.15)  # room for the legend above / below the random-init line
    last = max(m["epoch"] for m in metrics)
    ax.set_xlim(0, last + max(0.3, 0.03 * last))  # from 0: the random-init line is the epoch-0 value
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


def plot_lr(metrics: list[dict]) -> Figure | None:
    groups: dict[str, tuple[list[int], list[float]]] = {}
    for m in metrics:
        per_group = m.get("lr_groups") or ({"all": m["lr"]} if m.get("lr") is not None else {})
        for name, lr in per_group.items():
            groups.setdefault(name, ([], []))
            groups[name][0].append(m["epoch"])
            groups[name][1].append(lr)
    if not groups:
        return None
    fig = _figure()
    ax = _curve_axes(fig, "Learning rate per parameter group", "lr")
    for i, (name, (epochs, lrs)) in enumerate(groups.items()):
        # Dashes on later groups: a fixed-lr predictor sits on top of the encoder at first.
        ax.plot(epochs, lrs, marker=_marker(len(epochs)), color=f"C{i}", linestyle="-" if i == 0 else "--", label=name)
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower left")
    fig.tight_layout()
    return fig


def plot_retrieval(
    train_set, test_set, train_feats: torch.Tensor, test_feats: torch.Tensor, n_queries: int = 8, top_k: int = 8
) -> tuple[Figure, tuple[int, int]]:
    """Grid: each row a test query, then its top_k cosine-nearest train images (green border =
    same class, red = other). Returns the figure and (same-class neighbours, neighbours shown)."""
    n_queries, top_k = min(n_queries, len(test_set)), min(top_k, len(train_set))
    queries = torch.randperm(len(test_set), generator=torch.Generator().manual_seed(SEED))[:n_queries]
    sim, idx = (test_feats[queries] @ train_feats.T).topk(top_k, dim=1)  # features are l2-normalised
    cols = 1 + top_k
    cell = min(1.3, 18 / cols)  # inches per image; wide grids shrink to stay under ~2000 px
    fig = _figure((cell * cols, cell * n_queries + 0.5))
    axes = np.atleast_2d(fig.subplots(n_queries, cols))
    hits = 0
    for r, q in enumerate(queries.tolist()):
        q_label = int(test_set.labels[q])
        _show(axes[r, 0], test_set.take([q])[0], QUERY, f"query: {test_set.classes[q_label]}")
        for c in range(top_k):
            j = int(idx[r, c])
            label = int(train_set.labels[j])
            same = label == q_label
            hits += same
            _show(
                axes[r, c + 1],
                train_set.take([j])[0],
                SAME if same else OTHER,
                f"{train_set.classes[label]}  {sim[r, c]:.2f}",
            )
    fig.suptitle(
        f"Test queries (blue) and their {top_k} nearest train images, titled class and cosine "
        "similarity; green = same class, red = other",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / (cell * n_queries + 0.5)))
    return fig, (hits, n_queries * top_k)


def _show(ax, image: torch.Tensor, colour: str, title: str) -> None:
    """A uint8 (3, S, S) image as stored (not normalised), framed in `colour`."""
    ax.imshow(image.permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3)
    ax.set_title(_short(title), fontsize=7, color=colour, pad=2)


def _short(text: str, n: int = 18) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def embedding_points(
    feats: torch.Tensor, labels: torch.Tensor, max_points: int = 2000, method: str = "tsne"
) -> tuple[dict | None, str]:
    """A 2-D map of up to max_points features: {xy, keep (the rows used), labels, method}, or
    (None, reason) when it cannot be made."""
    n = len(feats)
    if n < 5:
        return None, f"only {n} test images, too few for a map"
    keep = torch.arange(n)
    if n > max_points:
        keep = torch.randperm(n, generator=torch.Generator().manual_seed(SEED))[:max_points].sort().values
    x = feats[keep].numpy().astype(np.float32)
    if method == "umap":
        try:
            import umap
        except ImportError:
            return None, "umap-learn is not installed (pip install umap-learn), or use embedding_method='tsne'"
        xy = umap.UMAP(n_components=2, random_state=SEED).fit_transform(x)
    else:
        from sklearn.manifold import TSNE

        # Perplexity must stay below the number of points; 30 (the default) for anything sizeable.
        xy = TSNE(n_components=2, perplexity=min(30.0, (len(x) - 1) / 3), init="pca", random_state=SEED).fit_transform(
            x
        )
    name = "t-SNE" if method == "tsne" else "UMAP"
    return {"xy": np.asarray(xy), "keep": keep.numpy(), "labels": labels[keep].cpu().numpy(), "method": name}, ""


def plot_embedding(
    feats: torch.Tensor, labels: torch.Tensor, classes: list[str], max_points: int = 2000, method: str = "tsne"
) -> tuple[Figure | None, str]:
    """2-D map of up to max_points features coloured by class; (None, reason) when it cannot be drawn."""
    points, why = embedding_points(feats, labels, max_points, method)
    return (draw_embedding(points, classes), "") if points is not None else (None, why)


def draw_embedding(points: dict, classes: list[str]) -> Figure:
    xy, y, name = points["xy"], points["labels"], points["method"]
    fig = _figure((7, 5.5))
    ax = fig.subplots()
    many = len(classes) > MAX_LEGEND
    if many:  # a continuous map spreads hundreds of classes over distinct hues
        palette = matplotlib.colormaps["nipy_spectral"].resampled(len(classes))
    else:
        palette = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    for c in np.unique(y):
        pts = xy[y == c]
        colour = palette(int(c) % palette.N)
        ax.scatter(pts[:, 0], pts[:, 1], s=8, color=colour, label=None if many else classes[c], alpha=0.8)
    ax.set_title(
        f"{name} of {len(xy)} test-image features, coloured by class"
        + (f" ({len(classes)} classes, no legend)" if many else "")
    )
    ax.set_xlabel(f"{name} 1")
    ax.set_ylabel(f"{name} 2")
    ax.set_xticks([])
    ax.set_yticks([])
    if not many:
        ax.legend(
            title="class", loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, markerscale=2, frameon=False
        )
    fig.tight_layout()
    return fig


# --- the page ----------------------------------------------------------------------------------


def _markdown(
    run_dir: Path,
    metrics: list[dict],
    summary: dict | None,
    cfg: Config | None,
    figures: list[tuple[str, str, str]],
    notes: list[str],
    recoveries: list[dict] | None = None,
) -> str:
    h = _headline(metrics, summary, cfg)
    lines = [f"# Run report: {run_dir.name}", ""]
    if summary is None:
        lines += [
            f"**Unfinished run** (no summary.json): numbers are from the last finished epoch, "
            f"{h['epochs_done']} of {h['epochs']}.",
            "",
        ]
    lines += [
        "| | |",
        "|---|---|",
        f"| method | {h['method']} |",
        f"| dataset | {h['dataset']} |",
        f"| epochs | {h['epochs_done']} of {h['epochs']} |",
        f"| training time | {_duration(h['train_seconds'])} |",
        f"| throughput | {h['images_per_second']:.0f} images/s |",
        f"| kNN top-1 | {_knn_text(h['knn_top1'], h['knn_top1_random_init'], h['knn_epoch'])} |",
        f"| final loss | {h['loss']:.4f} |",
        f"| z-std | {_zstd_text(h['z_std'], h['z_std_healthy'])} |",
        f"| effective rank | {_rank_text(metrics)} |",
        f"| collapsed | {_yes_no(h['collapsed'])} |",
        f"| health (`simsiam doctor`) | {(summary or {}).get('health') or 'not judged yet'} |",
        "",
    ]
    if recoveries:
        lines += ["## Recoveries (--on-collapse recover)", ""]
        lines += ["| at epoch | what it showed | back to epoch | lr from there |", "|---|---|---|---|"]
        lines += [
            f"| {e.get('epoch')} | {e.get('reason')} | {e.get('back_to')} | x{e.get('lr_scale')} |" for e in recoveries
        ]
        lines.append("")
    for name, heading, caption in figures:
        lines += [f"## {heading}", "", f"![{Path(name).stem}]({name})", ""] + ([caption, ""] if caption else [])
    if notes:
        lines += ["## Not in this report", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def _headline(metrics: list[dict], summary: dict | None, cfg: Config | None) -> dict:
    """The numbers of the page: summary.json's when the run finished, else the last epoch's."""
    last = metrics[-1]
    knn_rows = [m for m in metrics if m.get("knn_top1") is not None]
    cfg_d = cfg.to_dict() if cfg is not None else {}
    h = {
        "method": cfg_d.get("method", "?"),
        "dataset": cfg_d.get("dataset", "?"),
        "epochs": cfg_d.get("epochs", "?"),
        "epochs_done": last["epoch"],
        "train_seconds": sum(m.get("epoch_seconds", 0.0) for m in metrics),
        "images_per_second": last.get("images_per_second", float("nan")),
        "knn_top1": knn_rows[-1]["knn_top1"] if knn_rows else None,
        "knn_top1_random_init": None,
        "knn_epoch": knn_rows[-1]["epoch"] if knn_rows else None,  # shown while the run is unfinished
        "loss": last.get("loss", float("nan")),
        "z_std": last.get("z_std"),
        "z_std_healthy": last.get("z_std_healthy"),
        "collapsed": None,
    }
    if cfg is not None and h["z_std"] is not None and h["z_std_healthy"]:
        h["collapsed"] = h["z_std"] < cfg.collapse_fraction * h["z_std_healthy"]
    if summary is not None:
        h.update({k: v for k, v in summary.items() if k in h})
        h["epochs_done"], h["knn_epoch"] = last["epoch"], None
    return h


def _knn_text(knn: float | None, random_init: float | None, epoch: int | None = None) -> str:
    if knn is None:
        return "not measured yet"
    text = f"{100 * knn:.2f}%" + (f" (epoch {epoch})" if epoch is not None else "")
    if random_init is not None:
        text += f" vs random init {100 * random_init:.2f}% ({100 * (knn - random_init):+.2f} points)"
    return text


def _zstd_text(z: float | None, healthy: float | None) -> str:
    if z is None:
        return "not recorded"
    if not healthy:
        return f"{z:.4f}"
    return f"{z:.4f} vs 1/sqrt(d) = {healthy:.4f} ({z / healthy:.2f} x)"


def _rank_text(metrics: list[dict]) -> str:
    rows = [m for m in metrics if m.get("rank_backbone") is not None]
    if not rows:
        return "not measured"
    m = rows[-1]

    def value(key: str) -> str:
        return f"{m[key]:.1f}" + (f" of at most {m[key + '_max']}" if m.get(key + "_max") else "")

    z = f"; z {value('rank_z')}" if m.get("rank_z") is not None else ""
    return f"features {value('rank_backbone')}{z} (epoch {m['epoch']}; 1 = collapsed)"


def _yes_no(flag: bool | None) -> str:
    return "unknown" if flag is None else ("**YES**" if flag else "no")


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
