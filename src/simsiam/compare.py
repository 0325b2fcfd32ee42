"""`simsiam compare`: SimSiam against SimCLR, BYOL and SwAV (paper Table 4, Sec. 6) on the same
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
import os
import subprocess
import sys
import time
from pathlib import Path

from .config import Config, from_preset
from .errors import ConfigError, TrainingError
from .reproduce import Variant, config_key, run_variants

PAPER = {  # Table 4: ImageNet linear top-1 at 100 / 200 / 400 / 800 epochs
    "simsiam": (68.1, 70.0, 70.8, 71.3),
    "simclr": (66.5, 68.3, 69.8, 70.4),
    "byol": (66.5, 70.6, 73.2, 74.3),
    "swav": (66.5, 69.1, 70.7, 71.8),
}
SCALES = {
    "cpu": dict(preset="digits", overrides=dict(epochs=10, knn_every=1, report=False)),
    "paper": dict(preset="imagenet", overrides=dict(epochs=100, batch_size=512, knn_every=10, report=False)),
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
    from .methods import DEFAULTS, METHODS

    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if scale not in SCALES:
        raise ConfigError(f"--scale must be cpu or paper, got {scale!r}")
    base = SCALES[scale]
    cfg = from_preset(preset or base["preset"], **{**base["overrides"], **common, "method": method})
    if not own_augmentation:  # undo the method's augmentation defaults: SimSiam's inputs for everyone
        simsiam = from_preset(preset or base["preset"], **{**base["overrides"], **common})
        cfg = cfg.replace(**{k: getattr(simsiam, k) for k in AUGMENTATION if k in DEFAULTS[method]})
    return cfg


def _subprocess_train(cfg: Config) -> dict:
    """`simsiam train` in a child process: the child's peak memory is this method's alone."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir.with_name(run_dir.name + ".config.json")
    cfg_path.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    child = subprocess.Popen([sys.executable, "-m", "simsiam", "train", "--config", str(cfg_path)])
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise TrainingError(
            f"training {cfg.method} failed (exit {child.returncode}); its output is above, its run directory {run_dir}"
        )
    summary = json.loads((run_dir / "summary.json").read_text())
    if summary.get("peak_memory_of") == "process RSS":
        summary["peak_memory_mb"] = usage.ru_maxrss / 1024  # KiB on Linux
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def compare(
    methods: list[str],
    out: str | Path = "runs/compare",
    scale: str = "cpu",
    preset: str | None = None,
    own_augmentation: bool = False,
    log=print,
    in_process: bool = False,
    fresh: bool = False,
    **common,
) -> dict:
    """Train each method with the same budget, probe it linearly, write OUT/{comparison.md,
    results.json, knn.png}. `in_process` trains in this process (tests; memory is then shared)."""
    if not methods:
        raise ConfigError("name at least one method, e.g. simsiam simclr byol swav")
    out = Path(out)
    jobs = [
        (Variant(m, {}, PAPER.get(m, (None,))[0]), method_config(m, scale, preset, own_augmentation, **common), out / m)
        for m in methods
    ]
    rows = run_variants(
        jobs, out / "index.json", log, "compare", runner=None if in_process else _subprocess_train, fresh=fresh
    )
    for row, (_, cfg, _) in zip(rows, jobs):
        row["linear_fast"] = _linear_fast(Path(row["run_dir"]), cfg)
        row["config_key"] = config_key(cfg)
    results = {"scale": scale, "date": time.strftime("%Y-%m-%d"), "rows": rows, "own_augmentation": own_augmentation}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "comparison.md").write_text(markdown(results))
    _plot(rows, out / "knn.png")
    return results


def _linear_fast(run_dir: Path, cfg: Config) -> float | None:
    cached = run_dir / "eval_linear_fast.json"
    if cached.exists():
        return json.loads(cached.read_text())["top1"]
    from .data import load_splits
    from .evaluate import linear_report
    from .runs import load_backbone
    from .train import resolve_device

    backbone, cfg = load_backbone(run_dir, resolve_device(cfg.device))
    train_set, test_set = (s.labeled() for s in load_splits(cfg))
    if len(train_set) == 0 or len(test_set) == 0:
        return None
    res = linear_report(backbone, train_set, test_set, cfg.image_size, cfg.mean, cfg.std, fast=True, progress=False)
    cached.write_text(json.dumps(res, indent=2) + "\n")
    return res["top1"]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def markdown(results: dict) -> str:
    rows = results["rows"]
    r0 = rows[0]
    aug = (
        "each method its own augmentation" if results["own_augmentation"] else "the same (SimSiam) augmentation for all"
    )
    lines = [
        f"### Method comparison ({results['scale']} scale, {results['date']})",
        "",
        f"{r0['dataset']}, {r0['arch']} x{r0['width']:g}, batch {r0['batch_size']}, {r0['epochs']} epochs each, "
        f"{aug}, {r0['device']}.",
        "",
        "| method | kNN top-1 | linear (fast) | random-init kNN | z-std / (1/sqrt d) | images/s | peak memory (MB) "
        "| paper ImageNet linear 100/200/400/800 ep |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        paper = " / ".join(f"{p:.1f}" for p in PAPER.get(r["variant"], ())) or "-"
        mem = "n/a" if r.get("peak_memory_mb") is None else f"{r['peak_memory_mb']:.0f} ({r.get('peak_memory_of')})"
        lines.append(
            f"| {r['variant']} | {_pct(r.get('knn_top1'))} | {_pct(r.get('linear_fast'))} "
            f"| {_pct(r.get('knn_top1_random_init'))} | {r['z_std'] / r['z_std_healthy']:.2f} "
            f"| {r['images_per_second']:.0f} | {mem} | {paper} |"
        )
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], path: Path) -> None:
    from .report import plot_curves
    from .runs import read_metrics

    curves = {}
    for r in rows:
        metrics = read_metrics(r["run_dir"])
        curves[r["variant"]] = [
            {**m, "knn_top1": 100 * m["knn_top1"]} for m in metrics if m.get("knn_top1") is not None
        ]
    fig = plot_curves(curves, "knn_top1", "kNN top-1 per epoch, same budget", "kNN top-1 (%)")
    if fig is not None:
        fig.savefig(path)
