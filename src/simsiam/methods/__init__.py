"""Self-supervised methods: one short file each, all driven by the same training loop through the
contract in `base.py` (`Method`: forward -> `StepOutput`, param_groups, hooks, DEFAULTS, OPTIONS).

Adding a method is one file here and one line in `METHODS`.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from .base import Method, StepOutput, Targets, Views
from .byol import BYOL
from .simclr import SimCLR
from .simsiam import SimSiam
from .swav import SwAV

METHODS: dict[str, type[Method]] = {"simsiam": SimSiam, "simclr": SimCLR, "byol": BYOL, "swav": SwAV}


def build_model(cfg: Any, backbone: nn.Module | None = None, feature_dim: int | None = None) -> Method:
    """`cfg.method` around `backbone` (default: the backbone `cfg` describes)."""
    if backbone is None:
        from ..backbones import build_backbone

        backbone, feature_dim = build_backbone(cfg.arch, cfg.cifar_stem, cfg.width)
    if feature_dim is None:
        raise ValueError("give feature_dim, the dimension of the backbone's pooled features, with backbone")
    return METHODS[cfg.method].from_config(cfg, backbone, feature_dim)


__all__ = ["METHODS", "Method", "StepOutput", "Targets", "Views", "build_model"]
