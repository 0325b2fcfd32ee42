"""The training engine's contract: hooks reach the unwrapped method even when the model is wrapped,
a new method is one class plus one registry line, view plans draw what the experiment asks for,
and the linear probe's schedule is the training cosine."""

import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_baselines import SWAV, TINY  # digits, 64 images, batch 32, narrow ResNet, small heads

from simsiam import checkpoint, from_preset, train
from simsiam.config import MethodOptions
from simsiam.data import Augment
from simsiam.engine import setup, train_one_epoch
from simsiam.errors import ConfigError
from simsiam.methods import METHODS, Method, StepOutput, Views, build_model
from simsiam.methods.heads import projection_mlp, z_std
from simsiam.monitor import Monitor
from simsiam.optim import cosine_lr
from simsiam.options import POSITIVE, opt
from simsiam.views import ViewPlan


def test_hooks_reach_the_method_through_a_wrapper(tmp_path):
    """DataParallel (like DDP) hides the method's attributes: the loop must call BYOL's EMA and
    SwAV's prototype freeze on the unwrapped method, and checkpoints keep plain keys."""
    for method in ["byol", "swav"]:
        own = SWAV if method == "swav" else {}
        cfg = from_preset("digits", method=method, run_dir=str(tmp_path / method), **TINY, **own)
        run = setup(cfg)
        run.model = nn.DataParallel(run.method)  # on a CPU it just calls the module
        assert not hasattr(run.model, "after_step")
        before = {k: v.clone() for k, v in run.method.state_dict().items()}
        monitor = Monitor(cfg, run.run_dir, run.steps_per_epoch, 0, run.z_healthy)
        train_one_epoch(run, 0, monitor)
        monitor.close()
        after = run.method.state_dict()
        if method == "byol":  # the target followed the online encoder
            assert not torch.equal(after["target.0.conv1.weight"], before["target.0.conv1.weight"])
        else:  # frozen during epoch 0: only the per-forward re-normalisation touched the prototypes
            normalised = F.normalize(before["prototypes.weight"], dim=1)
            torch.testing.assert_close(after["prototypes.weight"], normalised)
            assert not torch.equal(after["encoder.0.conv1.weight"], before["encoder.0.conv1.weight"])
        assert checkpoint.model_state(run.model).keys() == before.keys()


@dataclass
class CentroidOptions(MethodOptions):
    pull: float = opt(1.0, "how hard view 1's z is pulled to view 2's", check=POSITIVE)


class Centroid(Method):
    """A toy method to prove the contract: pull both views' z towards each other, no predictor;
    its own option (`pull`), a run option it changes (DEFAULTS) and the head sizes it takes."""

    Options = CentroidOptions
    DEFAULTS = dict(lr=0.5)
    HEADS = ("dim",)

    def __init__(self, backbone, feature_dim, dim, pull=1.0):
        super().__init__()
        self.backbone = backbone
        self.encoder = nn.Sequential(backbone, projection_mlp(feature_dim, dim, dim, 2))
        self.predictor = nn.Identity()
        self.dim, self.pull = dim, pull

    def forward(self, views, targets=None):
        z1, z2 = self.encoder(views.x1), self.encoder(views.x2)
        loss = -self.pull * F.cosine_similarity(z1, z2.detach()).mean()
        return StepOutput(loss, z_std(z1), z1, z2)


def test_a_new_method_is_one_class_and_one_registry_line(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "centroid", Centroid)
    cfg = from_preset("digits", method="centroid", run_dir=str(tmp_path), pull=2.0, **{**TINY, "epochs": 2})
    assert cfg.lr == 0.5 and cfg.to_dict()["pull"] == 2.0  # its DEFAULTS and its own option
    with pytest.raises(ConfigError, match="--pull is not an option of --method simsiam; it is one of centroid"):
        from_preset("digits", pull=2.0)
    with pytest.raises(ConfigError, match="--temperature is not an option of --method centroid"):
        from_preset("digits", method="centroid", temperature=0.5)
    with pytest.raises(ConfigError, match="--pull must be a positive number"):
        from_preset("digits", method="centroid", pull=0.0)
    summary = train(cfg)
    assert summary["method"] == "centroid" and summary["knn_top1"] is not None
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((tmp_path / "config.json").read_text())["method"] == "centroid"


def test_view_plans_draw_pairs_and_small_views_in_a_fixed_order():
    images = torch.randint(0, 256, (6, 3, 20, 20), dtype=torch.uint8)
    aug = Augment(16, blur_p=0.0, small_size=8)
    one = ViewPlan(aug, torch.Generator().manual_seed(0)).draw(images)
    assert len(one) == 1 and one[0].small == ()
    x1, x2 = aug.two_views(images, torch.Generator().manual_seed(0))
    assert torch.equal(one[0].x1, x1) and torch.equal(one[0].x2, x2)  # the same draws as the augmentation
    plan = ViewPlan(aug, torch.Generator().manual_seed(0), pairs=2, small_crops=3)
    two = plan.draw(images)
    assert len(two) == 2 and torch.equal(two[0].x1, x1) and not torch.equal(two[1].x1, x1)
    assert [s.shape for s in two[0].small] == [(6, 3, 8, 8)] * 3
    outs = [
        StepOutput(torch.tensor(1.0), torch.tensor(0.1), x1, x2),
        StepOutput(torch.tensor(3.0), torch.tensor(0.2), x2, x1),
    ]
    combined = plan.combine(outs)
    assert combined.loss.item() == 2.0 and combined.z_std is outs[0].z_std and combined.z1 is x1


def test_build_model_takes_any_backbone():
    cfg = from_preset("digits", **TINY)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 24))
    model = build_model(cfg, backbone, 24)
    out = model(Views(torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)))
    assert out.z1.shape == (4, 64) and out.loss.ndim == 0
    assert model.backbone is backbone


def test_linear_probe_and_training_share_one_cosine(monkeypatch):
    """train_linear sets lr = cosine_lr(base, epoch / epochs) each epoch, as pretraining per epoch."""
    import simsiam.optim as optim
    from simsiam.evaluate import train_linear

    seen, real = [], optim.set_lr
    monkeypatch.setattr(optim, "set_lr", lambda opt, lr, fixed=None: seen.append(lr) or real(opt, lr, fixed))
    feats, labels = torch.randn(8, 4), torch.tensor([0, 1] * 4)
    train_linear(lambda idx, epoch: feats[idx], labels, 4, 2, epochs=4, batch_size=8, base_lr=0.1, progress=False)
    lr = 0.1 * 8 / 256
    assert seen == [cosine_lr(lr, e / 4) for e in range(4)] and seen[0] == lr


def test_losses_run_in_float32_under_bf16_autocast():
    """The heads may end in bf16 under autocast; every loss (NT-Xent's logits matmul included)
    is computed in fp32, so it equals the fp32 computation on the same inputs exactly."""
    from simsiam.methods.byol import byol_loss
    from simsiam.methods.simclr import nt_xent
    from simsiam.methods.simsiam import cross_entropy_similarity, negative_cosine
    from simsiam.methods.swav import swapped_prediction

    torch.manual_seed(0)
    a, b = torch.randn(8, 16), torch.randn(8, 16)
    q = F.softmax(torch.randn(8, 16), dim=1)
    losses = {
        "negative_cosine": lambda: negative_cosine(a, b),
        "cross_entropy": lambda: cross_entropy_similarity(a, b),
        "byol": lambda: byol_loss(a, b),
        "nt_xent": lambda: nt_xent(a, b, a, b, 0.2),
        "swav": lambda: swapped_prediction(q, a, 0.1),
    }
    for name, loss in losses.items():
        exact = loss()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = loss()
        assert mixed.dtype == torch.float32 and torch.equal(mixed, exact), name


def test_commit_names_the_checkout_marks_changes_and_falls_back_outside_git(tmp_path, monkeypatch):
    import subprocess
    from pathlib import Path

    import simsiam.runtime as R

    def git(*args, cwd=tmp_path):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True, capture_output=True
        )

    git("init", "-q")
    (tmp_path / "runtime.py").write_text("x = 1\n")
    git("add", "runtime.py")
    git("commit", "-qm", "one")
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    monkeypatch.setattr(R, "__file__", str(tmp_path / "runtime.py"))  # git runs where the sources are
    assert R.git_sha() == sha and R.commit() == f"commit {sha[:7]}"
    (tmp_path / "runtime.py").write_text("x = 2\n")
    assert R.commit() == f"commit {sha[:7]} + uncommitted changes"
    monkeypatch.setattr(R, "__file__", str(Path("/") / "runtime.py"))  # not a git checkout
    assert R.git_sha() is None and R.commit().endswith(("(not a git checkout)", "unknown commit"))


def test_auto_precision_is_fp32_on_every_cpu(monkeypatch):
    """bf16 by default only on GPUs: on an AMX CPU (this project's Xeon) torch 2.14's oneDNN bf16
    kernels gave NaN weight gradients at random in small convolutions; asked for, it is used."""
    from simsiam.runtime import use_bf16

    monkeypatch.setattr(torch._C._cpu, "_init_amx", lambda: True, raising=False)  # as on an AMX CPU
    cpu = torch.device("cpu")
    assert not use_bf16("auto", cpu) and not use_bf16("fp32", cpu) and use_bf16("bf16", cpu)
