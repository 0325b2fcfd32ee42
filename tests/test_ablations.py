"""The paper's ablation options (Sec. 4) and Sec. 5.2 experiments change exactly what they should."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_method import tiny_simsiam

from simsiam import from_preset, train
from simsiam.cli import main
from simsiam.configure import from_dict
from simsiam.data import Augment, ImageSet
from simsiam.errors import ConfigError
from simsiam.eta import TargetMemory, block_length
from simsiam.experiments.reproduce import GROUPS, configs, run_group
from simsiam.methods import StepOutput, Views, build_model
from simsiam.methods.heads import prediction_mlp, projection_mlp
from simsiam.methods.simsiam import cross_entropy_similarity, negative_cosine
from simsiam.records import Summary
from simsiam.views import ViewPlan

TINY = dict(
    width=0.125,
    dim=64,
    pred_dim=16,
    proj_hidden=64,
    knn_every=0,
    knn_random_init=False,
    report=False,
    subset=256,
    batch_size=64,
    epochs=1,
)


def _kinds(seq: nn.Sequential) -> list[str]:
    return [type(m).__name__ for m in seq]


def test_head_bn_variants_table3():
    assert _kinds(projection_mlp(8, 16, 4, 3, "none")) == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert all(m.bias is not None for m in projection_mlp(8, 16, 4, 3, "none") if isinstance(m, nn.Linear))
    hidden = projection_mlp(8, 16, 4, 2, "hidden")
    assert _kinds(hidden) == ["Linear", "BatchNorm1d", "ReLU", "Linear"] and hidden[-1].bias is not None
    default = projection_mlp(8, 16, 4, 2, "default")
    assert _kinds(default)[-1] == "BatchNorm1d" and not default[-1].affine and default[-2].bias is None
    assert _kinds(prediction_mlp(4, 2, "none")) == ["Linear", "ReLU", "Linear"]
    assert _kinds(prediction_mlp(4, 2, "default")) == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert _kinds(prediction_mlp(4, 2, "all")) == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]


def test_cross_entropy_similarity_matches_hand_computation():
    p = torch.tensor([[0.0, math.log(3.0)]])  # softmax(p) = (1/4, 3/4)
    z = torch.tensor([[0.0, 0.0]])  # softmax(z) = (1/2, 1/2)
    expected = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert cross_entropy_similarity(p, z).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("similarity", ["cosine", "cross-entropy"])
def test_asymmetric_loss_is_the_first_term_only(similarity):
    model = tiny_simsiam(symmetry="asym", similarity=similarity)
    out = model(Views(torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4)))
    d = negative_cosine if similarity == "cosine" else cross_entropy_similarity
    torch.testing.assert_close(out.loss, d(out.p1, out.z2))
    assert torch.autograd.grad(out.loss, out.p2, allow_unused=True)[0] is None  # p2 unused


def test_targets_replace_the_other_views_z_and_carry_no_gradient():
    model = tiny_simsiam()
    t1, t2 = torch.randn(6, 8, requires_grad=True), torch.randn(6, 8, requires_grad=True)
    out = model(Views(torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4)), (t1, t2))
    torch.testing.assert_close(out.loss, negative_cosine(out.p1, t2) / 2 + negative_cosine(out.p2, t1) / 2)
    out.loss.backward()
    assert t1.grad is None and t2.grad is None


def test_target_memory_starts_filled_and_updates_only_the_batch_rows_with_m():
    images = ImageSet(torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8), torch.zeros(5, dtype=torch.long), ["x"])
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    plan = ViewPlan(Augment(8, blur_p=0.0), torch.Generator().manual_seed(0))
    mem = TargetMemory(encoder, images, plan, batch_size=2, dim=3, momentum=0.8, device="cpu")
    mem.start()  # one augmented pass: every row is an l2-normalised F(T'(x))
    torch.testing.assert_close(mem.eta.norm(dim=1), torch.ones(5))
    before = mem.eta.clone()
    order, index = torch.tensor([1, 3, 0, 2, 4]), torch.tensor([1, 3])  # step 0 of batch 2
    t1, t2 = mem.targets(order, 0)
    assert torch.equal(t1, t2) and torch.equal(t1, before[index])
    z1, z2 = torch.randn(2, 3), torch.randn(2, 3)
    mem.update(order, 0, StepOutput(torch.zeros(()), torch.zeros(()), z1, z2))
    sample = F.normalize(F.normalize(z1, dim=1) + F.normalize(z2, dim=1), dim=1)
    expected = F.normalize(0.8 * before[index] + 0.2 * sample, dim=1)
    torch.testing.assert_close(mem.eta[index], expected)
    untouched = torch.tensor([0, 2, 4])
    assert torch.equal(mem.eta[untouched], before[untouched])


def test_block_length():
    assert block_length("off", 11) == 0 and block_length("10", 11) == 10
    assert block_length("100", 11) == 11 and block_length("epoch", 11) == 11


@pytest.mark.parametrize(
    "bad",
    [
        {"alternation": "0"},
        {"alternation": "often"},
        {"head_bn": "some"},
        {"similarity": "dot"},
        {"symmetry": "asym3x"},
        {"memory_momentum": 1.0},
        {"warmup_epochs": 100, "epochs": 100},
        {"alternation": "10", "target_memory": True},
        {"alternation": "10", "symmetry": "asym2x"},
    ],
)
def test_bad_ablation_options_fail(bad):
    with pytest.raises(ConfigError):
        from_dict(bad)


def _params(run_dir, prefix):
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]
    return {k: v for k, v in state.items() if k.startswith(prefix) and "running" not in k and "num_batches" not in k}


def test_one_step_alternation_is_simsiam_and_ten_steps_is_not(tmp_path):
    """k = 1: eta pre-computed on the replayed views equals SimSiam's own targets, so the weights
    match SimSiam's (BN running statistics aside, the extra target pass updates them)."""
    runs = {}
    for k in ["off", "1", "3"]:
        run_dir = tmp_path / k
        train(from_preset("digits", run_dir=str(run_dir), alternation=k, **TINY))
        runs[k] = _params(run_dir, "encoder.")
    for name, value in runs["off"].items():
        torch.testing.assert_close(runs["1"][name], value, rtol=1e-4, atol=1e-5)
    assert any(not torch.allclose(runs["3"][n], v, atol=1e-4) for n, v in runs["off"].items())


def test_fixed_predictor_never_moves_and_the_memory_holds_unit_targets(tmp_path):
    cfg = from_preset("digits", run_dir=str(tmp_path / "fixed"), fixed_predictor=True, **TINY)
    train(cfg)
    torch.manual_seed(cfg.seed)  # the loop builds the model right after seeding; rebuild it the same way
    fresh = {f"predictor.{k}": v for k, v in build_model(cfg).predictor.state_dict().items()}
    trained = _params(tmp_path / "fixed", "predictor.")
    assert trained and all(torch.equal(trained[k], fresh[k]) for k in trained)
    assert not torch.equal(
        _params(tmp_path / "fixed", "encoder.")["encoder.1.0.weight"],
        build_model(cfg).state_dict()["encoder.1.0.weight"],
    )

    mem = from_preset(
        "digits", run_dir=str(tmp_path / "mem"), predictor=False, target_memory=True, **{**TINY, "epochs": 2}
    )
    train(mem)  # its resume: test_baselines.py::test_method_state_travels_through_a_mid_epoch_resume
    state = torch.load(tmp_path / "mem" / "checkpoint.pt", weights_only=False)
    assert state["memory"]["eta"].shape == (256, 64)
    assert torch.allclose(state["memory"]["eta"].norm(dim=1), torch.ones(256), atol=1e-5)


def test_asym2x_trains_on_two_pairs(tmp_path):
    s = train(from_preset("digits", run_dir=str(tmp_path / "a2"), symmetry="asym2x", **TINY))
    assert math.isfinite(s["loss"]) and s["knn_top1"] is not None


def test_every_group_builds_valid_configs_at_both_scales():
    for group in GROUPS:
        for scale in ["cpu", "paper"]:
            pairs = configs(group, scale, data_dir="/data/imagenet") if scale == "paper" else configs(group, scale)
            assert len(pairs) >= 2 and len({v.label for v, _ in pairs}) == len(pairs)
    k = {v.label: c for v, c in configs("k-step", "paper", data_dir="/x")}
    assert set(k) == {"1-step", "10-step", "100-step", "1-epoch"} and k["100-step"].to_dict()["alternation"] == "100"
    bs = {c.batch_size: c for _, c in configs("batch-size", "paper", data_dir="/x")}
    assert bs[4096].warmup_epochs == 10 and bs[512].warmup_epochs == 0 and bs[512].scaled_lr == pytest.approx(0.1)
    dims = [(c.dim, c.pred_dim) for _, c in configs("dim")]
    assert dims == [(256, 64), (512, 128), (1024, 256), (2048, 512)]


def test_reproduce_runs_end_to_end_and_reuses_finished_variants(tmp_path, capsys):
    tiny = {k: v for k, v in TINY.items() if k not in ("report", "knn_every")}
    res = run_group("stop-gradient", tmp_path, **tiny)
    root = tmp_path / "stop-gradient"
    assert {"table.md", "results.json", "z_std.png"} <= {p.name for p in root.iterdir()}
    table = (root / "table.md").read_text()
    assert "| with stop-gradient |" in table and "| 67.7 |" in table and "paper's claim" in table
    assert [c["claim"] for c in res["checks"]][:2] == [
        "with stop-gradient: no collapse",
        "without stop-gradient: collapse",
    ]
    mtime = (root / "with-stop-gradient" / "summary.json").stat().st_mtime
    # through the CLI: the predictor group reuses the default SimSiam run instead of training it again
    sets = [a for k, v in tiny.items() for a in ["--set", f"{k}={json.dumps(v)}"]]
    assert main(["reproduce", "predictor", "--out", str(tmp_path), *sets]) == 0
    pred = json.loads((tmp_path / "predictor" / "results.json").read_text())
    assert pred["rows"][0]["run_dir"] == str(root / "with-stop-gradient")
    assert (root / "with-stop-gradient" / "summary.json").stat().st_mtime == mtime
    assert "| fixed random init |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["reproduce", "nonsense"])
    assert main(["reproduce", "similarity", "--scale", "paper"]) == 2
    assert "--data-dir" in capsys.readouterr().err
    assert main(["reproduce", "similarity", "--set", "widht=2"]) == 2
    assert "widht" in capsys.readouterr().err


def test_finished_runs_are_reused_only_by_the_same_code_unless_fresh(tmp_path, monkeypatch):
    import simsiam.experiments.runner as rep

    trained = []

    def runner(cfg):  # a "training" whose summary counts the trainings in train_seconds
        trained.append(cfg.run_dir)
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        summary = Summary(
            *("simsiam", "digits", None, "digits", "resnet18", 0.25, 1, 32, 64, 359),
            *(float(len(trained)), 1.0, 0.5, None, -0.5, 0.02, 0.02, False, "cpu", "fp32", str(cfg.run_dir)),
        )
        (Path(cfg.run_dir) / "summary.json").write_text(json.dumps(summary.to_json()))
        return summary

    cfg = from_preset("digits", **TINY)
    jobs = [(rep.Variant("default", {}, None), cfg, tmp_path / "a")]
    index = tmp_path / "index.json"
    n = lambda **kw: rep.run_variants(jobs, index, lambda *_: None, "g", runner=runner, **kw)[0]["train_seconds"]  # noqa: E731
    run = lambda **kw: int(n(**kw))  # noqa: E731
    assert run() == 1 and run() == 1  # same configuration, same code: reused
    assert run(fresh=True) == 2
    fp = rep.code_fingerprint()
    assert fp == rep.code_fingerprint() and len(fp) == 16
    hashed = {name for _, name in rep.source_files()}  # the whole package, not only experiments/
    assert {"engine.py", "methods/simsiam.py", "data/augment.py", "experiments/runner.py"} <= hashed
    assert rep.NOT_TRAINING <= hashed  # listed, and left out of the fingerprint: tables and checks only
    (tmp_path / "edited.py").write_text("# a changed table\n")
    files = rep.source_files()
    with monkeypatch.context() as m:
        m.setattr(
            rep, "source_files", lambda: [(tmp_path / "edited.py" if n in rep.NOT_TRAINING else f, n) for f, n in files]
        )
        assert rep.code_fingerprint() == fp
        m.setattr(
            rep, "source_files", lambda: [(tmp_path / "edited.py" if n == "engine.py" else f, n) for f, n in files]
        )
        assert rep.code_fingerprint() != fp
    monkeypatch.setattr(rep, "code_fingerprint", lambda: "other-code")
    assert run() == 3 and run() == 3  # changed sources retrain once, then reuse
    index.write_text(json.dumps({rep.config_key(cfg): str(tmp_path / "a")}))  # an index from before fingerprints
    assert run() == 4
    assert trained == [str(tmp_path / "a")] * 4


@pytest.mark.parametrize("experiment", [dict(alternation="10"), dict(target_memory=True, predictor=False)])
def test_sec52_targets_need_the_images_in_memory(experiment, tmp_path):
    from conftest import make_folder

    data = make_folder(tmp_path / "images", n=40)
    cfg = from_preset(
        "folder",
        data_dir=str(data),
        placement="stream",
        run_dir=str(tmp_path / "run"),
        **{**TINY, "image_size": 16, "subset": None, "batch_size": 16, **experiment},
    )
    with pytest.raises(ConfigError, match="use --placement memory"):
        train(cfg)


def _hand_made_rows(knn: dict[str, list[float]], z: dict[str, list[float]], keys: dict[str, str]) -> list[dict]:
    """Rows as run_variants returns them, one per seed, for a check on numbers chosen by hand."""
    return [
        dict(
            variant=label,
            key=keys[label],
            seed=seed,
            paper=None,
            run_dir=f"/nowhere/{label}-{seed}",
            knn_top1=k / 100,
            knn_top1_random_init=0.46 + 0.01 * seed,  # each seed's own initialisation
            linear_fast=None,
            z_std=z[label][seed] / 32,
            z_std_healthy=1 / 32,
            loss=-0.5,
            collapsed=z[label][seed] < 0.5,
            train_seconds=1.0,
            dataset="digits",
            arch="resnet18",
            width=0.25,
            batch_size=128,
            epochs=10,
        )
        for label, ks in knn.items()
        for seed, k in enumerate(ks)
    ]


@pytest.mark.parametrize(
    "knn,z,failed",
    [
        # holds: collapse 15 sd under 0.5, kNN 20 points = 20 sd apart
        ({"with": [70, 71, 72], "without": [50, 51, 52]}, {"with": [1.0, 1.0, 1.0], "without": [0.2, 0.2, 0.2]}, []),
        # z-std under 0.5 in two seeds of three: mean 0.45 is 0.3 sd under, not 3
        (
            {"with": [70, 71, 72], "without": [50, 51, 52]},
            {"with": [1.0, 1.0, 1.0], "without": [0.45, 0.6, 0.3]},
            ["without stop-gradient: collapse"],
        ),
        # every seed below, but 8 points are 1.1 pooled sd when the default's seeds spread by 10
        (
            {"with": [70, 60, 80], "without": [62, 64, 60]},
            {"with": [1.0, 1.0, 1.0], "without": [0.2, 0.2, 0.2]},
            ["without stop-gradient: kNN clearly below"],
        ),
    ],
)
def test_check_fails_exactly_when_a_claim_does_not_hold_by_3_sd(knn, z, failed, tmp_path, monkeypatch, capsys):
    import simsiam.experiments.reproduce as R

    names = {"with": "with stop-gradient", "without": "without stop-gradient"}
    keys = {"with stop-gradient": "default", "without stop-gradient": "no-stop-gradient"}  # what checks use
    rows = _hand_made_rows({names[k]: v for k, v in knn.items()}, {names[k]: v for k, v in z.items()}, keys)
    monkeypatch.setattr(R, "run_variants", lambda jobs, *a, **k: rows)
    monkeypatch.setattr(R, "linear_fast", lambda *a: None)
    code = main(["reproduce", "stop-gradient", "--seeds", "3", "--check", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == (2 if failed else 0)
    for claim in ["with stop-gradient: no collapse", *names.values()][:1] + failed:
        assert claim in out  # every claim is in the printed table
    if failed:
        assert err.count("\n") == 1 and all(c in err for c in failed) and "did not hold by 3 sd" in err
    else:
        assert "claims held here by 3 sd: 3 of 3" in out and err == ""
    table_md = (tmp_path / "stop-gradient" / "table.md").read_text()
    assert "commit" in table_md  # the table names its source
    assert "| 47.00 ± 1.00 |" in table_md  # random-init kNN over the seeds, not seed 0's
    assert main(["reproduce", "stop-gradient", "--check", "--out", str(tmp_path)]) == 2
    assert "--seeds 3" in capsys.readouterr().err
