"""SimCLR, BYOL and SwAV (+ the paper's Sec. 6.2 hubs): losses against brute force, gradients,
EMA, Sinkhorn, a 2-process DDP check, and end-to-end runs through the real training loop."""

import math

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from test_method import z1_gradient_besides_p1

from simsiam import checkpoint, from_preset, train
from simsiam.errors import ConfigError
from simsiam.methods import Views, build_model
from simsiam.methods.byol import BYOL
from simsiam.methods.heads import ema_tau
from simsiam.methods.simclr import SimCLR, nt_xent
from simsiam.methods.swav import SwAV, sinkhorn
from simsiam.optim import build_optimizer

# Digits through the real loop: 64 images, batch 32 (2 steps an epoch), narrow ResNet, small heads.
TINY = dict(
    width=0.125,
    dim=64,
    pred_dim=16,
    proj_hidden=64,
    knn_every=0,
    knn_random_init=False,
    report=False,
    subset=64,
    batch_size=32,
    epochs=1,
)
SWAV = dict(prototypes=32)  # SwAV's own option, for its runs only


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is as fast alone and far faster on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _backbone():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 16), nn.ReLU())


def _x(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 4, 4, generator=g), torch.randn(n, 3, 4, 4, generator=g)


def _heads(cls, **kw):
    torch.manual_seed(0)
    return cls(_backbone(), 16, dim=8, proj_hidden=12, proj_layers=2, **kw)


# --- SimCLR


def _nt_xent_brute(a1, a2, c1, c2, t):
    """SimCLR Eq. 1 with a loop: l(i) = -log exp(s(i, pos)/t) / sum_{k != i} exp(s(i, k)/t) over the
    2N candidates, pos = i's other view; anchors a may differ from candidates c (the hubs)."""
    a = F.normalize(torch.cat([a1, a2]), dim=1).double().numpy()
    c = F.normalize(torch.cat([c1, c2]), dim=1).double().numpy()
    n2 = len(a)
    total = 0.0
    for i in range(n2):
        s = [float(a[i] @ c[k]) / t for k in range(n2)]
        total += -(s[(i + n2 // 2) % n2] - math.log(sum(math.exp(s[k]) for k in range(n2) if k != i)))
    return total / n2


def test_nt_xent_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    z1, z2, p1, p2 = (torch.randn(5, 7, generator=g) for _ in range(4))
    assert nt_xent(z1, z2, z1, z2, 0.5).item() == pytest.approx(_nt_xent_brute(z1, z2, z1, z2, 0.5), rel=1e-5)
    assert nt_xent(p1, p2, z1, z2, 0.2).item() == pytest.approx(_nt_xent_brute(p1, p2, z1, z2, 0.2), rel=1e-5)
    # identical views of orthogonal images: every positive is certain, the loss ~ 0 (self masked)
    eye = torch.eye(4) * 10
    assert nt_xent(eye, eye, eye, eye, 0.1).item() < 1e-3


def test_simclr_hubs_stop_gradient_blocks_exactly_the_target_path():
    """SimCLR: p is z. +predictor: z1 gets gradient as a candidate and through p1 = h(z1);
    +predictor+SG: only through p1."""
    x1, x2 = _x()
    out = _heads(SimCLR)(Views(x1, x2))
    assert out.p1 is out.z1
    rest = z1_gradient_besides_p1(_heads(SimCLR, predictor=True, pred_dim=4)(Views(x1, x2)))
    assert rest.abs().max() > 1e-4  # z1 is also a candidate of the other anchors
    rest = z1_gradient_besides_p1(_heads(SimCLR, predictor=True, pred_dim=4, stop_gradient=True)(Views(x1, x2)))
    torch.testing.assert_close(rest, torch.zeros_like(rest))


# --- BYOL


def test_byol_target_gets_no_gradient_and_follows_the_ema():
    model = _heads(BYOL, pred_dim=4, ema_tau=0.9)
    assert all(torch.equal(t, o) for t, o in zip(model.target.parameters(), model.encoder.parameters()))
    assert any(k.startswith("target.") for k in model.state_dict())  # checkpointed with the model
    model(Views(*_x())).loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.target.parameters())
    assert all(p.grad is not None for p in [*model.encoder.parameters(), *model.predictor.parameters()])
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(torch.randn_like(p))
    before = [t.clone() for t in model.target.parameters()]
    model.after_step(0.5)
    tau = ema_tau(0.9, 0.5)
    assert tau == pytest.approx(0.95)
    for t, b, o in zip(model.target.parameters(), before, model.encoder.parameters()):
        torch.testing.assert_close(t, tau * b + (1 - tau) * o)
    assert ema_tau(0.99, 0.0) == pytest.approx(0.99) and ema_tau(0.99, 1.0) == 1.0
    assert isinstance(_heads(BYOL, predictor=False).predictor, nn.Identity)  # BYOL's own ablation


# --- SwAV


def _sinkhorn_numpy(scores, iters, eps):
    """The official algorithm written out in float64: Q = exp(S/eps)^T (K x B), total mass 1, then
    alternately every prototype (row) to mass 1/K and every sample (column) to 1/B; return B Q^T."""
    q = np.exp(scores.double().numpy() / eps).T
    k, b = q.shape
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(axis=1, keepdims=True) * k
        q /= q.sum(axis=0, keepdims=True) * b
    return torch.from_numpy(q.T * b).float()


def test_sinkhorn_values_and_marginals():
    """Convention: codes q (B x K), every row sums to 1; columns sum to ~B/K, exactly when converged."""
    g = torch.Generator().manual_seed(0)
    scores = F.normalize(torch.randn(64, 8, generator=g), dim=1) @ F.normalize(torch.randn(16, 8, generator=g), dim=1).T
    q = sinkhorn(scores, iters=3, eps=0.05)
    torch.testing.assert_close(q, _sinkhorn_numpy(scores, 3, 0.05))
    torch.testing.assert_close(q.sum(dim=1), torch.ones(64))
    plain = F.softmax(scores / 0.05, dim=1).sum(dim=0)  # the same codes without equipartition
    assert q.sum(dim=0).std() < 0.75 * plain.std()
    torch.testing.assert_close(
        sinkhorn(scores, iters=50, eps=0.05).sum(dim=0), torch.full((16,), 4.0), rtol=1e-3, atol=1e-3
    )


def test_swav_codes_carry_no_gradient_unless_asked_and_prototypes_are_normalised():
    x1, x2 = _x(16)
    for sg in (True, False):
        model = _heads(SwAV, prototypes=5, stop_gradient=sg)
        with torch.no_grad():
            model.prototypes.weight.mul_(3.0)
        seen, real = [], model.codes
        model.codes = lambda s, seen=seen, real=real: seen.append(real(s)) or seen[-1]
        model(Views(x1, x2)).loss.backward()
        assert len(seen) == 2 and all(q.requires_grad != sg for q in seen)
        torch.testing.assert_close(model.prototypes.weight.detach().norm(dim=1), torch.ones(5))
    assert isinstance(_heads(SwAV).predictor, nn.Identity)
    assert not isinstance(_heads(SwAV, predictor=True).predictor, nn.Identity)


def test_swav_queue_from_its_start_epoch_and_multicrop():
    model = _heads(SwAV, prototypes=5, queue_size=32, queue_start_epoch=1)
    x1, x2 = _x(16)
    small = [torch.randn(16, 3, 4, 4) for _ in range(2)]
    model(Views(x1, x2, tuple(small)))  # 2 x 16 rows: the queue is full
    assert model.queued == 32
    torch.testing.assert_close(model.queue.norm(dim=1), torch.ones(32))  # normalised z of both views
    s = torch.randn(16, 5)
    torch.testing.assert_close(model.codes(s), sinkhorn(s, 3, 0.05))  # epoch 0 < start: no queue yet
    model.on_epoch_start(1)
    with_queue = sinkhorn(torch.cat([s, model.prototypes(model.queue).detach()]), 3, 0.05)[:16]
    torch.testing.assert_close(model.codes(s), with_queue)
    assert torch.isfinite(model(Views(x1, x2, tuple(small))).loss)


def test_swav_prototypes_frozen_by_the_hook(tmp_path):
    """after_backward(epoch) before the real optimizer's step: no update (nor weight decay) while
    epoch < freeze_prototypes_epochs, an update after."""
    cfg = from_preset("digits", method="swav", **TINY, **SWAV)
    model = _heads(SwAV, prototypes=5, freeze_prototypes_epochs=1)
    opt = build_optimizer(model, cfg)
    for epoch, moves in [(0, False), (1, True)]:
        before = F.normalize(model.prototypes.weight.detach(), dim=1)
        opt.zero_grad()
        model(Views(*_x(16))).loss.backward()
        model.after_backward(epoch)
        opt.step()
        assert torch.allclose(model.prototypes.weight, before) != moves


# --- all three


@pytest.mark.parametrize("method", ["simclr", "byol", "swav"])
def test_loss_decreases_on_a_fixed_batch(method):
    """A few SGD steps with the real optimizer and hooks on one batch (tiny MLP backbone)."""
    cfg = from_preset("digits", method=method, **{**TINY, "lr": 2.0})
    cls = {"simclr": SimCLR, "byol": BYOL, "swav": SwAV}[method]
    model = _heads(cls, **({"prototypes": 10} if method == "swav" else {}))
    opt = build_optimizer(model, cfg)
    x1, x2 = _x(32, seed=2)
    losses = []
    for step in range(10):
        out = model(Views(x1, x2))
        opt.zero_grad()
        out.loss.backward()
        model.after_backward(1)
        opt.step()
        model.after_step((step + 1) / 10)
        losses.append(out.loss.item())
    assert losses[-1] < losses[0] - 0.05, losses


def test_simclr_trains_end_to_end(tmp_path):
    s = train(from_preset("digits", method="simclr", run_dir=str(tmp_path), **TINY))
    assert s["method"] == "simclr" and math.isfinite(s["loss"]) and s["z_std"] > 0


def test_swav_trains_end_to_end_with_multicrop_and_queue_prototypes_frozen(tmp_path):
    """freeze_prototypes_epochs = 1, one epoch: the trained prototypes are the (normalised) init."""
    cfg = from_preset("digits", method="swav", run_dir=str(tmp_path), small_crops=2, queue_size=64, **TINY, **SWAV)
    torch.manual_seed(cfg.seed)  # as train() does before building the model (data loading draws nothing)
    init = F.normalize(build_model(cfg).prototypes.weight.detach(), dim=1)
    s = train(cfg)
    assert math.isfinite(s["loss"])
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["model"]
    assert state["queue"].shape == (64, 64) and state["queued"] == 2 * 2 * 32
    torch.testing.assert_close(state["prototypes.weight"], init)


STATE = {  # what only the method (or its Sec. 5.2 targets) keeps, and must travel through a resume
    "byol": dict(method="byol"),  # the target encoder, an EMA
    "swav-queue": dict(method="swav", queue_size=64, **SWAV),  # past projections, filled from step 1
    "mocov2": dict(method="mocov2", subset=128, queue_size=96),  # keys and pointer: 64 a step, so it wraps
    "target-memory": dict(predictor=False, target_memory=True),  # one moving-average eta per image
}


@pytest.mark.parametrize("case", list(STATE))
def test_method_state_travels_through_a_mid_epoch_resume(case, tmp_path, monkeypatch):
    """Two epochs straight == a crash right after the first checkpoint (step 1, mid-epoch), then
    --resume: the same weights, buffers and target memory, bit for bit. The resume mechanisms
    themselves (kill -9, signals, a torn file, across process counts) are test_reliability's and
    test_distributed's; this is the state each method adds."""
    cfg = from_preset("digits", run_dir=str(tmp_path / "full"), **{**TINY, "epochs": 2, **STATE[case]})
    train(cfg)
    real_save = checkpoint.write_checkpoint

    def crash_after_first(*args):
        real_save(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "write_checkpoint", crash_after_first)
    cut = cfg.replace(run_dir=str(tmp_path / "cut"), checkpoint_every=1)
    with pytest.raises(KeyboardInterrupt):
        train(cut)
    monkeypatch.setattr(checkpoint, "write_checkpoint", real_save)
    assert checkpoint.read_manifest(tmp_path / "cut")[0]["step"] == 1  # the crash was mid-epoch
    train(cut.replace(resume=True))
    full, part = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=False) for d in ("full", "cut"))
    assert full["model"].keys() == part["model"].keys()
    for k in full["model"]:
        torch.testing.assert_close(part["model"][k], full["model"][k], rtol=0, atol=0, msg=k)
    if case == "target-memory":
        assert full["memory"]["eta"].shape == (64, 64)
        torch.testing.assert_close(part["memory"]["eta"], full["memory"]["eta"], rtol=0, atol=0)
    if case == "byol":
        assert not torch.equal(full["model"]["target.0.conv1.weight"], full["model"]["encoder.0.conv1.weight"])
    if case == "swav-queue":
        assert full["model"]["queued"] == 2 * 2 * 2 * 32  # 2 epochs of 2 steps, 2 views of 32
    if case == "mocov2":
        assert full["model"]["queue_ptr"] == (2 * 4 * 64) % 96  # 2 epochs of 4 steps, 2 x 32 keys each
        assert not torch.equal(full["model"]["key_encoder.0.conv1.weight"], full["model"]["encoder.0.conv1.weight"])


def test_method_defaults_and_bad_options():
    """Each method's options are its own, with its own defaults; an option of another method is
    refused, naming the methods that have it, for every method (from the declarations)."""
    from simsiam.configure import from_dict
    from simsiam.methods import METHODS, option_owners

    assert from_preset("digits", method="simclr").to_dict()["predictor"] is False
    assert from_preset("digits", method="simclr").to_dict()["temperature"] == 0.2
    assert from_preset("digits", method="simclr", predictor=True).to_dict()["predictor"] is True  # yours win
    assert from_preset("digits", method="swav").to_dict()["temperature"] == 0.1
    assert from_preset("digits", method="swav").to_dict()["prototypes"] == 100  # the digits preset's
    assert "prototypes" not in from_preset("digits").to_dict()  # not SimSiam's: the preset's value is not used
    owners = option_owners()
    for method in METHODS:
        for name, have in owners.items():
            if method not in have:
                with pytest.raises(
                    ConfigError, match=f"--{name.replace('_', '-')} is not an option of --method {method}"
                ):
                    from_preset("digits", method=method, **{name: from_dict({"method": have[0]}).to_dict()[name]})
    byol = from_preset("digits", method="byol")
    assert byol.solarize_p2 == pytest.approx(0.2) and byol.jitter[2] == pytest.approx(0.2)
    assert byol.blur_p == 0.0 and byol.blur_p2 is None  # 32 px presets keep no blur
    for bad, match in [
        (dict(method="simclr", small_crops=2), "--small-crops is not an option of --method simclr; it is one of swav"),
        (dict(method="swav", small_crops=2, image_size=32, small_crop_size=32), "small-crop-size 32 must be below"),
        (
            dict(method="swav", head_bn="none"),
            "--head-bn is not an option of --method swav; it is one of simsiam, mocov2",
        ),
        (dict(method="byol", stop_gradient=False), "--stop-gradient is not an option of --method byol"),
        (dict(method="moco"), "--method must be one of"),
    ]:
        with pytest.raises(ConfigError, match=match):
            from_dict(bad)


# --- DDP: two gloo processes == one process with the whole batch


def _ddp_worker(rank, world, init, z1, z2, scores, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    n = z1.shape[0] // world
    a = z1[rank * n : (rank + 1) * n].clone().requires_grad_(True)
    b = z2[rank * n : (rank + 1) * n].clone().requires_grad_(True)
    loss = nt_xent(a, b, a, b, 0.3)
    loss.backward()
    (g_sg,) = torch.autograd.grad(nt_xent(a, b, a.detach(), b.detach(), 0.3), a)  # the hub's stop-gradient
    q = sinkhorn(scores[rank * n : (rank + 1) * n], 3, 0.05)
    torch.save({"loss": loss.detach(), "ga": a.grad, "gb": b.grad, "g_sg": g_sg, "q": q}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


def test_ddp_gathers_negatives_with_gradients_and_sums_sinkhorn(tmp_path):
    """Each rank's loss has all 2 x 8 views as candidates: the mean of the ranks' losses is the full
    loss; each rank's gradient on its slice is world x the full loss's (DDP then averages over
    ranks, giving exactly the full gradient); Sinkhorn's codes are those of the whole batch."""
    torch.manual_seed(0)
    z1, z2 = torch.randn(8, 5), torch.randn(8, 5)
    scores = F.normalize(torch.randn(8, 5), dim=1) @ F.normalize(torch.randn(6, 5), dim=1).T
    mp.spawn(_ddp_worker, args=(2, f"file://{tmp_path}/rendezvous", z1, z2, scores, str(tmp_path)), nprocs=2)
    r = [torch.load(tmp_path / f"{i}.pt") for i in range(2)]
    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    full = nt_xent(a, b, a, b, 0.3)
    full.backward()
    torch.testing.assert_close((r[0]["loss"] + r[1]["loss"]) / 2, full.detach())
    torch.testing.assert_close(torch.cat([r[0]["ga"], r[1]["ga"]]), 2 * a.grad)
    torch.testing.assert_close(torch.cat([r[0]["gb"], r[1]["gb"]]), 2 * b.grad)
    (g_sg,) = torch.autograd.grad(nt_xent(a, b, a.detach(), b.detach(), 0.3), a)  # anchors only: no sum over ranks
    torch.testing.assert_close(torch.cat([r[0]["g_sg"], r[1]["g_sg"]]), 2 * g_sg)
    torch.testing.assert_close(torch.cat([r[0]["q"], r[1]["q"]]), sinkhorn(scores, 3, 0.05))
