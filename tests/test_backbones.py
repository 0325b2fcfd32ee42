"""Backbones: the ResNets with their CIFAR stem and width, any torchvision classification model,
timm models, and modules given from Python; trained a few steps, exported and loaded back."""

import json
import math
import runpy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file
from torchvision.models.resnet import BasicBlock, Bottleneck

from simsiam import ConfigError, fit, from_preset
from simsiam.backbones import build_backbone, feature_dim, remove_classifier, torchvision_names, torchvision_options
from simsiam.cli import main
from simsiam.export import export_backbone
from simsiam.runs import load_backbone

from conftest import assert_one_line_error, assert_picture, make_folder, simsiam, tiny_config

ROOT = Path(__file__).resolve().parents[1]
# 2 steps of batch 8 on digits (16 px), small heads: seconds per arch on a CPU.
TINY = dict(subset=16, batch_size=8, epochs=1, dim=32, pred_dim=8, proj_hidden=32)
NOT_RESNET = dict(cifar_stem=False, width=1.0)  # the digits preset's ResNet options off


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
    with pytest.raises(ConfigError, match="not a torchvision classification model"):
        build_backbone("nonsense")


def test_every_torchvision_classifier_is_found():
    """Built on the meta device (no weights allocated); RegNets compute their widths with tensors
    at build time, so they cannot be: they keep theirs in `fc`, as the ResNets."""
    found = {}
    for name in torchvision_names():
        if name.startswith("regnet"):
            continue
        with torch.device("meta"):
            net = torchvision.models.get_model(name, **torchvision_options(name))
        found[name] = remove_classifier(net)
        outputs = [getattr(m, "out_features", getattr(m, "out_channels", 0)) for m in net.modules()]
        assert 1000 not in outputs, name  # no layer left that makes ImageNet's 1000 logits
    assert len(found) > 50
    assert {found[n] for n in ("resnet18", "densenet121", "swin_t")} == {"fc", "classifier", "head"}
    assert (found["vit_b_16"], found["convnext_tiny"], found["squeezenet1_1"]) == (
        "heads[0]",
        "classifier[2]",
        "classifier[1]",
    )
    assert found["mobilenet_v3_small"] == "classifier[3]"  # its hidden Linear + Hardswish stay: 1024-d features


def test_feature_dim_is_one_eval_forward_that_changes_nothing():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Dropout(0.5), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    assert feature_dim(net, 16) == 8
    assert net.training and torch.equal(rng, torch.get_rng_state())  # back in train mode, no dropout draw
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # BN statistics untouched


@pytest.mark.parametrize(
    "arch,net,needle",
    [
        ("squeezenet1_1", None, "--arch squeezenet1_1 cannot take 16 px images"),  # its strides need more
        ("custom", nn.Conv2d(3, 4, 3), "must give (N, D) features"),  # no pooling
    ],
)
def test_feature_dim_errors_are_one_line(arch, net, needle):
    with pytest.raises(ConfigError) as e:
        build_backbone(arch, image_size=16) if net is None else feature_dim(net, 16)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "options,needles",
    [
        (dict(arch="raft_small"), ["raft_small", "optical flow", "list_models"]),
        (dict(arch="nonsense"), ["nonsense", "timm:NAME"]),
        (dict(arch="resnet05"), ["did you mean resnet50"]),
        (dict(arch="mobilenet_v3_small"), ["--no-cifar-stem --width 1", "preset digits"]),
        (dict(arch="mobilenet_v3_small", cifar_stem=False), ["--width 0.25 is a ResNet option", "add --width 1"]),
        (dict(arch="timm:nonsense", **NOT_RESNET), ["timm has no model 'nonsense'"]),
    ],
)
def test_bad_arch_is_one_line_at_config_time(options, needles):
    if options["arch"].startswith("timm:"):
        pytest.importorskip("timm")
    with pytest.raises(ConfigError) as e:
        from_preset("digits", **options)
    assert all(n in str(e.value) for n in needles) and "\n" not in str(e.value), str(e.value)


def test_cli_names_the_problem_and_the_fix(capsys):
    res = simsiam(capsys, "train", "--arch", "fasterrcnn_resnet50_fpn")
    assert_one_line_error(res, "fasterrcnn_resnet50_fpn", "detection", "torchvision.models.list_models")


def test_timm_without_timm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    with pytest.raises(ConfigError, match=r'pip install "simsiam\[timm\]"'):
        from_preset("digits", arch="timm:resnet10t", **NOT_RESNET)


def _torchvision(arch: str) -> nn.Module:
    net = torchvision.models.get_model(arch, weights=None)
    remove_classifier(net)
    return net


def _timm(arch: str) -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model(arch.removeprefix("timm:"), pretrained=False, num_classes=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """trained(arch) -> the run directory of a 2-step run of `arch`, trained once per module."""
    runs: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in runs:
            run_dir = tmp_path_factory.mktemp("runs") / arch.replace(":", "-")
            summary = fit(tiny_config(run_dir, arch=arch, **NOT_RESNET, **TINY))
            assert summary["arch"] == arch and math.isfinite(summary["loss"]) and summary["knn_top1"] > 0.1, summary
            runs[arch] = run_dir
        return runs[arch]

    return get


@pytest.mark.parametrize(
    "arch,rebuild",
    [("mobilenet_v3_small", _torchvision), ("shufflenet_v2_x0_5", _torchvision), ("timm:mobilenetv3_small_050", _timm)],
)
def test_other_backbones_train_and_load_back_into_their_library(arch, rebuild, trained, tmp_path):
    ref = rebuild(arch)  # first: skips without timm
    run_dir = trained(arch)
    out = tmp_path / "backbone.safetensors"
    export_backbone(run_dir, out)
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["arch"] == arch and meta["torchvision_loadable"] == str(rebuild is _torchvision).lower()
    ref.load_state_dict(load_file(out))  # strict: the same keys, the classifier removed the same way
    ours, _ = load_backbone(run_dir)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ref.eval()(x), ours(x))
    assert meta["feature_dim"] == str(ours(x).shape[1])


def test_eval_embed_and_report_read_a_torchvision_run(trained, tmp_path):
    run_dir = trained("shufflenet_v2_x0_5")
    assert main(["eval", "knn", str(run_dir), "--k", "20"]) == 0
    assert json.loads((run_dir / "eval_knn.json").read_text())["top1"] > 0.1
    photos = make_folder(tmp_path / "photos", n=3)
    assert main(["embed", str(run_dir), "--data-dir", str(photos), "--out", str(tmp_path / "e.npy")]) == 0
    assert main(["report", str(run_dir), "--no-embedding-map"]) == 0
    assert_picture(run_dir / "report" / "retrieval.png")


def test_custom_backbone_example_runs(tmp_path, monkeypatch, capsys):
    """`python examples/custom_backbone.py RUN_DIR`, in this process."""
    monkeypatch.setattr(sys, "argv", ["custom_backbone.py", str(tmp_path / "run")])
    runpy.run_path(str(ROOT / "examples" / "custom_backbone.py"), run_name="__main__")
    assert "features (2, 64)" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "config.json").read_text())["arch"] == "custom"
