"""MoCo v2: the queue's pointer, the key encoder's EMA, InfoNCE against brute force, no gradient
into the keys, and training and resuming through the real loop."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_baselines import TINY, _heads, _one_thread, _x  # noqa: F401 (_one_thread: an autouse fixture)

from simsiam import from_preset
from simsiam.errors import ConfigError
from simsiam.methods import Views
from simsiam.methods.moco import MoCoV2, info_nce


def test_enqueue_overwrites_the_oldest_rows_and_wraps_round():
    model = _heads(MoCoV2, queue_size=5)
    assert model.queue.shape == (5, 8) and model.queue_ptr == 0
    torch.testing.assert_close(model.queue.norm(dim=1), torch.ones(5))  # random unit keys to start
    model.queue.copy_(torch.arange(5.0)[:, None].expand(5, 8))  # row r holds r everywhere
    u = 1 / math.sqrt(8)
    model.enqueue(torch.full((2, 8), 2.0))  # rows 0, 1; normalised: 1 / sqrt(8) each
    torch.testing.assert_close(model.queue[:, 0], torch.tensor([u, u, 2.0, 3.0, 4.0]))
    assert model.queue_ptr == 2
    model.enqueue(torch.full((4, 8), -3.0))  # rows 2, 3, 4, then round to 0
    torch.testing.assert_close(model.queue[:, 0], torch.tensor([-u, u, -u, -u, -u]))
    assert model.queue_ptr == 1  # (2 + 4) mod 5: row 1 is now the oldest
    assert model.queue_ptr.dtype == torch.long and "queue_ptr" in model.state_dict()


def test_key_encoder_follows_a_constant_momentum():
    model = _heads(MoCoV2, ema_tau=0.9)
    assert all(torch.equal(k, q) for k, q in zip(model.key_encoder.parameters(), model.encoder.parameters()))
    with torch.no_grad():
        for k, q in zip(model.key_encoder.parameters(), model.encoder.parameters()):
            k.fill_(1.0)
            q.fill_(3.0)
    model.after_step(0.1)  # 0.9 x 1 + 0.1 x 3
    assert all(torch.allclose(k, torch.full_like(k, 1.2)) for k in model.key_encoder.parameters())
    model.after_step(0.9)  # m does not depend on progress (BYOL's does): 0.9 x 1.2 + 0.1 x 3
    assert all(torch.allclose(k, torch.full_like(k, 1.38)) for k in model.key_encoder.parameters())


def _info_nce_brute(q, k, queue, t):
    """MoCo Eq. 1 per query with a loop: -log exp(q.k+/t) / (exp(q.k+/t) + sum_n exp(q.n/t))."""
    total = 0.0
    for qi, ki in zip(q.detach().double(), k.double()):
        qi = qi / qi.norm()
        pos = math.exp(float(qi @ (ki / ki.norm())) / t)
        neg = sum(math.exp(float(qi @ n) / t) for n in queue.double())
        total += -math.log(pos / (pos + neg))
    return total / len(q)


def test_info_nce_and_the_symmetric_loss_equal_brute_force():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    queue = F.normalize(torch.randn(11, 7, generator=g), dim=1)
    assert info_nce(q, k, queue, 0.2).item() == pytest.approx(_info_nce_brute(q, k, queue, 0.2), rel=1e-5)
    model = _heads(MoCoV2, queue_size=24, temperature=0.5)
    x1, x2 = _x()
    old = model.queue.clone()
    out = model(Views(x1, x2))
    with torch.no_grad():
        k1, k2 = model.key_encoder(x1), model.key_encoder(x2)
    expected = (_info_nce_brute(out.z1, k2, old, 0.5) + _info_nce_brute(out.z2, k1, old, 0.5)) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)  # the loss saw the queue before this batch
    torch.testing.assert_close(model.queue[:12], F.normalize(torch.cat([k1, k2]), dim=1))  # then k1, k2 went in
    torch.testing.assert_close(model.queue[12:], old[12:])


def test_no_gradient_reaches_the_key_encoder_or_the_queue():
    model = _heads(MoCoV2, queue_size=24)
    model(Views(*_x())).loss.backward()  # the in-place enqueue after the loss leaves its backward intact
    assert all(p.grad is None and not p.requires_grad for p in model.key_encoder.parameters())
    assert not model.queue.requires_grad and model.queue.grad is None
    assert all(p.grad is not None for p in model.encoder.parameters())
    trained = {id(p) for g in model.param_groups() for p in g["params"]}
    assert not any(id(p) in trained for p in model.key_encoder.parameters())  # nor in the optimizer


def test_mocov2_defaults_and_bad_options():
    from simsiam.configure import from_dict

    d = from_preset("digits", method="mocov2").to_dict()
    assert (d["temperature"], d["dim"], d["proj_layers"], d["queue_size"], d["ema_tau"]) == (0.2, 128, 2, 4096, 0.99)
    assert "predictor" not in d and "stop_gradient" not in d  # MoCo v2 has neither option
    assert from_preset("imagenet", method="mocov2", data_dir="/x").proj_layers == 2  # MoCo v2's head everywhere
    cfg = from_preset("digits", method="mocov2", queue_size=512, ema_tau=0.999)  # yours win
    assert (cfg.to_dict()["queue_size"], cfg.to_dict()["ema_tau"]) == (512, 0.999)
    for bad, match in [
        (dict(similarity="cross-entropy"), "--similarity is not an option of --method mocov2; it is one of simsiam"),
        (dict(small_crops=2), "--small-crops is not an option of --method mocov2; it is one of swav"),
        (dict(stop_gradient=False), "--stop-gradient is not an option of --method mocov2"),
        (dict(predictor=True), "--predictor is not an option of --method mocov2"),
        (dict(queue_size=200, batch_size=128), "--queue-size 200 is below the 256 keys one step enqueues"),
        (dict(queue_size=0), "--queue-size 0 is below"),
        (dict(queue_start_epoch=1), "--queue-start-epoch is not an option of --method mocov2; it is one of swav"),
    ]:
        with pytest.raises(ConfigError, match=match) as e:
            from_dict({"method": "mocov2", **bad})
        assert "\n" not in str(e.value)
    assert isinstance(_heads(MoCoV2).predictor, nn.Identity)
    own = _heads(MoCoV2, head_bn="none").projector  # --head-bn none: MoCo v2's fc-ReLU-fc, biases, no BN
    assert [type(m) for m in own] == [nn.Linear, nn.ReLU, nn.Linear] and own[0].bias is not None
