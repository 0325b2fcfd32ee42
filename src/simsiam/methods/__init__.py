"""Self-supervised methods: one short file each, all driven by the same training loop through the
contract in `base.py` (`Method`: forward -> `StepOutput`, param_groups, hooks, its `Options`,
DEFAULTS).

Adding a method is one file here (the module, its options dataclass) and one line in `METHODS`.
"""

from __future__ import annotations

import dataclasses

import torch.nn as nn

from ..config import Config
from .base import Method, StepOutput, Targets, Views
from .byol import BYOL
from .moco import MoCoV2
from .simclr import SimCLR
from .simsiam import SimSiam
from .swav import SwAV

METHODS: dict[str, type[Method]] = {"simsiam": SimSiam, "simclr": SimCLR, "byol": BYOL, "swav": SwAV, "mocov2": MoCoV2}


def option_owners() -> dict[str, list[str]]:
    """Each method option's name -> the methods that declare it (`--temperature`: simclr, swav, mocov2)."""
    owners: dict[str, list[str]] = {}
    for name, method in METHODS.items():
        for f in dataclasses.fields(method.Options):
            owners.setdefault(f.name, []).append(name)
    return owners


def build_model(cfg: Config, backbone: nn.Module | None = None, feature_dim: int | None = None) -> Method:
    """`cfg.method` around `backbone`, any module mapping images to (N, D) features (default: the
    backbone `cfg.arch` names); D (`feature_dim`) is measured by one forward when not given."""
    from .. import backbones

    if backbone is None:
        backbone, feature_dim = backbones.build_backbone(cfg.arch, cfg.cifar_stem, cfg.width, image_size=cfg.image_size)
    elif feature_dim is None:
        feature_dim = backbones.feature_dim(backbone, cfg.image_size)
    return METHODS[cfg.method].from_config(cfg, backbone, feature_dim)


__all__ = ["METHODS", "Method", "StepOutput", "Targets", "Views", "build_model"]
