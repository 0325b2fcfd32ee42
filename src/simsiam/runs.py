"""Reading trained backbones back: a run directory, one of our checkpoints, or the official
SimSiam checkpoint format (facebookresearch/simsiam: `state_dict` with `module.encoder.*` keys).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from . import checkpoint
from .backbones import build_backbone
from .config import PRESETS, Config
from .configure import from_dict, load_json
from .errors import DataError, UnsafeFile, warn
from .records import MetricsRow, Summary

OFFICIAL_PREFIX = "module.encoder."
OFFICIAL = "official-checkpoint"  # cfg.preset of a backbone read from the official format


def load_backbone(
    source: str | Path, device: str | torch.device = "cpu", backbone: nn.Module | None = None
) -> tuple[nn.Module, Config]:
    """(backbone in eval mode, the config it was trained with) from a run dir or checkpoint file;
    the weights go into `backbone` when given (needed for runs of arch "custom", see `fit`), else
    into the architecture the config names. Weights that are not finite are refused: a diverged
    run has no features to evaluate. The config's cache folder is not taken from the run: where
    evaluation writes its decode cache is this machine's choice ($SIMSIAM_CACHE), not the run's."""
    source = Path(source)
    if source.is_dir():
        cfg_path = source / "config.json"
        if not cfg_path.exists():
            raise DataError(f"{source} has no config.json; give a run directory written by `simsiam train`")
        cfg = load_json(cfg_path)
        weights = _run_weights(source)
    elif source.is_file():
        cfg, weights = _from_checkpoint_dict(checkpoint.load(source), source)
    else:
        raise DataError(f"{source} does not exist; give a run directory or a checkpoint file")
    cfg = cfg.replace(cache_dir=None)
    if backbone is None:
        backbone, _ = build_backbone(cfg.arch, cfg.cifar_stem, cfg.width, image_size=cfg.image_size)
    fits = f"{source}: weights do not fit a {cfg.arch} (width {cfg.width}, cifar_stem {cfg.cifar_stem})"
    try:
        missing, unexpected = backbone.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # a tensor of another shape: another width or architecture
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise DataError(f"{fits}: {first}; is config.json the run's own?") from None
    if missing or unexpected:
        raise DataError(f"{fits}; missing {missing[:2]}, unexpected {unexpected[:2]}")
    bad = [k for k, v in backbone.state_dict().items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise DataError(
            f"{source}: the backbone's weights are not finite (NaN or inf in {len(bad)} tensors, e.g. {bad[0]}): "
            "the run diverged and its features mean nothing; use a checkpoint from before, or retrain with a lower --lr"
        )
    return backbone.to(device).eval(), cfg


def _run_weights(run_dir: Path) -> dict:
    """The backbone weights of a run directory: backbone.pt once the run has finished, else (or when
    backbone.pt cannot be read: a full disk at the end, say) the newest readable checkpoint's."""
    path = run_dir / "backbone.pt"
    if path.exists():
        try:
            return _state_dict(checkpoint.load(path), path)
        except UnsafeFile:
            raise
        except DataError as e:
            if not checkpoint.has_checkpoint(run_dir):
                raise
            warn(f"{e}; using the backbone of the newest checkpoint instead")
    if not checkpoint.has_checkpoint(run_dir):
        raise DataError(f"{run_dir} holds no backbone.pt or checkpoint; has its first epoch finished?")
    return _backbone_from_model(checkpoint.load_latest(run_dir, warn=warn).model)


def _state_dict(weights, path) -> dict:
    """`weights` if it is a state_dict (names -> tensors), else a one-line DataError naming `path`."""
    if isinstance(weights, dict) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in weights.items()):
        return weights
    raise DataError(f"{path} is not a state_dict of tensors; is it a backbone written by simsiam?")


def _backbone_from_model(model_state: dict) -> dict:
    model_state = checkpoint.plain_keys(model_state)
    return {k[len("backbone.") :]: v for k, v in model_state.items() if k.startswith("backbone.")}


def _from_checkpoint_dict(state: dict, source: Path) -> tuple[Config, dict]:
    if isinstance(state, dict) and "config" in state and "model" in state:  # ours
        if not isinstance(state["config"], dict):
            raise DataError(f"{source}: its config is not a dict; is it a checkpoint written by simsiam?")
        return from_dict(state["config"], strict=False), _backbone_from_model(_state_dict(state["model"], source))
    sd = state.get("state_dict") if isinstance(state, dict) else None
    if isinstance(sd, dict) and any(isinstance(k, str) and k.startswith(OFFICIAL_PREFIX) for k in sd):
        sd = _state_dict(sd, source)
        if OFFICIAL_PREFIX + "conv1.weight" not in sd or sd[OFFICIAL_PREFIX + "conv1.weight"].dim() != 4:
            raise DataError(f"{source}: an official-format checkpoint without a ResNet conv1; is it a SimSiam one?")
        # Official format: encoder = torchvision ResNet whose fc is the projector; drop the fc.
        weights = {
            k[len(OFFICIAL_PREFIX) :]: v
            for k, v in sd.items()
            if k.startswith(OFFICIAL_PREFIX) and not k.startswith(OFFICIAL_PREFIX + "fc.")
        }
        arch = state.get("arch", "resnet50")
        cifar_stem = tuple(weights["conv1.weight"].shape[-2:]) == (3, 3)
        # The data is not recorded in that format: evaluation must be given --data-dir.
        cfg = from_dict(
            {
                **PRESETS["imagenet"],
                "arch": arch,
                "cifar_stem": cifar_stem,
                "dataset": "digits",
                "image_size": 32 if cifar_stem else 224,
                "load_size": 0 if cifar_stem else PRESETS["imagenet"]["load_size"],
                "preset": OFFICIAL,
            }
        )
        return cfg, weights
    raise DataError(
        f"{source} is neither a simsiam checkpoint nor an official SimSiam one "
        "(`state_dict` with module.encoder.* keys)"
    )


def read_metrics(run_dir: str | Path, warn=None) -> list[MetricsRow]:
    """The epoch lines of RUN_DIR/metrics.jsonl ([] without the file). A torn last line (the run is
    writing it) is skipped; any other line that is not an epoch record is left out and counted
    through `warn`."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror or e}); check its permissions") from None
    rows, bad = [], 0
    lines = text.splitlines()
    for i, line in enumerate(lines):
        try:
            d = json.loads(line)
        except (ValueError, RecursionError):
            bad += i < len(lines) - 1  # a torn last line: the run is writing it right now
            continue
        if isinstance(d, dict) and "event" in d:  # a recovery or the stop of a run: `read_events`
            continue
        row = MetricsRow.from_json(d)
        if row is None:
            bad += 1
        else:
            rows.append(row)
    if bad and warn is not None:
        warn(f"{path}: left out {bad} line(s) that are not epoch records")
    return rows


def read_events(run_dir: str | Path) -> list[dict]:
    """The event lines of RUN_DIR/metrics.jsonl, in order: {"event": "recovery" | "diverged" |
    "stopped", "epoch": ..., ...} (--on-collapse). Unreadable lines are `read_metrics`'s to report."""
    try:
        text = (Path(run_dir) / "metrics.jsonl").read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return []
    events = []
    for line in text.splitlines():
        try:
            d = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(d, dict) and isinstance(d.get("event"), str):
            events.append(d)
    return events


def read_summary(run_dir: str | Path, warn=None) -> Summary | None:
    """RUN_DIR/summary.json when the run finished and the file is one (numbers and texts where
    they belong), else None; a file that is there but is not a summary is reported through `warn`."""
    path = Path(run_dir) / "summary.json"
    try:
        d = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as e:
        if warn is not None:
            warn(f"{path} is unreadable ({type(e).__name__}); treating the run as unfinished")
        return None
    summary = Summary.from_json(d)
    if summary is None and warn is not None:
        warn(f"{path} is not a simsiam summary; treating the run as unfinished")
    return summary
