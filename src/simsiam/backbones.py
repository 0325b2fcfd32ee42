"""Backbones: torchvision ResNets with the fc removed, a CIFAR stem and a width multiplier.

`build_backbone` returns `(module, feature_dim)`; the module maps images (N,3,H,W) to pooled
features (N, feature_dim). Parameter names are torchvision's, so the weights load into
`torchvision.models.resnetXX` (the fc keys aside).
"""

from __future__ import annotations

import torch.nn as nn
from torchvision.models import resnet
from torchvision.models.resnet import BasicBlock, Bottleneck

_LAYERS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


class _NarrowResNet(resnet.ResNet):
    """torchvision's ResNet with every stage's channel count multiplied by `width`.

    torchvision hard-codes 64/128/256/512 planes; we scale them in `_make_layer` and rebuild the
    stem and the first stage (which torchvision built for 64 input channels) at the scaled width,
    re-applying torchvision's own initialisation to what we rebuilt.
    """

    def __init__(self, block, layers, width: float, zero_init_residual: bool):
        self.width = width
        super().__init__(block, layers, zero_init_residual=zero_init_residual)
        stem = max(1, round(64 * width))
        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.inplanes = stem
        self.layer1 = self._make_layer(block, 64, layers[0])
        _init_like_torchvision([self.conv1, self.bn1, *self.layer1.modules()], zero_init_residual)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        return super()._make_layer(block, max(1, round(planes * self.width)), blocks, stride, dilate)


def _init_like_torchvision(modules: list[nn.Module], zero_init_residual: bool) -> None:
    for m in modules:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in modules:  # after the BN init above, as in torchvision
        if zero_init_residual and isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)
        elif zero_init_residual and isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)


def build_backbone(
    arch: str = "resnet50", cifar_stem: bool = False, width: float = 1.0, zero_init_residual: bool = True
) -> tuple[nn.Module, int]:
    """A torchvision ResNet without its classifier, and the dimension of its pooled features."""
    if arch not in _LAYERS:
        raise ValueError(f"unknown backbone {arch!r}; choose one of {', '.join(_LAYERS)}")
    block, layers = _LAYERS[arch]
    if width == 1.0:
        net = getattr(resnet, arch)(weights=None, zero_init_residual=zero_init_residual)
    else:
        net = _NarrowResNet(block, layers, width, zero_init_residual)
    feature_dim = net.fc.in_features if width == 1.0 else max(1, round(512 * width)) * block.expansion
    if cifar_stem:
        # Paper App. D: "conv1 3x3 stride 1, no max-pool" for 32x32 inputs.
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        _init_like_torchvision([net.conv1], zero_init_residual)
        net.maxpool = nn.Identity()
    net.fc = nn.Identity()  # pooled features out; the method adds its own heads
    return net, feature_dim
