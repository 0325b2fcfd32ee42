import math

import pytest
import torch
import torch.nn as nn

from simsiam.backbones import build_backbone
from simsiam.methods.base import Views
from simsiam.methods.heads import prediction_mlp, projection_mlp, z_std
from simsiam.methods.simsiam import SimSiam, negative_cosine


def test_loss_matches_hand_computation():
    p1 = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    p2 = torch.tensor([[0.0, 2.0], [3.0, 4.0]])
    z1 = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    z2 = torch.tensor([[2.0, 0.0], [-1.0, 1.0]])
    # D(p1, z2): cos([1,0],[2,0]) = 1; cos([1,1],[-1,1]) = 0  -> mean -0.5
    # D(p2, z1): cos([0,2],[1,1]) = 1/sqrt2; cos([3,4],[0,1]) = 4/5 -> mean -(1/sqrt2 + 0.8)/2
    expected = 0.5 * (-0.5) + 0.5 * (-(1 / math.sqrt(2) + 0.8) / 2)
    got = negative_cosine(p1, z2) / 2 + negative_cosine(p2, z1) / 2
    assert got.item() == pytest.approx(expected, abs=1e-6)


def tiny_simsiam(**kw):
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 16), nn.ReLU())
    return SimSiam(backbone, 16, dim=8, pred_dim=4, proj_layers=2, proj_hidden=12, **kw)


def z1_gradient_besides_p1(out) -> torch.Tensor:
    """The loss's gradient on z1 minus the part that comes through p1 = h(z1): zero exactly when a
    stop-gradient cuts z1's other path (as a target)."""
    g_p1, g_z1 = torch.autograd.grad(out.loss, [out.p1, out.z1], retain_graph=True)
    (g_z1_via_p1,) = torch.autograd.grad(out.p1, out.z1, grad_outputs=g_p1)
    return g_z1 - g_z1_via_p1


@pytest.mark.parametrize("concat_views", [False, True])
def test_stop_gradient_blocks_the_target_path(concat_views):
    """With stop-gradient, everything reaching z1 comes through p1 = h(z1); without, z1 also gets
    a gradient as the target of D(p2, z1)."""
    for sg in (True, False):
        model = tiny_simsiam(stop_gradient=sg, concat_views=concat_views)
        rest = z1_gradient_besides_p1(model(Views(torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4))))
        if sg:
            torch.testing.assert_close(rest, torch.zeros_like(rest))
        else:
            assert rest.abs().max() > 1e-4


def test_gradients_reach_encoder_and_predictor():
    model = tiny_simsiam()
    model(Views(torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4))).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_no_predictor_means_p_is_z():
    model = tiny_simsiam(predictor=False)
    out = model(Views(torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4)))
    assert out.p1 is out.z1
    assert not list(model.predictor.parameters())


def _layers(seq):
    return [
        (
            type(m).__name__,
            getattr(m, "in_features", getattr(m, "num_features", None)),
            getattr(m, "out_features", None),
            m.bias is not None if isinstance(m, nn.Linear) else m.affine if isinstance(m, nn.BatchNorm1d) else None,
        )
        for m in seq
    ]


def test_imagenet_projector_and_predictor_structure():
    proj = projection_mlp(2048, 2048, 2048, layers=3)
    assert _layers(proj) == [
        ("Linear", 2048, 2048, False),
        ("BatchNorm1d", 2048, None, True),
        ("ReLU", None, None, None),
        ("Linear", 2048, 2048, False),
        ("BatchNorm1d", 2048, None, True),
        ("ReLU", None, None, None),
        ("Linear", 2048, 2048, False),
        ("BatchNorm1d", 2048, None, False),  # output BN, no affine, no ReLU
    ]
    pred = prediction_mlp(2048, 512)
    assert _layers(pred) == [
        ("Linear", 2048, 512, False),
        ("BatchNorm1d", 512, None, True),
        ("ReLU", None, None, None),
        ("Linear", 512, 2048, True),  # output fc: bias, no BN
    ]


def test_cifar_projector_has_two_layers():
    proj = projection_mlp(512, 2048, 2048, layers=2)
    assert _layers(proj) == [
        ("Linear", 512, 2048, False),
        ("BatchNorm1d", 2048, None, True),
        ("ReLU", None, None, None),
        ("Linear", 2048, 2048, False),
        ("BatchNorm1d", 2048, None, False),
    ]


def test_full_model_shapes_and_param_groups():
    backbone, dim = build_backbone("resnet18", cifar_stem=True, width=0.125)
    model = SimSiam(backbone, dim, dim=64, pred_dim=16, proj_layers=2, proj_hidden=64)
    out = model(Views(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)))
    assert out.z1.shape == out.p2.shape == (4, 64)
    groups = {g["name"]: g for g in model.param_groups()}
    n_all = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == n_all
    assert groups["predictor"]["fix_lr"] and not groups["encoder"]["fix_lr"]
    assert {id(p) for p in groups["predictor"]["params"]} == {id(p) for p in model.predictor.parameters()}


def test_z_std_healthy_and_collapsed():
    d = 256
    spread = torch.randn(4096, d)
    assert z_std(spread).item() == pytest.approx(1 / math.sqrt(d), rel=0.05)
    collapsed = torch.ones(64, d) + 1e-4 * torch.randn(64, d)
    assert z_std(collapsed).item() < 1e-3
