import pytest
import torch
import torchvision
from torchvision.models.resnet import BasicBlock, Bottleneck

from simsiam.backbones import build_backbone


@pytest.mark.parametrize(
    "arch,width,cifar,dim",
    [
        ("resnet18", 1.0, True, 512),
        ("resnet18", 0.25, True, 128),
        ("resnet34", 0.5, False, 256),
        ("resnet50", 0.25, False, 512),
        ("resnet50", 1.0, False, 2048),
    ],
)
def test_shapes_and_feature_dim(arch, width, cifar, dim):
    net, feature_dim = build_backbone(arch, cifar_stem=cifar, width=width)
    assert feature_dim == dim
    size = 32 if cifar else 64
    with torch.no_grad():
        assert net.eval()(torch.randn(2, 3, size, size)).shape == (2, dim)


@pytest.mark.parametrize("arch,width", [("resnet18", 1.0), ("resnet18", 0.25), ("resnet50", 0.25)])
def test_zero_init_residual(arch, width):
    net, _ = build_backbone(arch, width=width)
    blocks = [m for m in net.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    assert blocks
    for b in blocks:
        last_bn = b.bn3 if isinstance(b, Bottleneck) else b.bn2
        assert torch.count_nonzero(last_bn.weight) == 0
        assert torch.count_nonzero(b.bn1.weight) == b.bn1.weight.numel()


def test_cifar_stem():
    net, _ = build_backbone("resnet18", cifar_stem=True, width=0.25)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1) and net.conv1.out_channels == 16
    assert isinstance(net.maxpool, torch.nn.Identity)


def test_weights_load_into_torchvision_with_only_fc_missing():
    net, _ = build_backbone("resnet18")
    ref = torchvision.models.resnet18()
    result = ref.load_state_dict(net.state_dict(), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    x = torch.randn(2, 3, 64, 64)
    ref.fc = torch.nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(ref.eval()(x), net.eval()(x))


def test_unknown_arch():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg16")
