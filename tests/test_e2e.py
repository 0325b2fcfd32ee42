"""End to end on a slice of the real CIFAR-10 (from ../shared), narrow ResNet, a few epochs.

SimSiam needs far longer than this to beat a random-init backbone's kNN on CIFAR-10, so these
tests check the dynamics the paper describes (Fig. 2) instead: with stop-gradient the loss falls
and z-std stays near 1/sqrt(d); without it, z-std falls to a small fraction of that and the loss
goes to -1. And a resumed run ends with exactly the weights of an uninterrupted one.
"""

import json

import pytest
import torch

from simsiam import checkpoint, from_preset, train

# 1000 train / 200 test images, width-1/8 CIFAR ResNet-18, small heads.
SMALL = dict(
    width=0.125,
    dim=256,
    pred_dim=64,
    proj_hidden=256,
    batch_size=64,
    knn_every=0,
    knn_random_init=False,
    log_every=5,
    report=False,
)


def small_cfg(data_dir, run_dir, **kw):
    return from_preset("cifar10-cpu", data_dir=str(data_dir), run_dir=str(run_dir), **{**SMALL, **kw})


def metrics(run_dir):
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_simsiam_learns_without_collapse_and_collapses_without_stop_gradient(cifar_slice, tmp_path):
    # A high lr makes the no-stop-gradient collapse show within 6 short epochs. Measured: with
    # stop-gradient loss -0.16 -> -0.56, z-std 0.99 x 1/sqrt(d) throughout; without it the loss
    # goes to -0.85..-0.94 (it moves by a few hundredths with float-level changes to the
    # augmentation, so the last epoch's mean is checked), z-std 0.3-0.45 x 1/sqrt(d).
    kw = dict(epochs=6, lr=2.0)
    ok = train(small_cfg(cifar_slice, tmp_path / "sg", **kw))
    m = metrics(tmp_path / "sg")
    assert m[-1]["loss"] < m[0]["loss"] - 0.2, [x["loss"] for x in m]
    assert all(x["z_std"] > 0.9 * x["z_std_healthy"] for x in m) and not ok["collapsed"]

    bad = train(small_cfg(cifar_slice, tmp_path / "nosg", stop_gradient=False, **kw))
    assert bad["collapsed"] and bad["z_std"] < 0.5 * bad["z_std_healthy"], bad
    last = [x["loss"] for x in metrics(tmp_path / "nosg")][-3:]
    assert sum(last) / len(last) < -0.8 and bad["loss"] < m[-1]["loss"] - 0.2, last
    assert bad["knn_top1"] < ok["knn_top1"]


def test_resume_gives_the_same_weights(cifar_slice, tmp_path, monkeypatch):
    kw = dict(epochs=2, subset=256, schedule="step")
    train(small_cfg(cifar_slice, tmp_path / "full", **kw))

    real_save = checkpoint.write_checkpoint

    def crash_after_first(*args):
        real_save(*args)
        raise KeyboardInterrupt  # the process dies right after the epoch-1 checkpoint

    monkeypatch.setattr(checkpoint, "write_checkpoint", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        train(small_cfg(cifar_slice, tmp_path / "cut", **kw))
    monkeypatch.setattr(checkpoint, "write_checkpoint", real_save)
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["epoch"] == 1
    train(small_cfg(cifar_slice, tmp_path / "cut", resume=True, **kw))

    full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["model"]
    cut = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["model"]
    assert full.keys() == cut.keys()
    for k in full:
        torch.testing.assert_close(cut[k], full[k], rtol=0, atol=0, msg=k)
    assert len(metrics(tmp_path / "cut")) == 2
