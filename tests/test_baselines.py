"""SimCLR, BYOL and SwAV: losses against brute force, gradients, EMA, Sinkhorn, DDP, end to end."""

import math
import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from simsiam import from_preset, train
from simsiam.config import Config
from simsiam.errors import ConfigError
from simsiam.methods.byol import BYOL, ema_tau
from simsiam.methods.simclr import SimCLR, nt_xent
from simsiam.methods.swav import SwAV, sinkhorn

TINY = dict(width=0.125, dim=64, pred_dim=16, proj_hidden=64, knn_every=0, knn_random_init=False, report=False,
            subset=256, batch_size=64, epochs=1, prototypes=32)


def _backbone():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 16), nn.ReLU())


def _x(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 4, 4, generator=g), torch.randn(n, 3, 4, 4, generator=g)


def _nt_xent_brute(z1, z2, t):
    """Straight from the SimCLR paper: l(i, j) = -log exp(s_ij/t) / sum_{k != i} exp(s_ik/t)."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        j = (i + n2 // 2) % n2
        sims = [float(z[i] @ z[k]) / t for k in range(n2)]
        total += -(sims[j] - math.log(sum(math.exp(sims[k]) for k in range(n2) if k != i)))
    return total / n2


def test_nt_xent_equals_brute_force():
    z1, z2 = torch.randn(5, 7), torch.randn(5, 7)
    assert nt_xent(z1, z2, z1, z2, 0.5).item() == pytest.approx(_nt_xent_brute(z1, z2, 0.5), rel=1e-5)
    # identical views and orthogonal images: every positive is certain, the loss is near 0
    eye = torch.eye(4) * 10
    assert nt_xent(eye, eye, eye, eye, 0.1).item() < 1e-3


def test_simclr_hubs_change_exactly_what_they_should():
    plain = SimCLR(_backbone(), 16, dim=8, proj_hidden=12, proj_layers=2)
    assert isinstance(plain.predictor, nn.Identity)
    x1, x2 = _x()
    for sg in (False, True):
        torch.manual_seed(0)
        model = SimCLR(_backbone(), 16, dim=8, proj_hidden=12, proj_layers=2, predictor=True, pred_dim=4,
                       stop_gradient=sg)
        z1 = model.encoder(x1)
        z1.retain_grad()
        out_z2 = model.encoder(x2)
        p1, p2 = model.predictor(z1), model.predictor(out_z2)
        t1, t2 = (z1.detach(), out_z2.detach()) if sg else (z1, out_z2)
        loss = nt_xent(p1, p2, t1, t2, 0.2)
        g_p1, g_z1 = torch.autograd.grad(loss, [p1, z1], retain_graph=True)
        (via_p1,) = torch.autograd.grad(p1, z1, grad_outputs=g_p1)
        assert torch.allclose(g_z1, via_p1, atol=1e-7) == sg  # with SG, z reaches the loss only through p


def test_byol_target_gets_no_gradient_and_follows_the_ema():
    torch.manual_seed(0)
    model = BYOL(_backbone(), 16, dim=8, proj_hidden=12, proj_layers=2, pred_dim=4, tau_base=0.9)
    assert all(torch.equal(t, o) for t, o in zip(model.target.parameters(), model.encoder.parameters()))
    out = model(*_x())
    out["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in model.target.parameters())
    assert all(p.grad is not None for p in model.encoder.parameters())
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
    before = [t.clone() for t in model.target.parameters()]
    model.after_step(0.5)
    tau = ema_tau(0.9, 0.5)
    assert tau == pytest.approx(0.95)
    for t, b, o in zip(model.target.parameters(), before, model.encoder.parameters()):
        torch.testing.assert_close(t, tau * b + (1 - tau) * o)
    assert ema_tau(0.99, 0.0) == pytest.approx(0.99) and ema_tau(0.99, 1.0) == pytest.approx(1.0)


def test_sinkhorn_marginals_and_gradient():
    scores = F.normalize(torch.randn(64, 8), dim=1) @ F.normalize(torch.randn(16, 8), dim=1).T
    q = sinkhorn(scores, iters=3, eps=0.05)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(64))  # each sample's code is a distribution
    plain = F.softmax(scores / 0.05, dim=1).sum(dim=0)  # the same codes without the equipartition
    assert q.sum(dim=0).std() < 0.75 * plain.std()  # 3 iterations: more balanced (equal after many)
    many = sinkhorn(scores, iters=50, eps=0.05)
    torch.testing.assert_close(many.sum(dim=0), torch.full((16,), 4.0), rtol=1e-3, atol=1e-3)


def _swav(**kw):
    torch.manual_seed(0)
    return SwAV(_backbone(), 16, dim=8, proj_hidden=12, proj_layers=2, prototypes=5, **kw)


def test_swav_codes_carry_no_gradient_unless_asked_and_prototypes_are_normalised():
    x1, x2 = _x(16)
    for sg in (True, False):
        model = _swav(stop_gradient=sg)
        with torch.no_grad():
            model.prototypes.weight.mul_(3.0)
        seen = []
        real = model.codes
        model.codes = lambda s: seen.append(real(s)) or seen[-1]
        model(x1, x2)["loss"].backward()
        assert all(q.requires_grad != sg for q in seen)
        torch.testing.assert_close(model.prototypes.weight.detach().norm(dim=1), torch.ones(5))
    assert isinstance(_swav().predictor, nn.Identity) and not isinstance(_swav(predictor=True).predictor, nn.Identity)


def test_swav_queue_and_multicrop():
    model = _swav(queue_size=32)
    small = [torch.randn(16, 3, 4, 4) for _ in range(2)]
    x1, x2 = _x(16)
    model(x1, x2, small=small)
    assert model.queued == 32 and model.queue.abs().sum() > 0  # filled with both views' normalised z
    torch.testing.assert_close(model.queue.norm(dim=1), torch.ones(32))
    full = model(x1, x2, small=small)["loss"]  # the queue now shapes the codes
    assert torch.isfinite(full)


@pytest.mark.parametrize("method", ["simclr", "byol", "swav"])
def test_loss_decreases_on_a_fixed_batch(method):
    torch.manual_seed(0)
    from simsiam.train import build_model, build_optimizer

    cfg = from_preset("digits", method=method, **{**TINY, "lr": 0.5})
    model = build_model(cfg)
    opt = build_optimizer(model, cfg)
    x1, x2 = torch.randn(32, 3, 16, 16), torch.randn(32, 3, 16, 16)
    losses = []
    for step in range(8):
        out = model(x1, x2)
        opt.zero_grad()
        out["loss"].backward()
        if hasattr(model, "after_backward"):
            model.after_backward(1)
        opt.step()
        if hasattr(model, "after_step"):
            model.after_step(step / 8)
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("method", ["simclr", "byol", "swav"])
def test_trains_from_the_config_end_to_end(method, tmp_path):
    extra = {"small_crops": 2, "queue_size": 128} if method == "swav" else {}
    s = train(from_preset("digits", method=method, run_dir=str(tmp_path / method), **{**TINY, **extra}))
    assert s["method"] == method and math.isfinite(s["loss"]) and s["knn_top1"] is not None
    state = torch.load(tmp_path / method / "checkpoint.pt", weights_only=False)["model"]
    if method == "byol":
        assert any(k.startswith("target.") for k in state)
    if method == "swav":  # frozen during epoch 0 (freeze_prototypes_epochs = 1): still normalised random init
        assert state["queue"].shape == (128, 64)


def test_swav_prototypes_frozen_through_the_real_loop(tmp_path):
    cfg = from_preset("digits", method="swav", run_dir=str(tmp_path / "a"), **TINY)
    torch.manual_seed(cfg.seed)
    from simsiam.train import build_model

    init = F.normalize(build_model(cfg).prototypes.weight.detach(), dim=1)
    train(cfg)
    after = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["model"]["prototypes.weight"]
    torch.testing.assert_close(after, init)  # frozen in epoch 0: only re-normalised
    train(cfg.replace(run_dir=str(tmp_path / "b"), freeze_prototypes_epochs=0))
    moved = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["model"]["prototypes.weight"]
    assert not torch.allclose(moved, init)


def test_method_defaults_and_bad_options():
    assert from_preset("digits", method="simclr").predictor is False
    assert from_preset("digits", method="simclr", predictor=True).predictor is True  # the user's option wins
    assert from_preset("digits", method="byol").solarize_p2 == pytest.approx(0.2)
    assert from_preset("digits", method="byol").blur_p == 0.0  # 32 px presets keep no blur
    with pytest.raises(ConfigError, match="small-crops"):
        Config(method="simclr", small_crops=2)
    with pytest.raises(ConfigError, match="method"):
        Config(method="moco")


def _ddp_worker(rank, world, init, z1, z2, scores, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    n = z1.shape[0] // world
    a = z1[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    b = z2[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    loss = nt_xent(a, b, a, b, 0.3)
    loss.backward()
    q = sinkhorn(scores[rank * n:(rank + 1) * n], 3, 0.05)
    torch.save({"loss": loss.detach(), "ga": a.grad, "gb": b.grad, "q": q}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


def test_ddp_gathers_negatives_with_gradients_and_sums_sinkhorn(tmp_path):
    """Two gloo ranks with half the batch each == one process with the whole batch: the mean of the
    ranks' losses is the full loss, each rank's gradient is world x the full loss's gradient on its
    slice (DDP then averages over ranks), and Sinkhorn's codes are those of the whole batch."""
    torch.manual_seed(0)
    z1, z2 = torch.randn(8, 5), torch.randn(8, 5)
    scores = F.normalize(torch.randn(8, 5), dim=1) @ F.normalize(torch.randn(6, 5), dim=1).T
    init = f"file://{tmp_path}/rendezvous"
    mp.spawn(_ddp_worker, args=(2, init, z1, z2, scores, str(tmp_path)), nprocs=2, join=True)
    r = [torch.load(tmp_path / f"{i}.pt") for i in range(2)]
    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    full = nt_xent(a, b, a, b, 0.3)
    full.backward()
    torch.testing.assert_close((r[0]["loss"] + r[1]["loss"]) / 2, full.detach())
    torch.testing.assert_close(torch.cat([r[0]["ga"], r[1]["ga"]]), 2 * a.grad)
    torch.testing.assert_close(torch.cat([r[0]["gb"], r[1]["gb"]]), 2 * b.grad)
    torch.testing.assert_close(torch.cat([r[0]["q"], r[1]["q"]]), sinkhorn(scores, 3, 0.05))
    assert os.path.exists(tmp_path / "1.pt")
