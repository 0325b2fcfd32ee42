import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from simsiam.config import PRESETS, Config, ConfigError
from simsiam.configure import from_dict, from_preset
from simsiam.methods.simsiam import SimSiam, SimSiamOptions
from simsiam.optim import build_optimizer, cosine_lr, lr_at, set_lr


def test_paper_defaults():
    c = Config()
    assert (c.lr, c.batch_size, c.momentum, c.weight_decay, c.epochs) == (0.05, 512, 0.9, 1e-4, 100)
    o = SimSiamOptions()  # SimSiam's own options: the paper's too
    assert c.fix_pred_lr and o.stop_gradient and o.predictor and not o.concat_views and not o.fixed_predictor
    assert (o.head_bn, o.similarity, o.symmetry, o.alternation) == ("default", "cosine", "sym", "off")
    assert (c.dim, c.pred_dim, c.proj_layers, c.proj_hidden) == (2048, 512, 3, 2048)
    assert c.crop_scale == (0.2, 1.0) and c.jitter == (0.4, 0.4, 0.4, 0.1) and c.jitter_p == 0.8
    assert (c.gray_p, c.blur_p, c.blur_sigma, c.hflip) == (0.2, 0.5, (0.1, 2.0), 0.5)
    assert (c.knn_k, c.knn_t) == (200, 0.1)
    assert c.scaled_lr == pytest.approx(0.05 * 512 / 256)


def test_cifar_preset_is_the_paper_recipe():
    c = from_preset("cifar10", data_dir="x")
    assert (c.arch, c.cifar_stem, c.proj_layers, c.lr, c.weight_decay, c.batch_size, c.epochs, c.blur_p) == (
        "resnet18",
        True,
        2,
        0.03,
        5e-4,
        512,
        800,
        0.0,
    )
    assert c.image_size == 32 and c.width == 1.0


def test_imagenet_preset_stores_256_for_the_papers_centre_crop_eval():
    c = from_preset("imagenet", data_dir="x")
    assert (c.image_size, c.load_size, c.stored_size) == (224, 256, 256)
    assert from_preset("cifar10").stored_size == 32  # load size 0: stored at the crop size


def test_every_preset_is_valid():
    for name, values in PRESETS.items():
        from_preset(name, data_dir="somewhere" if values["dataset"] == "folder" else None)
    with pytest.raises(ConfigError, match="--dataset folder"):
        from_preset("digits", data_dir="photos")  # a data dir that would be silently ignored


@pytest.mark.parametrize(
    "bad",
    [
        {"batch_size": 0},
        {"lr": -1.0},
        {"gray_p": 1.5},
        {"schedule": "linear"},
        {"proj_layers": 4},
        {"crop_scale": (0.5, 0.2)},
        {"load_size": 200},  # stored below the 224 px crop
        {"batch_size": 1},  # BatchNorm needs two images
        {"seed": 2**64},  # beyond torch.manual_seed's range
        {"crop_ratio": (1.3, 0.7)},
        {"blur_sigma": (2.0, 0.1)},
        {"jitter": (0.4, 0.4, 0.4, 0.6)},  # hue above 0.5
        {"jitter": (-0.1, 0.4, 0.4, 0.1)},
        {"device": "foo"},
        {"momentum": -1.0},
        {"weight_decay": -1.0},
        {"std": (0.2, 0.0, 0.2)},
    ],
)
def test_bad_values_fail(bad):
    with pytest.raises(ConfigError):
        Config(**bad)


def test_unknown_key_and_wrong_type_fail_loudly():
    with pytest.raises(ConfigError, match="temprature"):
        from_dict({"temprature": 0.5})  # a typo never passes silently
    with pytest.raises(ConfigError, match="batch_size"):
        from_dict({"batch_size": "512"})
    with pytest.raises(ConfigError, match="stop_gradient"):
        from_dict({"stop_gradient": 1})  # SimSiam's own option, typed too
    cfg = from_dict({"method": "swav", "prototypes": 7})
    assert from_dict(cfg.to_dict()) == cfg and cfg.options is not None and cfg.options.prototypes == 7


def _optimizer(fix_pred_lr):
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8))
    model = SimSiam(backbone, 8, dim=8, pred_dim=4, proj_layers=2, proj_hidden=8)
    return build_optimizer(model, Config(fix_pred_lr=fix_pred_lr, batch_size=128, lr=0.1))


def test_lr_schedule_cosine_encoder_fixed_predictor():
    opt = _optimizer(fix_pred_lr=True)
    base = 0.1 * 128 / 256
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["encoder"]["weight_decay"] == groups["predictor"]["weight_decay"] == 1e-4
    for progress in [0.0, 0.25, 0.5, 0.99]:
        set_lr(opt, cosine_lr(base, progress), base)
        assert groups["encoder"]["lr"] == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * progress)))
        assert groups["predictor"]["lr"] == base
    assert cosine_lr(1.0, 1.0) == pytest.approx(0.0, abs=1e-12) and cosine_lr(1.0, 0.5) == pytest.approx(0.5)


def test_lr_schedule_decays_predictor_without_fix_pred_lr():
    opt = _optimizer(fix_pred_lr=False)
    set_lr(opt, cosine_lr(0.05, 0.5), 0.05)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.025, 0.025])


def test_lr_at_warmup_then_cosine_over_the_remaining_epochs():
    cfg = Config(epochs=12, warmup_epochs=2, batch_size=256, lr=0.4)  # scaled lr 0.4
    lrs = [lr_at(cfg, e, s, 5) for e in range(12) for s in range(5)]
    assert lrs[0] == pytest.approx((0.04, 0.04)) and lrs[9] == pytest.approx((0.4, 0.4))  # linear, per step
    assert lrs[10] == pytest.approx((0.4, 0.4))  # epoch 2: cosine starts at its top
    assert lrs[11] == lrs[10]  # per-epoch cosine (official code) is flat within an epoch
    assert lrs[35][0] == pytest.approx(cosine_lr(0.4, 5 / 10)) and lrs[35][1] == 0.4  # fixed groups stay at base
    step = lr_at(cfg.replace(schedule="step"), 7, 0, 5)[0]
    assert step == pytest.approx(cosine_lr(0.4, 5 / 10))
    assert lr_at(cfg.replace(warmup_epochs=0), 0, 3, 5) == (0.4, 0.4)  # no warm-up by default


@pytest.mark.parametrize("method", ["simsiam", "mocov2"])
def test_a_config_json_of_the_flat_config_still_loads_and_resumes(method, tmp_path):
    """config.json as simsiam wrote it before each method had its own options (commit cffa3b7:
    every method's options in one flat object, MoCo v2's momentum in ema_tau, its queue in
    queue_size): --config and --resume still read it, the method keeps its own values and the
    other methods' are dropped (they were never used)."""
    from simsiam.cli import main
    from simsiam.configure import load_json

    old = Path(__file__).parent / "data" / f"config-cffa3b7-{method}.json"
    saved = json.loads(old.read_text())
    assert len(saved) == 82 and "prototypes" in saved and "ema_tau" in saved  # every method's options
    cfg = load_json(old)
    assert cfg.method == method and cfg.options is not None
    mine = {f.name for f in dataclasses.fields(cfg.options)}
    new = {
        "rank_every": 1,
        "rank_samples": 1024,
        "on_collapse": "warn",
        "recover_lr_factor": 0.5,
        "max_recoveries": 4,
    }  # options added since, at their defaults (unsaved: the preset's not)
    assert cfg.to_dict() == {
        **{k: v if not isinstance(v, list) else tuple(v) for k, v in saved.items() if k in mine or k in Config.names()},
        **new,
    }
    assert main(["train", "--config", str(old), "--run-dir", str(tmp_path / "run")]) == 0
    (tmp_path / "run" / "config.json").write_text(
        old.read_text().replace('"run_dir": null', f'"run_dir": "{tmp_path / "run"}"')
    )
    assert main(["train", "--resume", "--run-dir", str(tmp_path / "run"), "--epochs", "2"]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["epochs"] == 2


def test_compare_gives_a_methods_own_option_to_the_methods_that_have_it():
    """`simsiam compare simsiam simclr --set temperature=0.5`: SimCLR's temperature, nothing for
    SimSiam; an option none of the compared methods has is one line before anything trains."""
    from simsiam.experiments.compare import compare, method_config

    assert method_config("simclr", temperature=0.5).to_dict()["temperature"] == 0.5
    assert "temperature" not in method_config("simsiam", temperature=0.5).to_dict()
    with pytest.raises(ConfigError, match="--set prototypes is an option of swav, none of the methods compared"):
        compare(["simsiam", "simclr"], prototypes=50)
