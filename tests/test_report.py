"""The run report on a real tiny digits run: every PNG written and sane, the page's numbers match
summary.json, and unfinished runs are reported rather than crashing."""

import json
import shutil

import pytest

from simsiam import DataError, train
from simsiam.report import write_report

from conftest import assert_picture, tiny_config

PLOTS = ["loss.png", "z_std.png", "rank.png", "knn.png", "lr.png", "retrieval.png", "embedding.png"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-epoch tiny digits run (a few seconds on 2 CPU cores) with kNN measured every epoch."""
    run_dir = tmp_path_factory.mktemp("report") / "run"
    train(tiny_config(run_dir, subset=256, knn_every=1, knn_random_init=True, device="cpu"))
    return run_dir


@pytest.fixture(scope="module")
def page(run):
    return write_report(run)


def test_every_plot_is_a_sensible_png(page):
    assert page == page.parent / "summary.md" and page.parent.name == "report"
    for name in PLOTS:
        assert_picture(page.parent / name)


def test_summary_has_the_runs_numbers_and_links_every_plot(run, page):
    s = json.loads((run / "summary.json").read_text())
    text = page.read_text()
    assert f"{100 * s['knn_top1']:.2f}%" in text
    assert f"random init {100 * s['knn_top1_random_init']:.2f}%" in text
    gain = 100 * (s["knn_top1"] - s["knn_top1_random_init"])
    assert f"({gain:+.2f} points)" in text
    assert f"{s['z_std_healthy']:.4f}" in text and f"{s['loss']:.4f}" in text
    assert "| method | simsiam |" in text and "| dataset | digits |" in text
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["rank_backbone_max"] == 64 and last["rank_z_max"] == 64  # 64-d features and z, 256 images
    assert (
        f"| effective rank | features {s['rank_backbone']:.1f} of at most 64; z {s['rank_z']:.1f} of at most 64 "
        "(epoch 2; 1 = collapsed) |"
    ) in text
    for name in PLOTS:
        assert f"]({name})" in text, name
    assert "Unfinished run" not in text


def test_run_dir_without_metrics_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no metrics.jsonl; train first"):
        write_report(tmp_path)


def test_unfinished_run_without_knn_still_gets_curves(run, tmp_path):
    # As after an epoch of a run with knn_every > 1: metrics and config only, no kNN yet,
    # no summary.json, no backbone.
    shutil.copy(run / "config.json", tmp_path / "config.json")
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for r in rows[:1]:
            r.pop("knn_top1", None)
            for key in ("rank_backbone", "rank_z", "rank_backbone_max", "rank_z_max"):  # as in an older run
                r.pop(key, None)
            f.write(json.dumps(r) + "\n")
        f.write('{"epoch": 2, "lo')  # torn line: the run is writing it right now

    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "knn.png").write_bytes(b"stale")  # from an earlier report: must go

    page = write_report(tmp_path)
    made = {p.name for p in page.parent.glob("*.png")}
    assert made == {"loss.png", "z_std.png", "lr.png"}
    for name in made:
        assert_picture(page.parent / name)
    text = page.read_text()
    assert "Unfinished run" in text and "1 of 2" in text
    assert "- kNN top-1: not measured yet" in text and "## Not in this report" in text
    assert "- Effective rank: not measured (--rank-samples 0, or an older run)" in text
    assert "retrieval and embedding map:" in text and "backbone.pt" in text
    assert "knn.png" not in text and "retrieval.png" not in text
