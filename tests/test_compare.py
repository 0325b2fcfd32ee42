"""`simsiam compare`: every method on the same budget, one table, one kNN plot."""

import json

import pytest

from simsiam.cli import main
from simsiam.experiments.compare import compare, method_config
from simsiam.methods import METHODS

from conftest import TINY_OPTIONS, assert_picture

# the tiny run on 4 steps an epoch, kNN every epoch (the plot's points); SwAV's prototypes with SwAV
TINY = {**TINY_OPTIONS, "subset": 256, "knn_every": 1}
SWAV = {"prototypes": 32}


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
    res = compare(methods, tmp_path, in_process=True, log=lambda *_: None, **TINY, **SWAV)
    table = (tmp_path / "comparison.md").read_text()
    for m in methods:
        assert f"| {m} |" in table
    assert_picture(tmp_path / "knn.png")  # a plot, not a blank canvas
    rows = {r["variant"]: r for r in res["rows"]}
    assert sorted(rows) == sorted(methods)
    for m, r in rows.items():  # the table gives each run's own numbers
        line = next(row for row in table.splitlines() if row.startswith(f"| {m} |"))
        cells = [c.strip() for c in line.split("|")[1:-1]]
        assert cells[1] == f"{100 * r['knn_top1']:.2f}" and cells[3] == f"{100 * r['linear_fast']:.2f}", line
    assert "68.1 / 70.0 / 70.8 / 71.3" in table  # the paper's SimSiam row
    # the CLI reuses the finished runs (same configurations) and trains nothing again
    sets = [a for k, v in {**TINY, **SWAV}.items() for a in ["--set", f"{k}={json.dumps(v)}"]]
    assert main(["compare", "simsiam", "swav", "--out", str(tmp_path), *sets]) == 0
    out = capsys.readouterr().out
    assert "simsiam (seed 0): same configuration and code already trained" in out
    assert "swav (seed 0): same configuration and code already trained" in out
    assert main(["compare", "mocov9", "--out", str(tmp_path)]) == 2
    assert "mocov9" in capsys.readouterr().err


def test_compare_trains_in_its_own_process_and_measures_its_memory(tmp_path):
    res = compare(["simsiam"], tmp_path, log=lambda *_: None, **{**TINY, "epochs": 1, "knn_every": 0})
    row = res["rows"][0]
    assert row["peak_memory_mb"] > 50 and row["peak_memory_of"] == "process RSS"
    assert json.loads((tmp_path / "simsiam" / "summary.json").read_text())["peak_memory_mb"] == row["peak_memory_mb"]


def test_several_seeds_give_mean_std_and_the_gap_to_simsiam_in_sd():
    from simsiam.experiments.compare import markdown

    def row(method, seed, knn):
        return dict(
            variant=method,
            seed=seed,
            knn_top1=knn,
            linear_fast=0.9,
            knn_top1_random_init=0.46 + 0.01 * seed,  # each seed's own initialisation
            z_std=1.0,
            z_std_healthy=1.0,
            images_per_second=100.0 + seed,
            peak_memory_mb=1000.0 + seed,
            peak_memory_of="process RSS",
            dataset="digits",
            arch="resnet18",
            width=0.25,
            batch_size=128,
            epochs=10,
            device="cpu",
        )

    rows = [row("simsiam", s, k) for s, k in enumerate([0.70, 0.72, 0.74])]
    rows += [row("simclr", s, k) for s, k in enumerate([0.90, 0.91, 0.92])]
    md = markdown(dict(scale="cpu", date="d", commit="commit abc", own_augmentation=False, rows=rows))
    # SimSiam 72 ± 2, SimCLR 91 ± 1: +19 points over a pooled sd of sqrt((4 + 1) / 2)
    assert "| simsiam | 72.00 ± 2.00 | - | 90.00 ± 0.00 | 47.00 ± 1.00 |" in md
    assert "| simclr | 91.00 ± 1.00 | +19.0 (+12.0 sd) |" in md
    assert "3 seed(s)" in md and "commit abc" in md and "| 1002 (process RSS) |" in md


def test_compare_seeds_train_each_method_per_seed(tmp_path, monkeypatch):
    import simsiam.experiments.compare as C

    seen = []
    monkeypatch.setattr(C, "run_variants", lambda jobs, *a, **k: seen.extend(jobs) or [])
    monkeypatch.setattr(C, "markdown", lambda r: "")
    monkeypatch.setattr(C, "_plot", lambda *a: None)
    compare(["simsiam", "simclr"], tmp_path, seeds=2, log=lambda *_: None)
    assert [(v.label, c.seed, d.name) for v, c, d in seen] == [
        ("simsiam", 0, "simsiam"),
        ("simclr", 0, "simclr"),
        ("simsiam", 1, "simsiam-seed1"),
        ("simclr", 1, "simclr-seed1"),
    ]
