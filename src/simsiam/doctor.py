"""`simsiam doctor RUN_DIR`: the state of a run from what it recorded, no labels needed, with the
likely causes ranked and the commands to try.

Each epoch is judged on its line of metrics.jsonl (`epoch_state`); the run's state is its last
judged epoch's, "since" the first epoch of the stretch that ends the run in that state. The rules
and their thresholds rest on runs measured in docs/health.md (digits, 3 seeds per setting):

- **complete collapse**: the rank of z at most COLLAPSED_RANK_Z and z-std under
  --collapse-fraction x 1/sqrt(d). No stop-gradient, no predictor: z rank 1.3 to 1.4, z-std 0.005
  (healthy 0.022), kNN at random init's or under.
- **dimensional collapse**: the rank of z at most COLLAPSED_RANK_Z while z-std looks healthy. An lr
  10 or 30x the preset's: z rank about 2, z-std 0.016 to 0.019; z-std alone calls it fine.
  Collapsed runs ended with a z rank of 3 or less, working ones with 8 or more (30 of 30 runs).
- **head collapse**: z-std under the line but the rank of z above COLLAPSED_RANK_Z: no BN in the
  heads (z-std 0.0014, z rank about 10, features rank 38.7 of 128, kNN 58.9% against 46.2% at
  random init). The projector's output collapsed; the backbone's features did not.
- **not learning**: in a run of at least NOT_LEARNING_EPOCHS epochs, the loss fell by less than
  NOT_LEARNING_LOSS from its first epoch to its last. An lr 300x under the preset's (docs/health.md).
- **diverged**: the run stopped on a non-finite loss or model (its "diverged" event), or a rank
  is NaN.
Without the rank (--rank-samples 0, runs before it) only z-std judges: under the line is called a
complete collapse, which a head collapse also looks like.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .config import PRESETS, Config
from .errors import DataError
from .records import MetricsRow

COLLAPSED_RANK_Z = 4.0  # a z rank at most this is a collapse (collapsed runs ended <= 3, working ones >= 8)
WORKING_RANK_Z = 8.0  # ... at least this, a checkpoint a recovery may go back to (between the two: sliding)
NOT_LEARNING_LOSS = 0.05  # the loss fell less than this over the run (first epoch's mean -> last epoch's) ...
NOT_LEARNING_EPOCHS = 10  # ... of at least this many epochs (at 10: lr 0.1 fell >= 0.129, lr 0.003 <= 0.007)
LR_HIGH_DROP = 0.15  # healthy, but the z rank fell under this fraction of its highest: lr 3x the preset's
HEALTHY = "healthy"
STATES = (HEALTHY, "complete collapse", "dimensional collapse", "head collapse", "not learning", "diverged")


@dataclass
class Cause:
    why: str
    command: str | None = None


@dataclass
class Verdict:
    state: str  # one of STATES, or "no epoch yet"
    since: int | None = None  # the first epoch of the final stretch in this state (None: healthy)
    epochs: int = 0  # epochs finished
    evidence: list[str] = field(default_factory=list)
    causes: list[Cause] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return self.state == HEALTHY

    def to_json(self) -> dict:
        return {
            "state": self.state,
            "since_epoch": self.since,
            "epochs": self.epochs,
            "evidence": self.evidence,
            "causes": [{"why": c.why, "command": c.command} for c in self.causes],
            "notes": self.notes,
        }


def epoch_state(row: MetricsRow, collapse_fraction: float) -> str | None:
    """The state one epoch's line shows: a collapse (complete, dimensional or of the head), "diverged"
    (a NaN rank), HEALTHY, or None when the line cannot tell (no rank measured and z-std fine)."""
    z_low = row.z_std < collapse_fraction * row.z_std_healthy
    ranks = [r for r in (row.rank_backbone, row.rank_z) if r is not None]
    if any(math.isnan(r) for r in ranks) or not math.isfinite(row.loss):
        return "diverged"
    if row.rank_z is None:
        return "complete collapse" if z_low else (HEALTHY if ranks else None)
    if row.rank_z <= COLLAPSED_RANK_Z:
        return "complete collapse" if z_low else "dimensional collapse"
    return "head collapse" if z_low else HEALTHY


def diagnose(run_dir: str | Path) -> Verdict:
    """The run's state, its evidence, and the likely causes ranked (see the module's docstring)."""
    from .configure import load_json
    from .runs import read_events, read_metrics

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise DataError(f"{run_dir} is not a simsiam run directory (no config.json); give the --run-dir of a run")
    cfg = load_json(run_dir / "config.json")
    rows = read_metrics(run_dir)
    events = read_events(run_dir)
    verdict = judge(cfg, rows, events)
    verdict.causes = _causes(verdict.state, cfg, run_dir)
    verdict.notes += _notes(cfg, rows, events)
    return verdict


def safe_to_return_to(row: MetricsRow, collapse_fraction: float, rank_measured: bool) -> bool:
    """Whether --on-collapse recover may go back to the checkpoint of `row`'s epoch: healthy with a z
    rank at the working level (WORKING_RANK_Z), not one sliding towards the collapse line (an lr 10x
    too high passes through ranks 5-8 on its way down: docs/health.md). Where the run measures no rank
    at all, z-std's call."""
    if row.rank_z is None:
        return not rank_measured and row.z_std >= collapse_fraction * row.z_std_healthy
    return epoch_state(row, collapse_fraction) == HEALTHY and row.rank_z >= WORKING_RANK_Z


def judge(cfg: Config, rows: list[MetricsRow], events: list[dict]) -> Verdict:
    """The state of a run of `cfg` from its epoch lines and events, with the evidence (no causes)."""
    fraction = cfg.collapse_fraction
    epochs = rows[-1].epoch if rows else 0
    diverged = [e for e in events if e.get("event") == "diverged" and e.get("epoch", 0) > epochs]
    if diverged:
        e = diverged[-1]
        return Verdict("diverged", e.get("epoch"), epochs, [str(e.get("message", "a non-finite loss or model"))])
    if not rows:
        return Verdict("no epoch yet", None, 0, ["metrics.jsonl holds no finished epoch"])
    judged = [(row, state) for row in rows if (state := epoch_state(row, fraction)) is not None]
    if not judged:  # no rank and z-std fine everywhere: the z-std rule calls it healthy
        judged = [(row, HEALTHY) for row in rows]
    last, state = judged[-1]
    since = last.epoch  # the first epoch of the unhealthy stretch that ends the run (any kind of collapse)
    for row, s in reversed(judged):
        if (s == HEALTHY) != (state == HEALTHY):
            break
        since = row.epoch
    evidence = _evidence(last, rows, fraction)
    if state == HEALTHY and _not_learning(rows):
        state, since = "not learning", rows[0].epoch
        evidence.append(
            f"the loss fell by {rows[0].loss - rows[-1].loss:.3f} in {len(rows)} epochs "
            f"({rows[0].loss:.3f} -> {rows[-1].loss:.3f}; healthy runs fall by 0.2 or more)"
        )
    return Verdict(state, None if state == HEALTHY else since, epochs, evidence)


def _not_learning(rows: list[MetricsRow]) -> bool:
    return len(rows) >= NOT_LEARNING_EPOCHS and rows[0].loss - rows[-1].loss < NOT_LEARNING_LOSS


def _evidence(last: MetricsRow, rows: list[MetricsRow], fraction: float) -> list[str]:
    out = []
    if last.rank_z is not None:
        out.append(
            f"z: effective rank {last.rank_z:.1f} of at most {last.rank_z_max} at epoch {last.epoch} (collapsed at "
            f"{COLLAPSED_RANK_Z:g} or less; in docs/health.md collapsed runs ended at 3 or less, working ones at 8 "
            "or more)"
        )
    ratio = last.z_std / last.z_std_healthy
    line = "under" if ratio < fraction else "above"
    out.append(
        f"z-std {last.z_std:.4f} = {ratio:.2f} x 1/sqrt(d) at epoch {last.epoch} "
        f"({line} the collapse line {fraction:g})"
    )
    if last.rank_backbone is not None:
        out.append(f"features: effective rank {last.rank_backbone:.1f} of at most {last.rank_backbone_max}")
    knn = [(r.epoch, r.knn_top1) for r in rows if r.knn_top1 is not None]
    if knn:
        out.append(f"kNN top-1 {100 * knn[-1][1]:.2f}% at epoch {knn[-1][0]} (labels: a check, not needed)")
    return out


def _notes(cfg: Config, rows: list[MetricsRow], events: list[dict]) -> list[str]:
    notes = []
    for e in events:
        if e.get("event") == "recovery":
            notes.append(
                f"recovered at epoch {e.get('epoch')}: {e.get('reason')}; went back to epoch {e.get('back_to')} "
                f"and multiplied the lr by {e.get('lr_factor')} (now x{e.get('lr_scale')} of --lr)"
            )
    slide = sliding(rows)
    if slide:
        notes.append(
            f"the rank of z fell from {slide[0]:.0f} to {slide[1]:.0f} (under {LR_HIGH_DROP:g} of its highest): "
            "healthy, but runs at an lr about 3x too high do this before they collapse at 10x (docs/health.md); "
            f"a lower --lr (now {cfg.lr:g}) may do better"
        )
    if rows and all(r.rank_z is None for r in rows):
        notes.append("no effective rank in this run (--rank-samples 0 or an older version): judged on z-std alone")
    return notes


def sliding(rows: list[MetricsRow]) -> tuple[float, float] | None:
    """(highest, last) z rank when the last is above the collapse line but under LR_HIGH_DROP of the
    highest: a healthy run on the edge (every lr-3x run of docs/health.md), else None."""
    ranked = [r.rank_z for r in rows if r.rank_z is not None and not math.isnan(r.rank_z)]
    if ranked and COLLAPSED_RANK_Z < ranked[-1] < LR_HIGH_DROP * max(ranked):
        return max(ranked), ranked[-1]
    return None


def _reference_lr(cfg: Config) -> float:
    return PRESETS.get(cfg.preset or "", {}).get("lr", Config.__dataclass_fields__["lr"].default)


def _causes(state: str, cfg: Config, run_dir: Path) -> list[Cause]:
    """The likely causes of `state`, most likely first: first what the run's config shows (an option
    known to cause this state), then the usual suspects."""

    def command(slug: str, *options: str) -> str:
        return f"simsiam train --config {run_dir}/config.json --run-dir {run_dir}-{slug} " + " ".join(options)

    options = cfg.options
    ref, lr = _reference_lr(cfg), cfg.lr
    preset = f"the {cfg.preset} preset's" if cfg.preset else "the default"
    causes: list[Cause] = []
    if state in ("complete collapse", "dimensional collapse"):
        if getattr(options, "stop_gradient", True) is False:
            causes.append(
                Cause(
                    "--no-stop-gradient: without it SimSiam collapses (paper Fig. 2; docs/health.md: z rank 1.3)",
                    command("stop-gradient", "--stop-gradient"),
                )
            )
        if getattr(options, "predictor", True) is False:
            causes.append(
                Cause(
                    "--no-predictor: without it SimSiam collapses (paper Table 1a; docs/health.md: z rank 1.4)",
                    command("predictor", "--predictor"),
                )
            )
        if getattr(options, "fixed_predictor", False):
            causes.append(
                Cause(
                    "--fixed-predictor: a predictor kept at random init fails (paper Table 1b)",
                    command("predictor", "--no-fixed-predictor"),
                )
            )
        high = f"base lr {lr:g} is {lr / ref:.3g}x {preset} {ref:g}" if lr > ref else f"base lr {lr:g}"
        causes.append(
            Cause(
                f"the lr is too high: {high} (docs/health.md: 10x and 30x the preset's lr end in a "
                "dimensional collapse)",
                command(f"lr{lr / 3:.3g}", f"--lr {lr / 3:.3g}"),
            )
        )
        causes.append(
            Cause(
                "let the run step back by itself: on a collapse it returns to its last healthy checkpoint "
                "and lowers the lr",
                command("recover", "--on-collapse recover"),
            )
        )
    elif state == "head collapse":
        if getattr(options, "head_bn", "default") == "none":
            causes.append(
                Cause(
                    "--head-bn none: without BN in the projector and predictor their output collapses (docs/health.md)",
                    command("head-bn", "--head-bn default"),
                )
            )
        causes.append(
            Cause(
                "the backbone's features may still be usable (no-BN heads: kNN 58.9% against 46.2% at random init): "
                "measure them",
                f"simsiam eval rank {run_dir} --data-dir DIR",
            )
        )
    elif state == "not learning":
        low = f"base lr {lr:g} is {lr / ref:.3g}x {preset} {ref:g}" if lr < ref else f"base lr {lr:g}"
        causes.append(Cause(f"the lr is too low: {low}", command(f"lr{lr * 10:.3g}", f"--lr {lr * 10:.3g}")))
        causes.append(Cause(f"too few epochs ({cfg.epochs})", command("longer", f"--epochs {cfg.epochs * 4}")))
    elif state == "diverged":
        causes.append(Cause(f"the lr is too high (base lr {lr:g})", command(f"lr{lr / 10:.3g}", f"--lr {lr / 10:.3g}")))
        if cfg.precision == "bf16":
            causes.append(Cause("bf16 precision", command("fp32", "--precision fp32")))
        causes.append(
            Cause(
                "let the run step back by itself: on a non-finite loss it returns to its last healthy checkpoint "
                "and lowers the lr",
                command("recover", "--on-collapse recover"),
            )
        )
    return causes


def describe(verdict: Verdict, run_dir: str | Path) -> str:
    """The verdict on one screen."""
    since = f" since epoch {verdict.since}" if verdict.since is not None and verdict.state != "no epoch yet" else ""
    lines = [f"{run_dir}: {verdict.state.upper()}{since} ({verdict.epochs} epochs finished)"]
    lines += [f"  {e}" for e in verdict.evidence]
    if verdict.causes:
        lines.append("likely causes, most likely first:")
        for i, c in enumerate(verdict.causes, 1):
            lines.append(f"  {i}. {c.why}")
            if c.command:
                lines.append(f"     {c.command}")
    lines += [f"note: {n}" for n in verdict.notes]
    return "\n".join(lines)


def write(verdict: Verdict, run_dir: str | Path) -> Path:
    """RUN_DIR/doctor.json (atomic)."""
    from .checkpoint import write_atomic

    path = Path(run_dir) / "doctor.json"
    write_atomic(path, json.dumps(verdict.to_json(), indent=2) + "\n")
    return path
