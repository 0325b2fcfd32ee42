"""Backbones: any torchvision classification model or timm model with its classifier removed.

`build_backbone` returns `(module, feature_dim)`; the module maps images (N,3,H,W) to pooled
features (N, feature_dim). `--arch` is

- a torchvision ResNet (resnet18/34/50/101/152): built here, with the CIFAR stem and the width
  multiplier (the only archs they apply to); parameter names are torchvision's, so the weights
  load into `torchvision.models.resnetXX` (the fc keys aside);
- any other torchvision classification model (`torchvision.models.list_models(module=torchvision.models)`),
  built by `torchvision.models.get_model(name, weights=None)`, its classifier replaced by nn.Identity;
- `timm:NAME`: `timm.create_model(NAME, pretrained=False, num_classes=0)` (pip install "simsiam[timm]");
- `custom`: what a run records when `fit` was given a module from Python; it cannot be rebuilt by name.

Outside the ResNets the feature dimension is found by one forward of a blank image.
"""

from __future__ import annotations

import difflib

import torch
import torch.nn as nn
import torchvision
from torchvision.models import resnet
from torchvision.models.resnet import BasicBlock, Bottleneck

from .errors import ConfigError

TIMM = "timm:"
CUSTOM = "custom"

_LAYERS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
    "resnet152": (Bottleneck, [3, 8, 36, 3]),
}
RESNETS = tuple(_LAYERS)  # the archs --cifar-stem and --width apply to
# Builder options that make a torchvision model return one tensor: GoogLeNet and Inception v3
# return (logits, aux logits) in train mode unless built without the auxiliary classifiers.
_BUILD_OPTIONS = {
    "googlenet": dict(aux_logits=False, init_weights=True),
    "inception_v3": dict(aux_logits=False, init_weights=True),
}
_HEADS = ("fc", "classifier", "heads", "head")  # where torchvision models keep their classifier


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
    arch: str = "resnet50",
    cifar_stem: bool = False,
    width: float = 1.0,
    zero_init_residual: bool = True,
    *,
    image_size: int = 224,
) -> tuple[nn.Module, int]:
    """`arch` without its classifier, and the dimension of its pooled features. `image_size` is
    the input the feature dimension is measured on (not for ResNets): a model that cannot take
    images that small fails here, with one line, rather than in the first step."""
    if arch in _LAYERS:
        return _resnet(arch, cifar_stem, width, zero_init_residual)
    check_arch(arch, cifar_stem, width)
    if arch == CUSTOM:
        raise ConfigError(
            "--arch custom is a backbone given from Python (simsiam.fit(cfg, backbone=module)); it cannot be "
            "built by name: give the module again, e.g. load_backbone(RUN_DIR, backbone=module)"
        )
    if arch.startswith(TIMM):
        net = _timm().create_model(arch[len(TIMM) :], pretrained=False, num_classes=0)  # pooled features
    else:
        net = torchvision.models.get_model(arch, **torchvision_options(arch))
        remove_classifier(net)
    return net, feature_dim(net, image_size, f"--arch {arch}")


def _resnet(arch: str, cifar_stem: bool, width: float, zero_init_residual: bool) -> tuple[nn.Module, int]:
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


def torchvision_options(arch: str) -> dict:
    """What `torchvision.models.get_model(arch, **options)` is built with: no weights, and one
    output tensor (see _BUILD_OPTIONS)."""
    return dict(weights=None, **_BUILD_OPTIONS.get(arch, {}))


def remove_classifier(net: nn.Module) -> str:
    """Replace a torchvision model's classifier by nn.Identity; returns where it was ("fc",
    "classifier[3]", "heads[0]"). The classifier is `fc`, `classifier`, `heads` or `head`: a Linear,
    or a Sequential whose last Linear (SqueezeNet: 1x1 Conv2d) makes the logits. The layers before
    it stay: pooling, flatten, ConvNeXt's norm, MobileNetV3's and MaxViT's hidden layer."""
    where = _find_head(net, (nn.Linear, nn.Conv2d))
    if where is None:
        raise ConfigError(
            f"{type(net).__name__} has no classifier in {', '.join(_HEADS)}; give it to fit() as a module"
        )
    attr, index = where
    if index is None:
        setattr(net, attr, nn.Identity())
    else:
        getattr(net, attr)[index] = nn.Identity()
    return _head_name(where)


def removed_classifier(backbone: nn.Module) -> str | None:
    """Where `remove_classifier` put its nn.Identity in `backbone` ("classifier[3]"), None if it did
    not: the heads of torchvision's classification models hold no other Identity."""
    where = _find_head(backbone, nn.Identity)
    return None if where is None else _head_name(where)


def _find_head(net: nn.Module, kinds) -> tuple[str, int | None] | None:
    """(attribute, index in its Sequential or None) of the last `kinds` layer of net's head."""
    for attr in _HEADS:
        head = getattr(net, attr, None)
        if isinstance(head, kinds):
            return attr, None
        if isinstance(head, nn.Sequential):
            last = max((i for i, m in enumerate(head) if isinstance(m, kinds)), default=None)
            if last is not None:
                return attr, last
    return None


def _head_name(where: tuple[str, int | None]) -> str:
    attr, index = where
    return attr if index is None else f"{attr}[{index}]"


@torch.no_grad()
def feature_dim(net: nn.Module, image_size: int, name: str = "the backbone") -> int:
    """D of the (N, D) features `net` gives for `image_size` px images: one forward of a blank
    image in eval mode (no batch statistics touched, no random numbers drawn), then back to the
    mode it was in."""
    was_training = net.training
    param = next(net.parameters(), None)
    x = torch.zeros(1, 3, image_size, image_size, device=param.device if param is not None else None)
    try:
        out = net.eval()(x)
    except (RuntimeError, ValueError, AssertionError) as e:  # too small for its strides, or a fixed size (ViT)
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(
            f"{name} cannot take {image_size} px images ({why}); give a larger --image-size "
            "(torchvision's ViTs need 224) or another --arch"
        ) from None
    finally:
        net.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"{name} gives {got} for a batch of images; a backbone must give (N, D) features")
    return out.shape[1]


def check_arch(arch: str, cifar_stem: bool = False, width: float = 1.0, note: str = "") -> None:
    """A one-line ConfigError unless `build_backbone` can build `arch` with these options; `note`
    goes into the message about ResNet-only options (where they came from)."""
    if arch.startswith(TIMM):
        name = arch[len(TIMM) :]
        if not _timm().is_model(name):
            raise ConfigError(f"--arch {arch}: timm has no model {name!r}; see timm.list_models('*{name[:4]}*')")
    elif arch != CUSTOM and arch not in torchvision_names():
        raise ConfigError(f"--arch {arch!r} is not a torchvision classification model{_kind(arch)}; {_choices(arch)}")
    if arch not in _LAYERS and (cifar_stem or width != 1.0):
        given = ["--cifar-stem"] * cifar_stem + [f"--width {width:g}"] * (width != 1.0)
        fix = ["--no-cifar-stem"] * cifar_stem + ["--width 1"] * (width != 1.0)
        options = "are ResNet options" if len(given) > 1 else "is a ResNet option"
        raise ConfigError(
            f"{' and '.join(given)} {options} (resnet18/34/50/101/152), not for --arch {arch}{note}; "
            f"add {' '.join(fix)}"
        )


def torchvision_names() -> list[str]:
    return torchvision.models.list_models(module=torchvision.models)


def _kind(arch: str) -> str:
    """Which other family of torchvision's models `arch` belongs to, if any."""
    for kind in ("detection", "segmentation", "video", "optical_flow", "quantization"):
        if arch in torchvision.models.list_models(module=getattr(torchvision.models, kind)):
            return f" (it is one of torchvision's {kind.replace('_', ' ')} models)"
    return ""


def _choices(arch: str) -> str:
    every = "all: torchvision.models.list_models(module=torchvision.models)"
    close = difflib.get_close_matches(arch, torchvision_names(), n=3)
    if close:
        return f"did you mean {' or '.join(close)}? ({every})"
    return f"choose e.g. resnet50, mobilenet_v3_small, convnext_tiny, efficientnet_b0 ({every}), or timm:NAME"


def _timm():
    try:
        import timm
    except ImportError:
        raise ConfigError('--arch timm:NAME needs timm: pip install "simsiam[timm]"') from None
    return timm
