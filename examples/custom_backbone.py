"""SimSiam around your own backbone: any nn.Module mapping images (N, 3, S, S) to features (N, D).

    python examples/custom_backbone.py [RUN_DIR]

Trains a tiny CNN for one short epoch on the embedded digits (16 px, CPU, well under a minute),
then reads the trained backbone back from the run directory into a fresh module.
"""

import sys

import torch
import torch.nn as nn

from simsiam import fit, from_preset, load_backbone


def tiny_cnn(width: int = 32) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),  # (N, 2 * width): the features the method puts its heads on
    )


def main(run_dir: str | None = None) -> None:
    torch.manual_seed(0)  # the module's initialisation is yours; cfg.seed seeds what simsiam draws
    cfg = from_preset("digits", run_dir=run_dir, epochs=1, subset=128, batch_size=32, knn_random_init=False)
    summary = fit(cfg, backbone=tiny_cnn())  # D measured by one forward; or give feature_dim=64
    print(f"kNN top-1 {summary['knn_top1']:.3f}, z-std {summary['z_std']:.3f} after one short epoch")

    # The run records arch "custom": its weights go back into a module you build.
    backbone, cfg = load_backbone(summary["run_dir"], backbone=tiny_cnn())
    with torch.no_grad():
        features = backbone(torch.zeros(2, 3, cfg.image_size, cfg.image_size))
    print(f"backbone read back from {summary['run_dir']}: features {tuple(features.shape)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
