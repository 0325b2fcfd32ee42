"""simsiam: self-supervised image representation learning with SimSiam (Chen & He, CVPR 2021).

from simsiam import Config, from_preset, train
summary = train(from_preset("digits", epochs=5, run_dir="runs/try"))
"""

from .backbones import build_backbone
from .config import PRESETS, Config, from_preset
from .data import Augment, ImageSet, load_splits
from .errors import ConfigError, DataError, SimSiamError, TrainingError
from .evaluate import extract_features, knn_accuracy, knn_predict
from .methods import METHODS, Method, StepOutput, Views, build_model
from .methods.heads import z_std
from .methods.simsiam import SimSiam, negative_cosine
from .report import write_report
from .runs import load_backbone
from .train import fit, train

__version__ = "0.1.0"

__all__ = [
    "Augment",
    "Config",
    "ConfigError",
    "DataError",
    "ImageSet",
    "METHODS",
    "Method",
    "PRESETS",
    "SimSiam",
    "SimSiamError",
    "StepOutput",
    "TrainingError",
    "Views",
    "build_backbone",
    "build_model",
    "extract_features",
    "fit",
    "from_preset",
    "knn_accuracy",
    "knn_predict",
    "load_backbone",
    "load_splits",
    "negative_cosine",
    "train",
    "write_report",
    "z_std",
]
