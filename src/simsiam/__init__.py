"""simsiam: self-supervised image representation learning with SimSiam (Chen & He, CVPR 2021).

from simsiam import Config, from_preset, train
summary = train(from_preset("digits", epochs=5, run_dir="runs/try"))

The names below are imported when first used (PEP 562), so `import simsiam` alone loads neither
torch's training stack nor matplotlib: the CLI's lazy imports then save what they promise.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_WHERE = {
    "build_backbone": ".backbones",
    "PRESETS": ".config",
    "Config": ".config",
    "from_preset": ".configure",
    "Augment": ".data",
    "ImageSet": ".data",
    "load_splits": ".data",
    "ConfigError": ".errors",
    "DataError": ".errors",
    "SimSiamError": ".errors",
    "TrainingError": ".errors",
    "extract_features": ".evaluate",
    "knn_accuracy": ".evaluate",
    "knn_predict": ".evaluate",
    "evaluate_rank": ".evaluation",
    "effective_rank": ".health",
    "METHODS": ".methods",
    "Method": ".methods",
    "StepOutput": ".methods",
    "Views": ".methods",
    "build_model": ".methods",
    "z_std": ".methods.heads",
    "SimSiam": ".methods.simsiam",
    "negative_cosine": ".methods.simsiam",
    "Summary": ".records",
    "write_report": ".report",
    "load_backbone": ".runs",
    "fit": ".engine",
    "train": ".engine",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module 'simsiam' has no attribute {name!r}")
