"""`simsiam compare`: SimSiam against SimCLR, BYOL, SwAV and MoCo v2 (paper Table 4, Sec. 6) on the same
data, backbone, augmentation and number of epochs, in one table and one kNN-vs-epoch plot.

    simsiam compare simsiam simclr byol swav              # CPU scale: digits, 10 epochs each
    simsiam compare simsiam byol --scale paper --data-dir /data/imagenet

Each method trains in its own process (so the peak memory in the table is that method's: CUDA
memory allocated on a GPU, the process's resident size on a CPU), into OUT/<method>/; then a fast
linear probe (features extracted once, L-BFGS) scores its backbone. By default every method uses
SimSiam's augmentation (same inputs for all); `--own-augmentation` gives each method its own
(e.g. BYOL's asymmetric blur and solarize). The paper's numbers are ImageNet linear top-1 of its
own reproductions at 100/200/400/800 epochs, for reference: the CPU scale can only rank methods
on a small problem, not reproduce them.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from ..config import Config
from ..configure import from_preset
from ..errors import ConfigError
from ..methods import METHODS, option_owners
from ..runtime import commit, machine
from .plots import plot_runs
from .runner import Scale, Variant, config_key, linear_fast, run_variants, train_in_subprocess
from .tables import KNN_FLOOR, mean_std, pooled_sd, table

PAPER = {  # Table 4: ImageNet linear top-1 at 100 / 200 / 400 / 800 epochs
    "simsiam": (68.1, 70.0, 70.8, 71.3),
    "simclr": (66.5, 68.3, 69.8, 70.4),
    "byol": (66.5, 70.6, 73.2, 74.3),
    "swav": (66.5, 69.1, 70.7, 71.8),
    "mocov2": (67.4, 69.9, 71.0, 72.2),
}
SCALES = {
    "cpu": Scale("digits", dict(epochs=10, knn_every=1, report=False)),
    "paper": Scale("imagenet", dict(epochs=100, batch_size=512, knn_every=10, report=False)),
}
AUGMENTATION = (
    "crop_scale",
    "crop_ratio",
    "hflip",
    "jitter",
    "jitter_p",
    "gray_p",
    "blur_p",
    "blur_sigma",
    "solarize_p",
    "blur_p2",
    "solarize_p2",
)


def method_config(
    method: str, scale: str = "cpu", preset: str | None = None, own_augmentation: bool = False, **common
) -> Config:
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if scale not in SCALES:
        raise ConfigError(f"--scale must be cpu or paper, got {scale!r}")
    base = SCALES[scale]
    owners = option_owners()  # a method's own option given for all (--set temperature=...) goes to those with it
    common = {k: v for k, v in common.items() if k not in owners or method in owners[k]}
    cfg = from_preset(preset or base.preset, **{**base.overrides, **common, "method": method})
    if not own_augmentation:  # undo the method's augmentation defaults: SimSiam's inputs for everyone
        run_only = {k: v for k, v in common.items() if k not in owners}
        simsiam = from_preset(preset or base.preset, **{**base.overrides, **run_only})
        cfg = cfg.replace(**{k: getattr(simsiam, k) for k in AUGMENTATION if k in METHODS[method].DEFAULTS})
    return cfg


def compare(
    methods: list[str],
    out: str | Path = "runs/compare",
    scale: str = "cpu",
    preset: str | None = None,
    own_augmentation: bool = False,
    log: Callable[[str], None] = print,
    in_process: bool = False,
    fresh: bool = False,
    seeds: int = 1,
    **common,
) -> dict:
    """Train each method with the same budget (`seeds` times: seeds 0, 1, ...), probe it
    linearly, write OUT/{comparison.md, results.json, knn.png}. `in_process` trains in this
    process (tests; memory is then shared)."""
    if not methods:
        raise ConfigError("name at least one method, e.g. simsiam simclr byol swav")
    if seeds <= 0:
        raise ConfigError("--seeds must be positive")
    owners = option_owners()
    for name in [k for k in common if k in owners and not set(owners[k]) & set(methods)]:
        raise ConfigError(
            f"--set {name} is an option of {', '.join(owners[name])}, none of the methods compared "
            f"({' '.join(methods)})"
        )
    out = Path(out)
    jobs = [
        (
            Variant(m, {}, PAPER.get(m, (None,))[0]),
            method_config(m, scale, preset, own_augmentation, **common).replace(seed=seed),
            out / (m if seed == 0 else f"{m}-seed{seed}"),
        )
        for seed in range(seeds)
        for m in methods
    ]
    rows = run_variants(
        jobs, out / "index.json", log, "compare", runner=None if in_process else train_in_subprocess, fresh=fresh
    )
    for row, (_, cfg, _) in zip(rows, jobs):
        row["linear_fast"] = linear_fast(Path(row["run_dir"]), cfg.device)
        row["config_key"] = config_key(cfg)
    results = {
        "scale": scale,
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit(),
        "machine": machine(),
        "seeds": seeds,
        "rows": rows,
        "own_augmentation": own_augmentation,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "comparison.md").write_text(markdown(results))
    _plot(rows, out / "knn.png")
    return results


def markdown(results: dict) -> str:
    """The table: per method the mean ± std over seeds; with several seeds and SimSiam among the
    methods, each method's kNN gap to SimSiam in pooled seed stds."""
    rows = results["rows"]
    r0 = rows[0]
    aug = (
        "each method its own augmentation" if results["own_augmentation"] else "the same (SimSiam) augmentation for all"
    )
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(r)

    def pcts(runs: list[dict], key: str) -> list[float]:
        return [100 * r[key] for r in runs if r.get(key) is not None]

    base = pcts(by.get("simsiam", []), "knn_top1")
    seeds = max(len(runs) for runs in by.values())
    body = []
    for method, runs in by.items():
        paper = " / ".join(f"{p:.1f}" for p in PAPER.get(method, ())) or "-"
        peak = [r["peak_memory_mb"] for r in runs if r.get("peak_memory_mb") is not None]
        mem = f"{max(peak):.0f} ({runs[0].get('peak_memory_of')})" if peak else "n/a"
        knn = pcts(runs, "knn_top1")
        gap = "-"
        if method != "simsiam" and len(base) > 1 and len(knn) > 1:
            d = statistics.mean(knn) - statistics.mean(base)
            gap = f"{d:+.1f} ({d / pooled_sd(knn, base, KNN_FLOOR):+.1f} sd)"
        body.append(
            [
                method,
                mean_std(knn),
                gap,
                mean_std(pcts(runs, "linear_fast")),
                mean_std(pcts(runs, "knn_top1_random_init")),
                mean_std([r["z_std"] / r["z_std_healthy"] for r in runs]),
                f"{statistics.mean(r['images_per_second'] for r in runs):.0f}",
                mem,
                paper,
            ]
        )
    header = ["method", "kNN top-1", "kNN vs SimSiam", "linear (fast)", "random-init kNN", "z-std / (1/sqrt d)"]
    header += ["images/s", "peak memory (MB)", "paper ImageNet linear 100/200/400/800 ep"]
    source = f"{results['scale']} scale, {results['date']}, {results.get('commit', 'unknown commit')}"
    lines = [
        f"### Method comparison ({source})",
        "",
        f"{r0['dataset']}, {r0['arch']} x{r0['width']:g}, batch {r0['batch_size']}, {r0['epochs']} epochs each, "
        f"{aug}, {r0['device']}, {seeds} seed(s) (mean ± std).",
        "",
        *table(header, body),
    ]
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], path: Path) -> None:
    title = "kNN top-1 per epoch, same budget"
    plot_runs(rows, path, "knn_top1", title, "kNN top-1 (%)", value=lambda m: 100 * m["knn_top1"])
