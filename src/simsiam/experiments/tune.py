"""`simsiam tune`: the lr and weight decay for your data, without labels.

Successive halving (Jamieson & Talwalkar 2016) over a grid of multiples of the config's lr and
weight decay: every candidate trains a short run (`first_epochs`), the best 1/eta go on to a run
eta times longer, and so on until one is left or the runs reach the config's epochs, within a
wall-clock budget. Each run is a fresh run of that length (its own cosine), with the rank measured
every epoch and no kNN, no labels read.

How a run is judged (docs/health.md, digits, 3 seeds per setting):
1. a run `simsiam doctor` calls collapsed (complete, dimensional, of the head) or diverged is ruled out;
2. so is a run whose z rank slid under 15% of its highest (`doctor.sliding`): every run at 3x the
   good lr did, and ended 5 points under it;
3. the rest are ranked by view retrieval (`health.view_retrieval`: how often an augmented view of an
   image finds its other view among 1024 images), under the config's own augmentation: Spearman
   +0.80 with the final kNN along the lr axis, where the effective rank had -0.08. It does not judge
   the augmentation itself (weak crops score low and do best on digits), so the grid holds the
   augmentation fixed.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..config import Config
from ..errors import ConfigError, TrainingError


@dataclass
class Trial:
    lr_factor: float
    wd_factor: float
    rung: int
    epochs: int
    state: str = ""  # the doctor's verdict
    score: float | None = None  # view retrieval; None when ruled out
    why_out: str = ""  # why it was ruled out (empty: it was not)
    seconds: float = 0.0
    run_dir: str = ""

    @property
    def ok(self) -> bool:
        return self.score is not None


def halving(
    candidates: list[tuple[float, float]],
    run: Callable[[float, float, int, int], Trial],
    first_epochs: int,
    max_epochs: int,
    eta: int,
    budget_seconds: float,
    clock: Callable[[], float] = time.perf_counter,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[Trial, list[Trial]]:
    """(the pick, every trial) of successive halving over `candidates` ((lr factor, wd factor)),
    `run(lr_factor, wd_factor, epochs, rung)` training and judging one. A rung runs only when the
    time per epoch measured so far says it fits in what is left of the budget; the first rung must
    (a ConfigError after its first trial otherwise). The pick is the best scored trial of the last
    rung that ran; ties go to the earlier candidate."""
    t0, trials, epochs_done = clock(), [], 0
    alive, epochs, rung = list(candidates), min(first_epochs, max_epochs), 0
    while True:
        this: list[Trial] = []
        for i, (lr_f, wd_f) in enumerate(alive):
            if epochs_done:
                spent = clock() - t0
                need = spent / epochs_done * epochs * (len(alive) - i)
                if spent + need > budget_seconds:
                    raise ConfigError(
                        f"--budget-minutes {budget_seconds / 60:g} is too small: the first rung alone needs about "
                        f"{(spent + need) / 60:.1f} min ({len(alive)} candidates x {epochs} epochs at "
                        f"{spent / epochs_done:.1f} s an epoch here); raise it, use fewer candidates or a smaller "
                        "--first-epochs"
                    )
            trial = run(lr_f, wd_f, epochs, rung)
            epochs_done += epochs
            this.append(trial)
            trials.append(trial)
        scored = sorted((t for t in this if t.ok), key=lambda t: -(t.score or 0.0))  # stable: ties keep grid order
        if not scored:
            raise TrainingError(
                f"every candidate of rung {rung + 1} was ruled out ("
                + "; ".join(f"lr x{t.lr_factor:g} wd x{t.wd_factor:g}: {t.why_out}" for t in this)
                + "); widen the grid towards the side that did not collapse, or run `simsiam doctor` on a trial"
            )
        keep = scored[: max(1, math.ceil(len(alive) / eta))]
        next_epochs = min(max_epochs, epochs * eta)
        if len(keep) == 1 or epochs >= max_epochs:
            return keep[0], trials
        spent = clock() - t0
        need = spent / epochs_done * next_epochs * len(keep)
        if spent + need > budget_seconds:
            log(f"the budget ends here: rung {rung + 2} would need about {need / 60:.1f} more min")
            return keep[0], trials
        alive, epochs, rung = [(t.lr_factor, t.wd_factor) for t in keep], next_epochs, rung + 1


def tune(
    base: Config,
    out: str | Path,
    lr_factors: list[float],
    wd_factors: list[float],
    budget_minutes: float,
    first_epochs: int = 0,
    eta: int = 3,
    log: Callable[[str], None] = print,
) -> tuple[Trial, list[Trial], Path]:
    """Successive halving of `base` over lr x `lr_factors` and weight decay x `wd_factors`; writes
    OUT/tune.json (every trial) and OUT/best.json (the pick's config, `simsiam train --config`).
    Returns (the pick, every trial, the path of best.json)."""
    out = Path(out)
    first = first_epochs or max(1, math.ceil(base.epochs / eta))
    candidates = [(lr, wd) for lr in lr_factors for wd in wd_factors]
    log(
        f"tune: {len(candidates)} candidates (lr {base.lr:g} x {', '.join(f'{f:g}' for f in lr_factors)}; weight "
        f"decay {base.weight_decay:g} x {', '.join(f'{f:g}' for f in wd_factors)}), first rung {first} epochs, "
        f"eta {eta}, budget {budget_minutes:g} min -> {out}"
    )

    scoring = scoring_set(base)  # the same images and augmentation for every trial

    def run(lr_f: float, wd_f: float, epochs: int, rung: int) -> Trial:
        trial = judge_trial(base, out, lr_f, wd_f, epochs, rung, scoring)
        shown = f"view retrieval {100 * trial.score:.2f}%" if trial.score is not None else f"ruled out: {trial.why_out}"
        log(f"rung {rung + 1}: lr x{lr_f:g}, wd x{wd_f:g}, {epochs} epochs: {trial.state}, {shown}")
        return trial

    best, trials = halving(candidates, run, first, base.epochs, eta, budget_minutes * 60, log=log)
    picked = base.replace(lr=base.lr * best.lr_factor, weight_decay=base.weight_decay * best.wd_factor, run_dir=None)
    from ..checkpoint import write_atomic

    out.mkdir(parents=True, exist_ok=True)
    path = out / "best.json"
    write_atomic(path, json.dumps(picked.to_dict(), indent=2) + "\n")
    record = {"best": asdict(best), "trials": [asdict(t) for t in trials], "base": base.to_dict()}
    write_atomic(out / "tune.json", json.dumps(record, indent=2) + "\n")
    return best, trials, path


def scoring_set(cfg: Config) -> tuple:
    """(the uint8 images, the Augment) view retrieval scores a backbone of `cfg`'s data on: the
    effective rank's 1024-image sample of the training images, `cfg`'s own augmentation."""
    import torch

    from ..data import load_splits
    from ..data.augment import Augment
    from ..health import rank_images

    sample = rank_images(load_splits(cfg)[0], cfg.rank_samples or 1024)
    return sample.take(torch.arange(len(sample))), Augment.from_config(cfg)


def judge_trial(
    base: Config, out: Path, lr_f: float, wd_f: float, epochs: int, rung: int, scoring: tuple | None = None
) -> Trial:
    """Train one candidate for `epochs` (no labels read) and judge it (the module's docstring);
    `scoring`: `scoring_set(base)`, made here when not given."""
    from ..doctor import HEALTHY, judge, sliding
    from ..health import view_retrieval
    from ..runs import load_backbone, read_events, read_metrics
    from ..runtime import resolve_device
    from .runner import fit

    run_dir = out / "trials" / f"rung{rung + 1}-lr{lr_f:g}-wd{wd_f:g}"
    cfg = base.replace(
        lr=base.lr * lr_f,
        weight_decay=base.weight_decay * wd_f,
        epochs=epochs,
        run_dir=str(run_dir),
        resume=False,
        knn_every=0,
        knn_random_init=False,
        rank_every=1,
        rank_samples=base.rank_samples or 1024,
        on_collapse="warn",
        report=False,
        tensorboard=False,
    )
    trial = Trial(lr_f, wd_f, rung, epochs, run_dir=str(run_dir))
    t0 = time.perf_counter()
    try:
        fit(cfg)
    except TrainingError as e:  # a non-finite loss: the run stopped, which rules it out
        trial.why_out = str(e).split(";")[0]
    trial.seconds = time.perf_counter() - t0
    rows = read_metrics(run_dir)
    trial.state = judge(cfg, rows, read_events(run_dir)).state
    if trial.why_out:
        return trial
    if trial.state not in (HEALTHY, "not learning"):  # learning slowly is for the score to judge
        trial.why_out = trial.state
        return trial
    slide = sliding(rows)
    if slide:
        trial.why_out = f"z rank slid from {slide[0]:.0f} to {slide[1]:.0f} (on the edge of a collapse)"
        return trial
    backbone, _ = load_backbone(run_dir, device=resolve_device(cfg.device))
    images, augment = scoring or scoring_set(base)
    trial.score = view_retrieval(backbone, images.to(next(backbone.parameters()).device), augment)
    return trial
