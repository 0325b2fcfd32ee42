"""`simsiam compare`: every method on the same budget, one table, one kNN plot."""

import json

import pytest

from simsiam.cli import main
from simsiam.experiments.compare import compare, method_config
from simsiam.methods import METHODS

TINY = dict(
    width=0.125,
    dim=64,
    pred_dim=16,
    proj_hidden=64,
    knn_random_init=False,
    subset=256,
    batch_size=64,
    epochs=2,
    prototypes=32,
)


def test_same_budget_and_augmentation_unless_asked():
    cfgs = {m: method_config(m) for m in METHODS}
    assert len({(c.epochs, c.batch_size, c.arch, c.width, c.image_size, c.dataset) for c in cfgs.values()}) == 1
    aug = lambda c: (c.crop_scale, c.jitter, c.gray_p, c.blur_p, c.solarize_p, c.blur_p2, c.solarize_p2)  # noqa: E731
    assert len({aug(c) for c in cfgs.values()}) == 1  # SimSiam's inputs for every method
    if "byol" in METHODS:
        assert method_config("byol", own_augmentation=True).solarize_p2 == pytest.approx(0.2)
    assert method_config("simsiam", scale="paper", data_dir="/x").epochs == 100


def test_compare_end_to_end_writes_table_and_plot(tmp_path, capsys):
    methods = list(METHODS)
    res = compare(methods, tmp_path, in_process=True, log=lambda *_: None, **TINY)
    table = (tmp_path / "comparison.md").read_text()
    for m in methods:
        assert f"| {m} |" in table
    assert (tmp_path / "knn.png").stat().st_size > 10_000
    rows = {r["variant"]: r for r in res["rows"]}
    assert all(0 <= r["linear_fast"] <= 1 and r["knn_top1"] is not None for r in rows.values())
    assert "68.1 / 70.0 / 70.8 / 71.3" in table  # the paper's SimSiam row
    # the CLI reuses the finished runs (same configurations) and trains nothing again
    sets = [a for k, v in TINY.items() for a in ["--set", f"{k}={json.dumps(v)}"]]
    assert main(["compare", "simsiam", "--out", str(tmp_path), *sets]) == 0
    assert "already trained" in capsys.readouterr().out
    assert main(["compare", "mocov9", "--out", str(tmp_path)]) == 2
    assert "mocov9" in capsys.readouterr().err


def test_compare_trains_in_its_own_process_and_measures_its_memory(tmp_path):
    res = compare(["simsiam"], tmp_path, log=lambda *_: None, **{**TINY, "epochs": 1, "knn_every": 0})
    row = res["rows"][0]
    assert row["peak_memory_mb"] > 50 and row["peak_memory_of"] == "process RSS"
    assert json.loads((tmp_path / "simsiam" / "summary.json").read_text())["peak_memory_mb"] == row["peak_memory_mb"]
