import pytest
import torch
import torch.nn as nn

from simsiam.data import ImageSet
from simsiam.evaluate import fingerprint, fit_linear_fast, linear_report, topk_accuracy, train_linear
from simsiam.optim import LARS


def test_lars_step_matches_formula():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    w.grad = torch.tensor([[0.0, 2.0]])  # ||g|| = 2
    opt = LARS([w], lr=0.5, momentum=0.9, weight_decay=0.1, eta=0.001)
    opt.step()
    local = 0.001 * 5 / (2 + 0.1 * 5)
    expected = torch.tensor([[3.0, 4.0]]) - 0.5 * local * (
        torch.tensor([[0.0, 2.0]]) + 0.1 * torch.tensor([[3.0, 4.0]])
    )
    torch.testing.assert_close(w.detach(), expected)


def test_linear_classifier_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 32, generator=g) * 3
    y = torch.randint(0, 5, (1000,), generator=g)
    x = centers[y] + 0.3 * torch.randn(1000, 32, generator=g)
    head = train_linear(lambda idx, epoch: x[idx], y, 32, 5, epochs=30, batch_size=256, progress=False)
    assert (head(x[:200]).argmax(1) == y[:200]).float().mean() > 0.99
    scores = head(x)
    acc = topk_accuracy(scores, y, ks=(1, 5))
    assert acc["top1"] > 0.99 and "top5" not in acc  # top-5 of 5 classes is meaningless
    fast = fit_linear_fast(x[:800], y[:800], 5)
    assert (fast(x[800:]).argmax(1) == y[800:]).float().mean() > 0.99


def tiny_backbone():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_linear_eval_leaves_the_backbone_bitwise_unchanged():
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 2, (64,), generator=g)
    images = torch.randint(0, 60, (64, 3, 12, 12), dtype=torch.uint8, generator=g)
    images[labels == 1, 0] += 150  # class 1 is red
    data = ImageSet(images, labels, ["a", "b"])
    for fast in (True, False):
        backbone = tiny_backbone()
        state = {k: v.clone() for k, v in backbone.state_dict().items()}
        before = fingerprint(backbone)
        res = linear_report(
            backbone, data, data, 12, (0.5,) * 3, (0.5,) * 3, fast=fast, epochs=5, batch_size=32, progress=False
        )
        assert fingerprint(backbone) == before
        for k, v in backbone.state_dict().items():
            assert torch.equal(v, state[k]), k  # BN running stats too: eval mode throughout
        assert 0 <= res["top1"] <= 1 and set(res["per_class"]) == {"a", "b"}


def test_a_backbone_that_moves_during_the_probe_is_an_error(monkeypatch):
    """The probe's own guard: weights that change while it runs (a bug) raise instead of a result."""
    import simsiam.evaluate as E
    from simsiam.errors import TrainingError

    real = E.pooled_features

    def and_move(backbone, *a, **kw):
        feats = real(backbone, *a, **kw)
        with torch.no_grad():
            next(backbone.parameters()).add_(1e-3)
        return feats

    monkeypatch.setattr(E, "pooled_features", and_move)
    g = torch.Generator().manual_seed(1)
    data = ImageSet(
        torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8, generator=g), torch.arange(16) % 2, ["a", "b"]
    )
    with pytest.raises(TrainingError, match="weights changed during linear evaluation"):
        linear_report(tiny_backbone(), data, data, 12, (0.5,) * 3, (0.5,) * 3, fast=True, progress=False)


def two_colour_set(n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    images = torch.randint(0, 60, (n, 3, 12, 12), dtype=torch.uint8, generator=g)
    images[labels == 1, 0] += 150  # class 1 is red
    return ImageSet(images, labels, ["a", "b"])


def test_the_linear_lr_follows_the_batch_asked_for_also_on_fewer_images(monkeypatch):
    """Official main_lincls.py: init_lr = lr x batch_size / 256 with the batch size asked for; 64
    images and batch 4096 make one step an epoch at the paper's lr 1.6, not 0.1 x 64 / 256."""
    import simsiam.optim as O

    steps = []

    class Spy(O.LARS):
        def step(self, closure=None):
            steps.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(O, "LARS", Spy)
    data = two_colour_set()
    res = linear_report(tiny_backbone(), data, data, 12, (0.5,) * 3, (0.5,) * 3, fast=False, epochs=3, progress=False)
    assert len(steps) == 3 and steps[0] == pytest.approx(0.1 * 4096 / 256)  # cosine from there
    assert "batch 4096 (all 64 images a step), lr 0.1 x 4096/256" in res.optimizer
    steps.clear()
    linear_report(
        tiny_backbone(), data, data, 12, (0.5,) * 3, (0.5,) * 3, fast=False, epochs=1, batch_size=16, progress=False
    )
    assert len(steps) == 4 and steps[0] == pytest.approx(0.1 * 16 / 256)  # asked for: 16


def test_report_best_takes_the_best_epochs_top1_and_final_the_last():
    data = two_colour_set()
    kw = dict(fast=False, epochs=6, batch_size=16, progress=False)
    final = linear_report(tiny_backbone(), data, data, 12, (0.5,) * 3, (0.5,) * 3, **kw)
    best = linear_report(tiny_backbone(), data, data, 12, (0.5,) * 3, (0.5,) * 3, report="best", **kw)
    assert len(final.top1_per_epoch) == 6 and final.top1_per_epoch == best.top1_per_epoch  # the same training
    assert final.top1 == pytest.approx(final.top1_per_epoch[-1]) and final.report == "final"
    assert best.top1 == pytest.approx(max(best.top1_per_epoch)) and best.report == "best"
    assert best.top1_per_epoch[best.best_epoch - 1] == max(best.top1_per_epoch)
    assert best.best_epoch == 1 + best.top1_per_epoch.index(max(best.top1_per_epoch))  # the earliest of equal bests
    assert best.to_json()["top1_per_epoch"] == best.top1_per_epoch
    from simsiam.errors import ConfigError

    with pytest.raises(ConfigError, match="--report best needs the paper's protocol"):
        linear_report(tiny_backbone(), data, data, 12, (0.5,) * 3, (0.5,) * 3, fast=True, report="best")
