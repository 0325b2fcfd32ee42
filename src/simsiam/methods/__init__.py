"""Self-supervised methods: one short file each, all driven by the same training loop through the
contract in `base.py` (`Method`: forward -> `StepOutput`, param_groups, hooks, DEFAULTS, OPTIONS).

Adding a method is one file here and one line in `METHODS`.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from .base import Method, StepOutput, Targets, Views
from .byol import BYOL
from .moco import MoCoV2
from .simclr import SimCLR
from .simsiam import SimSiam
from .swav import SwAV

METHODS: dict[str, type[Method]] = {"simsiam": SimSiam, "simclr": SimCLR, "byol": BYOL, "swav": SwAV, "mocov2": MoCoV2}


def build_model(cfg: Any, backbone: nn.Module | None = None, feature_dim: int | None = None) -> Method:
    """`cfg.method` around `backbone`, any module mapping images to (N, D) features (default: the
    backbone `cfg.arch` names); D (`feature_dim`) is measured by one forward when not given."""
    from .. import backbones

    if backbone is None:
        backbone, feature_dim = backbones.build_backbone(cfg.arch, cfg.cifar_stem, cfg.width, image_size=cfg.image_size)
    elif feature_dim is None:
        feature_dim = backbones.feature_dim(backbone, cfg.image_size)
    return METHODS[cfg.method].from_config(cfg, backbone, feature_dim)


__all__ = ["METHODS", "Method", "StepOutput", "Targets", "Views", "build_model"]
