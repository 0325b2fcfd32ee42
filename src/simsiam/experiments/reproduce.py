"""`simsiam reproduce NAME`: the paper's ablations (Sec. 4) and hypothesis experiments (Sec. 5) as
runnable groups of variants, each trained with the same loop, tabulated beside the paper's numbers.

    simsiam reproduce stop-gradient                 # CPU scale, minutes per variant
    simsiam reproduce all --seeds 2                 # every group, two seeds each
    simsiam reproduce predictor --scale paper --data-dir /data/imagenet   # the paper's setting, GPUs

Scales
- cpu (default): the embedded digits at 16 px, width-1/4 CIFAR ResNet-18, batch 128, base lr 1.0,
  10 epochs: about 40 s per variant on a 2-core CPU. It was chosen because SimSiam clearly beats
  its own random-init backbone there in that budget (kNN ~70% vs 46%), so "fails to learn" can be
  told from "learned". Another base is one `--preset` away (e.g. cifar10-cpu with --data-dir).
- paper: ImageNet ResNet-50, batch 512, base lr 0.05, 100 epochs (the ablations' setting, Sec. 4);
  the batch-size table uses plain SGD with 10 warm-up epochs from batch 1024 (Table 2).

The paper's numbers are ImageNet linear top-1 after 100 epochs; ours are kNN top-1 at the chosen
scale. At CPU scale only directions can be compared (collapse or not, which variant wins by more
than the seed noise), never the paper's decimals.

Each variant trains in OUT/<group>/<variant>/ (a full run directory). A variant whose configuration
already finished anywhere under OUT (OUT/index.json) with the same simsiam source code is not
trained again: an interrupted `reproduce` continues where it stopped, and the default SimSiam that
most groups share trains once. Changed code (or `--fresh`) trains every variant again.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Config, from_preset
from ..errors import ConfigError
from .plots import plot_runs
from .runner import Scale, Variant, run_variants
from .tables import checks as checks_table
from .tables import table

NOISE = 2.0  # kNN points: what CPU-scale differences below this cannot tell apart (see docs/reproduction.md)
SCALES = {
    "cpu": Scale("digits", dict(epochs=10, knn_every=0, report=False)),
    "paper": Scale("imagenet", dict(epochs=100, batch_size=512, lr=0.05, report=False)),
}


def _batch(scale: str) -> list[Variant]:
    paper = {64: 66.1, 128: 67.3, 256: 68.1, 512: 68.1, 1024: 68.0, 2048: 67.9, 4096: 64.0}
    sizes = [32, 64, 128, 256] if scale == "cpu" else list(paper)
    warm = 1 if scale == "cpu" else 10  # 10 of 100 epochs in the paper, for batch >= 1024
    return [
        Variant(f"batch {b}", dict(batch_size=b, **({"warmup_epochs": warm} if b >= 1024 else {})), paper.get(b))
        for b in sizes
    ]


def _kstep(scale: str) -> list[Variant]:
    # At CPU scale an epoch of digits is 11 steps at batch 128, so the group runs at batch 32
    # (44 steps per epoch); k = 100 exceeds an epoch there and is left out.
    steps = [("1", 68.1), ("10", 68.7), ("100", 68.9), ("epoch", 67.0)]
    if scale == "cpu":
        steps = [s for s in steps if s[0] != "100"]
    batch = {"batch_size": 32} if scale == "cpu" else {}
    return [Variant(f"{k}-step" if k != "epoch" else "1-epoch", dict(alternation=k, **batch), p) for k, p in steps]


def _bn(scale: str) -> list[Variant]:
    warm = 1 if scale == "cpu" else 10  # "10-epoch warm-up for this entry only" (Table 3a)
    return [
        Variant("none", dict(head_bn="none", warmup_epochs=warm), 34.6),
        Variant("hidden only", dict(head_bn="hidden"), 67.4),
        Variant("hidden + proj. output (default)", {}, 68.1),
        Variant("also pred. output", dict(head_bn="all"), None),
    ]  # paper: "unstable"


GROUPS = {
    "stop-gradient": lambda s: [
        Variant("with stop-gradient", {}, 67.7),
        Variant("without stop-gradient", dict(stop_gradient=False), 0.1),
    ],
    "predictor": lambda s: [
        Variant("lr fixed (default)", {}, 68.1),
        Variant("lr decayed", dict(fix_pred_lr=False), 67.7),
        Variant("fixed random init", dict(fixed_predictor=True), 1.5),
        Variant("no predictor", dict(predictor=False), 0.1),
    ],
    "batch-size": _batch,
    "bn": _bn,
    "similarity": lambda s: [
        Variant("cosine", {}, 68.1),
        Variant("cross-entropy", dict(similarity="cross-entropy"), 63.2),
    ],
    "symmetry": lambda s: [
        Variant("sym.", {}, 68.1),
        Variant("asym.", dict(symmetry="asym"), 64.8),
        Variant("asym. 2x", dict(symmetry="asym2x"), 67.3),
    ],
    "dim": lambda s: [
        Variant(f"d = {d}", dict(dim=d, pred_dim=d // 4), p)
        for d, p in [(256, 65.3), (512, 67.2), (1024, 67.5), (2048, 68.1)]
    ],
    "k-step": _kstep,
    "moving-average": lambda s: [
        Variant("SimSiam (predictor)", {}, 68.1),
        Variant("no predictor", dict(predictor=False), 0.1),
        Variant("no predictor + moving-average eta (m 0.8)", dict(predictor=False, target_memory=True), 55.0),
    ],
}


def configs(
    group: str, scale: str = "cpu", preset: str | None = None, seed: int = 0, **common
) -> list[tuple[Variant, Config]]:
    """The (variant, config) pairs of a group; `common` overrides every variant (e.g. data_dir)."""
    if group not in GROUPS:
        raise ConfigError(f"unknown experiment {group!r}; choose one of {', '.join(GROUPS)} or all")
    if scale not in SCALES:
        raise ConfigError(f"--scale must be cpu or paper, got {scale!r}")
    base = SCALES[scale]
    out = []
    for v in GROUPS[group](scale):
        cfg = from_preset(preset or base.preset, **{**base.overrides, **common, **v.overrides, "seed": seed})
        out.append((v, cfg))
    return out


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def run_group(
    group: str,
    out: str | Path,
    scale: str = "cpu",
    seeds: int = 1,
    preset: str | None = None,
    log=print,
    fresh: bool = False,
    **common,
) -> dict:
    """Train every variant of `group` (skipping finished ones) and write OUT/<group>/{results.json,
    table.md, z_std.png}. Returns the results with the checks of the paper's claims."""
    root = Path(out) / group
    jobs = [
        (v, cfg, root / (_slug(v.label) + (f"-seed{seed}" if seeds > 1 else "")))
        for seed in range(seeds)
        for v, cfg in configs(group, scale, preset, seed, **common)
    ]
    rows = run_variants(jobs, Path(out) / "index.json", log, group, fresh=fresh)
    results: dict[str, Any] = {
        "group": group,
        "scale": scale,
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
        "variants": _aggregate(rows),
    }
    results["checks"] = CHECKS.get(group, lambda r: [])(results["variants"])
    (root / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (root / "table.md").write_text(markdown(results))
    _plot(rows, root / "z_std.png", group)
    return results


def _aggregate(rows: list[dict]) -> dict:
    """Per variant: mean (and std over seeds) of kNN, z-std / (1/sqrt d), collapsed in any seed."""
    out: dict[str, dict] = {}
    for r in rows:
        out.setdefault(r["variant"], {"runs": []})["runs"].append(r)
    for v in out.values():
        runs = v.pop("runs")
        knn = [100 * r["knn_top1"] for r in runs if r.get("knn_top1") is not None]
        v.update(
            knn=statistics.mean(knn) if knn else None,
            knn_std=statistics.stdev(knn) if len(knn) > 1 else None,
            knn_random=100 * runs[0]["knn_top1_random_init"]
            if runs[0].get("knn_top1_random_init") is not None
            else None,
            z_ratio=statistics.mean(r["z_std"] / r["z_std_healthy"] for r in runs),
            loss=statistics.mean(r["loss"] for r in runs),
            collapsed=any(r["collapsed"] for r in runs),
            seeds=len(runs),
            paper=runs[0]["paper"],
            seconds=statistics.mean(r["train_seconds"] for r in runs),
            scale=_scale_text(runs[0]),
        )
    return out


def _scale_text(r: dict) -> str:
    return f"{r['dataset']} {r['arch']} x{r['width']:g}, bs {r['batch_size']}, {r['epochs']} ep"


# --- the paper's claims, checked on the measured variants ------------------------------------


def _check(claim: str, ok: bool, detail: str) -> dict:
    return {"claim": claim, "held": bool(ok), "detail": detail}


def _k(v: dict) -> str:
    return f"{v['knn']:.1f}%" if v.get("knn") is not None else "n/a"


def _stop_gradient(v: dict) -> list[dict]:
    w, wo = v["with stop-gradient"], v["without stop-gradient"]
    return [
        _check("with stop-gradient: no collapse", not w["collapsed"], f"z-std {w['z_ratio']:.2f} x 1/sqrt(d)"),
        _check(
            "without stop-gradient: collapse",
            wo["collapsed"],
            f"z-std {wo['z_ratio']:.2f} x 1/sqrt(d), loss {wo['loss']:.3f}",
        ),
        _check("without stop-gradient: kNN clearly below", wo["knn"] < w["knn"] - NOISE, f"{_k(wo)} vs {_k(w)}"),
    ]


def _predictor(v: dict) -> list[dict]:
    d, dec, fixed, none = (v[k] for k in ["lr fixed (default)", "lr decayed", "fixed random init", "no predictor"])
    return [
        _check("no predictor: collapse", none["collapsed"], f"z-std {none['z_ratio']:.2f} x 1/sqrt(d)"),
        _check(
            "fixed random predictor: kNN far under the default",
            fixed["knn"] < d["knn"] - 2 * NOISE,
            f"{_k(fixed)} vs {_k(d)}",
        ),
        _check("predictor lr fixed >= decayed (within noise)", d["knn"] >= dec["knn"] - NOISE, f"{_k(d)} vs {_k(dec)}"),
    ]


def _bn_check(v: dict) -> list[dict]:
    none, d = v["none"], v["hidden + proj. output (default)"]
    return [
        _check(
            "no BN in the heads: much worse than the default",
            none["knn"] < d["knn"] - 2 * NOISE,
            f"{_k(none)} vs {_k(d)}",
        )
    ]


def _moving_average(v: dict) -> list[dict]:
    mem, none = v["no predictor + moving-average eta (m 0.8)"], v["no predictor"]
    return [
        _check(
            "moving-average eta without predictor: no collapse",
            not mem["collapsed"],
            f"z-std {mem['z_ratio']:.2f} x 1/sqrt(d)",
        ),
        _check(
            "moving-average eta: kNN well above no predictor",
            mem["knn"] > none["knn"] + 2 * NOISE,
            f"{_k(mem)} vs {_k(none)}",
        ),
    ]


def _kstep_check(v: dict) -> list[dict]:
    one, ten = v["1-step"], v["10-step"]
    return [
        _check("10-step alternation: no collapse", not ten["collapsed"], f"z-std {ten['z_ratio']:.2f} x 1/sqrt(d)"),
        _check(
            "10-step not worse than 1-step beyond noise", ten["knn"] >= one["knn"] - NOISE, f"{_k(ten)} vs {_k(one)}"
        ),
    ]


CHECKS = {
    "stop-gradient": _stop_gradient,
    "predictor": _predictor,
    "bn": _bn_check,
    "moving-average": _moving_average,
    "k-step": _kstep_check,
}


def markdown(results: dict) -> str:
    rows = []
    for label, v in results["variants"].items():
        knn = "n/a" if v["knn"] is None else f"{v['knn']:.2f}"
        if v["knn"] is not None and v["knn_std"] is not None:
            knn += f" ± {v['knn_std']:.2f}"
        rnd = "n/a" if v["knn_random"] is None else f"{v['knn_random']:.2f}"
        paper = "-" if v["paper"] is None else f"{v['paper']:.1f}"
        if v["paper"] is None and "pred. output" in label:
            paper = "unstable"
        collapsed = "yes" if v["collapsed"] else "no"
        scale = f"{v['scale']}, {v['seeds']} seed(s)"
        rows.append([label, knn, rnd, f"{v['z_ratio']:.2f}", collapsed, paper, scale])
    header = ["variant", "kNN top-1 (ours)", "random init", "z-std / (1/sqrt d)", "collapsed"]
    header += ["paper (ImageNet linear)", "scale"]
    lines = [f"### {results['group']} ({results['scale']} scale, {results['date']})", "", *table(header, rows)]
    if results["checks"]:
        lines += ["", *checks_table(results["checks"])]
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], path: Path, group: str) -> None:
    healthy = rows[0].get("z_std_healthy") if rows else None
    same_d = len({r["z_std_healthy"] for r in rows}) == 1
    plot_runs(
        rows,
        path,
        "z_std",
        f"{group}: std of l2-normalised z",
        "z-std",
        hline=healthy if same_d else None,
        scale_by_healthy=not same_d,
    )


def reproduce(
    names: list[str],
    out: str | Path = "runs/reproduce",
    scale: str = "cpu",
    seeds: int = 1,
    preset: str | None = None,
    log: Callable[[str], None] = print,
    fresh: bool = False,
    **common,
) -> list[dict]:
    """`simsiam reproduce`: run each group, print its table; several groups also go to OUT/tables.md.
    Returns each group's results."""
    if seeds <= 0:
        raise ConfigError("--seeds must be positive")
    out = Path(out)
    results = []
    for group in names:
        results.append(run_group(group, out, scale, seeds, preset, log=log, fresh=fresh, **common))
        log((out / group / "table.md").read_text())
    if len(names) > 1:
        (out / "tables.md").write_text("\n".join(markdown(r) for r in results))
    held = [c for r in results for c in r["checks"]]
    if held:
        log(f"paper's claims held here: {sum(c['held'] for c in held)} of {len(held)}; tables in {out}")
    return results
