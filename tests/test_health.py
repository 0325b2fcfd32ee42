"""Label-free health: the effective rank (RankMe) against hand cases, its fixed sample, its place in
a run (every epoch, watched without changing anything), and `simsiam eval rank` on unlabelled images."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from simsiam.health import effective_rank, rank_sample

from conftest import assert_one_line_error, simsiam, tiny_config


def orthonormal_columns(n: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q[:, :k]


@pytest.mark.parametrize("k", [1, 2, 7, 32])
def test_k_equal_singular_values_give_k(k):
    x = 3.0 * orthonormal_columns(64, k) @ orthonormal_columns(32, k, seed=1).T  # (64, 32), k values of 3
    assert effective_rank(x) == pytest.approx(k, rel=1e-3)  # RankMe's eps: each zero adds ~1.6e-6


def test_a_rank_one_matrix_gives_one_and_the_rank_is_scale_invariant():
    ones = torch.ones(50, 20) * torch.linspace(1, 2, 20)  # every row the same point: a complete collapse
    assert effective_rank(ones) == pytest.approx(1.0, abs=1e-3)
    x = torch.randn(300, 40, generator=torch.Generator().manual_seed(0))
    r = effective_rank(x)
    assert effective_rank(1e-3 * x) == pytest.approx(r, rel=1e-9)
    assert effective_rank(1e4 * x) == pytest.approx(r, rel=1e-9)
    assert 30 < r <= 40  # near D for isotropic noise with N >> D, never above min(N, D)
    assert effective_rank(x[:10]) <= 10
    # singular values 4, 2, 1, 1: exp of the entropy of (0.5, 0.25, 0.125, 0.125) = 2^1.75
    d = torch.diag(torch.tensor([4.0, 2.0, 1.0, 1.0]))
    assert effective_rank(d) == pytest.approx(2**1.75, rel=1e-5)


def test_zeros_and_non_finite_values():
    assert effective_rank(torch.zeros(8, 4)) == 0.0
    bad = torch.randn(8, 4)
    bad[3, 1] = float("nan")
    assert math.isnan(effective_rank(bad))


def test_the_sample_is_fixed_and_draws_nothing_from_the_global_generator():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = rank_sample(1000, 64), rank_sample(1000, 64)
    assert torch.equal(before, torch.get_rng_state())
    assert torch.equal(a, b) and len(a) == 64 and len(set(a.tolist())) == 64
    assert torch.equal(a, a.sort().values) and a.max() < 1000
    assert torch.equal(rank_sample(10, 64), torch.arange(10))  # all the images when there are fewer


def test_a_run_logs_the_rank_every_epoch_and_watching_changes_nothing(tmp_path, capsys):
    from simsiam import train

    watched = train(tiny_config(tmp_path / "watched", epochs=3, rank_every=1))
    unwatched = train(tiny_config(tmp_path / "unwatched", epochs=3, rank_every=1, rank_samples=0))
    a = torch.load(tmp_path / "watched" / "backbone.pt", weights_only=True)
    b = torch.load(tmp_path / "unwatched" / "backbone.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in (tmp_path / "watched" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert 1 <= r["rank_backbone"] <= 64 and 1 <= r["rank_z"] <= 64  # 64-d features and z
    assert watched.rank_backbone == rows[-1]["rank_backbone"] and watched.rank_z == rows[-1]["rank_z"]
    summary = json.loads((tmp_path / "watched" / "summary.json").read_text())
    assert summary["rank_backbone"] == watched.rank_backbone
    unwatched_rows = (tmp_path / "unwatched" / "metrics.jsonl").read_text()
    assert "rank" not in unwatched_rows and unwatched.rank_backbone is None
    assert [json.loads(line)["loss"] for line in unwatched_rows.splitlines()] == [r["loss"] for r in rows]

    # every 2 epochs: epoch 2, and the last
    train(tiny_config(tmp_path / "every2", epochs=3, rank_every=2))
    rows = [json.loads(line) for line in (tmp_path / "every2" / "metrics.jsonl").read_text().splitlines()]
    assert ["rank_backbone" in r for r in rows] == [False, True, True]


def test_eval_rank_needs_no_labels(tmp_path, capsys):
    from simsiam import train

    train(tiny_config(tmp_path / "run", epochs=1))
    flat = tmp_path / "photos"  # no class folders: nothing to classify, still something to measure
    flat.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(flat / f"{i}.png")
    res = simsiam(capsys, "eval", "rank", tmp_path / "run", "--data-dir", flat, "--samples", "100", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    saved = json.loads((tmp_path / "run" / "eval_rank.json").read_text())
    assert saved["protocol"] == "rank" and saved["num_images"] == 32  # 100 asked, 32 in the train split (80%)
    assert saved["feature_dim"] == 64 and saved["rank_max"] == 32 and 1 <= saved["rank"] <= 32
    assert f"effective rank {saved['rank']:.1f} of at most 32" in res.stdout
    own = simsiam(capsys, "eval", "rank", tmp_path / "run", "--out", tmp_path / "own.json")  # the run's digits
    assert own.returncode == 0 and json.loads((tmp_path / "own.json").read_text())["num_images"] == 1024
    assert_one_line_error(simsiam(capsys, "eval", "rank", tmp_path / "run", "--samples", "0"), "--samples")


@pytest.mark.parametrize("shape", [(300, 40), (40, 300), (128, 128)])
def test_the_gram_matrix_path_equals_the_svd(shape):
    """effective_rank takes the singular values from the Gram matrix of the smaller side (faster);
    RankMe's definition is the SVD's."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * torch.logspace(0, -4, shape[1], dtype=torch.float64)
    s = torch.linalg.svdvals(x)
    p = s / s.sum() + 1e-7
    assert effective_rank(x) == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-7)


def test_the_health_study_reads_its_signals_from_the_metrics():
    """scripts/health_study.py's early-warning epochs and summaries, on a made-up collapsing run."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    try:
        import health_study as hs
    finally:
        sys.path.pop(0)
    healthy = 0.02
    rows = [
        {"epoch": 1, "knn_top1": 0.60, "rank_z": 200.0, "z_std": 0.020, "z_std_healthy": healthy},
        {"epoch": 2, "knn_top1": 0.55, "rank_z": 15.0, "z_std": 0.015, "z_std_healthy": healthy},
        {"epoch": 3, "rank_z": 3.0, "z_std": 0.008, "z_std_healthy": healthy},  # kNN not measured
        {"epoch": 4, "knn_top1": 0.47, "rank_z": 1.0, "z_std": 0.001, "z_std_healthy": healthy},
    ]
    assert hs.warning_epochs(rows, chance=0.46) == [4, 2, 3]  # kNN at chance, rank of z, z-std
    assert hs.warning_epochs(rows[:1], chance=0.46) == [None, None, None]
    runs = [{"knn": 0.5, "z": None}, {"knn": 0.7, "z": None}]
    assert hs.mean_sd(runs, "knn", 100) == "60.0 ± 14.1" and hs.mean_sd(runs, "z") == "-"
    assert len(hs.runs([0, 1])) == 2 * (len(hs.LR_SWEEP) + len(hs.SCENARIOS))
