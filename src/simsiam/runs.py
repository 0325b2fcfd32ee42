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
from .config import PRESETS, Config, load_json
from .errors import DataError, warn

OFFICIAL_PREFIX = "module.encoder."
OFFICIAL = "official-checkpoint"  # cfg.preset of a backbone read from the official format


def load_backbone(
    source: str | Path, device: str | torch.device = "cpu", backbone: nn.Module | None = None
) -> tuple[nn.Module, Config]:
    """(backbone in eval mode, the config it was trained with) from a run dir or checkpoint file;
    the weights go into `backbone` when given (needed for runs of arch "custom", see `fit`), else
    into the architecture the config names."""
    source = Path(source)
    if source.is_dir():
        cfg_path = source / "config.json"
        if not cfg_path.exists():
            raise DataError(f"{source} has no config.json; give a run directory written by `simsiam train`")
        cfg = load_json(cfg_path)
        if (source / "backbone.pt").exists():
            weights = checkpoint.load(source / "backbone.pt")
        elif (source / checkpoint.CHECKPOINT).exists():
            weights = _backbone_from_model(checkpoint.load_latest(source, warn=warn)["model"])
        else:
            raise DataError(f"{source} holds no backbone.pt or checkpoint.pt; has its first epoch finished?")
    elif source.is_file():
        cfg, weights = _from_checkpoint_dict(checkpoint.load(source), source)
    else:
        raise DataError(f"{source} does not exist; give a run directory or a checkpoint file")
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
    return backbone.to(device).eval(), cfg


def _backbone_from_model(model_state: dict) -> dict:
    model_state = checkpoint.plain_keys(model_state)
    return {k[len("backbone.") :]: v for k, v in model_state.items() if k.startswith("backbone.")}


def _from_checkpoint_dict(state: dict, source: Path) -> tuple[Config, dict]:
    if isinstance(state, dict) and "config" in state and "model" in state:  # ours
        return Config.from_dict(state["config"]), _backbone_from_model(state["model"])
    sd = state.get("state_dict") if isinstance(state, dict) else None
    if isinstance(sd, dict) and any(k.startswith(OFFICIAL_PREFIX) for k in sd):
        # Official format: encoder = torchvision ResNet whose fc is the projector; drop the fc.
        weights = {
            k[len(OFFICIAL_PREFIX) :]: v
            for k, v in sd.items()
            if k.startswith(OFFICIAL_PREFIX) and not k.startswith(OFFICIAL_PREFIX + "fc.")
        }
        arch = state.get("arch", "resnet50")
        cifar_stem = tuple(weights["conv1.weight"].shape[-2:]) == (3, 3)
        # The data is not recorded in that format: evaluation must be given --data-dir.
        cfg = Config.from_dict(
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


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line: the run is writing it right now
            continue
    return rows
