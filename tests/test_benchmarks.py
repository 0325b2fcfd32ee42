"""The benchmark scripts stay runnable: a tiny-budget run of each prints its table, whose ratios are
the ratios of its figures, and writes its section of RESULTS.md (here a copy in tmp_path).

augment.py and throughput.py run in this process (runpy, as `python benchmarks/X.py` would);
vs_lightly.py starts a process per timed window by design, so it runs as a command. No test
reaches the network: vs_lightly.py runs with a lightly stand-in (tests/lightly_standin) unless
SIMSIAM_TEST_LIGHTLY=1, which installs lightly from PyPI into benchmarks/.venv-lightly the first
time and compares with the real one:

    SIMSIAM_TEST_LIGHTLY=1 pytest tests/test_benchmarks.py -k lightly
"""

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_folder

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


@pytest.fixture
def results(tmp_path, monkeypatch):
    """benchmarks/ importable as the scripts see it, their RESULTS.md moved to tmp_path."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _common

    monkeypatch.setattr(_common, "RESULTS", tmp_path / "RESULTS.md")
    return tmp_path / "RESULTS.md"


def run_script(name: str, args: list[str], monkeypatch, capsys) -> str:
    """`python benchmarks/NAME ARGS` in this process; its stdout."""
    monkeypatch.setattr(sys, "argv", [name, *args])
    capsys.readouterr()
    runpy.run_path(str(BENCHMARKS / name), run_name="__main__")
    return capsys.readouterr().out


def number(cell: str) -> float:
    return float(cell.strip().rstrip("x").replace(",", ""))


def assert_ratio(ratio: float, a: float, b: float, decimals_a: int, decimals_b: int, decimals_ratio: int = 2):
    """`ratio` (printed to `decimals_ratio`) is a / b, as far as the printed roundings allow."""
    ha, hb = 0.5 * 10.0**-decimals_a, 0.5 * 10.0**-decimals_b
    lo, hi = (a - ha) / (b + hb), (a + ha) / (b - hb)
    slack = 0.5 * 10.0**-decimals_ratio + 1e-9
    assert lo - slack <= ratio <= hi + slack, (ratio, a, b)


def section(results: Path, script: str) -> str:
    text = results.read_text()
    begin, end = f"<!-- benchmarks/{script}: begin -->", f"<!-- benchmarks/{script}: end -->"
    assert text.count(begin) == 1 and text.count(end) == 1, text
    return text[text.index(begin) + len(begin) : text.index(end)]


def test_augment_benchmark_prints_the_ratio_of_its_figures_and_writes_its_section(results, monkeypatch, capsys):
    args = ["--seconds", "0.2", "--rounds", "1", "--sizes", "32", "--note", "a test"]
    out = run_script("augment.py", args, monkeypatch, capsys)
    row = next(line for line in out.splitlines() if line.startswith("| 32 px -> 32 px |"))
    ours, tv, ratio = (number(c) for c in row.split("|")[2:5])
    assert_ratio(ratio, ours, tv, 0, 0)  # one round: the median of the per-round ratios is ours / tv
    share = re.search(r"augmentation (\d+) ms, model update (\d+) ms -> augmentation is ([\d.]+)% of the step", out)
    aug, model, pct = (float(x) for x in share.groups())
    assert_ratio(pct / 100, aug, aug + model, 0, 0, 3)
    written = section(results, "augment.py")
    assert row in written and share.group(0) in written and "**a test**" in written and "Machine: " in written


def test_throughput_benchmark_prints_the_efficiency_of_its_figures_and_writes_its_section(results, monkeypatch, capsys):
    model = ["width=0.125", "dim=64", "proj_hidden=64", "pred_dim=16"]
    args = ["--seconds", "0.3", "--rounds", "1", "--batch-size", "32", *(a for m in model for a in ("--set", m))]
    results.write_text(
        "# Benchmark results\n\n<!-- benchmarks/throughput.py: begin -->\nold\n<!-- benchmarks/throughput.py: end -->\n"
    )
    out = run_script("throughput.py", args, monkeypatch, capsys)
    rates = {
        line.split(":")[0].strip("| "): number(line.split("|")[2])
        for line in out.splitlines()
        if line.startswith(("| ours:", "| bare:"))
    }
    efficiency = float(re.search(r"Pipeline efficiency ours / bare: \*\*([\d.]+)\*\*", out).group(1))
    assert_ratio(efficiency, rates["ours"], rates["bare"], 1, 1)
    written = section(results, "throughput.py")  # the old section replaced, not a second one
    assert "old" not in written and f"**{efficiency:.2f}**" in written and "batch 32" in written


def test_rank_benchmark_measures_the_share_and_the_sample_sizes(results, monkeypatch, capsys):
    args = ["--skip-cifar", "--digits-epochs", "5", "--draws", "2", "--tiny"]
    out = run_script("rank.py", args, monkeypatch, capsys)
    row = next(line for line in out.splitlines() if line.startswith("| digits"))
    cells = row.split("|")[2:-1]
    assert cells[0].strip() == "5 (1)"  # every 5th epoch: the 5th
    epoch, one, share = number(cells[1]), number(cells[2]), number(cells[4].strip(" *%"))
    assert_ratio(number(cells[3].rstrip(" %")) / 100, one, epoch, 2, 1, 3)
    assert_ratio(share / 100, one, 5 * epoch, 2, 0, 3)  # one measurement in 5 epochs (their rounding: 1 decimal)
    sizes = [int(line.split("|")[1]) for line in out.splitlines() if re.match(r"\| \d+ \|", line)]
    assert sizes == [128, 256, 512, 1024]  # digits' train split holds 1438 images
    written = section(results, "rank.py")
    assert row in written and "Measured at commit" in written


def test_vs_lightly_benchmark_runs_both_sides(tmp_path):
    """The lightly comparison end to end on a tiny folder (2 classes, 24 + 6 images each), seconds
    instead of minutes: throughput rounds, the budget race, both kNNs, the table."""
    real = os.environ.get("SIMSIAM_TEST_LIGHTLY") == "1"
    data = tmp_path / "data"
    make_folder(data / "train", n=24)
    make_folder(data / "test", n=6)
    args = ["--data", str(data), "--batch", "16", "--rounds", "1", "--seconds", "0.5", "--minutes", "0.01"]
    args += ["--lightly-workers", "0", "--no-write"]
    if not real:
        args += ["--lightly-from", str(Path(__file__).with_name("lightly_standin"))]
    res = subprocess.run(
        [sys.executable, str(BENCHMARKS / "vs_lightly.py"), *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert ("lightly 1.6.0 with 0 DataLoader workers" if real else "lightly_standin with 0 DataLoader") in out
    cells = {line.split("|")[1].strip(): line.split("|")[2:5] for line in out.splitlines() if line.startswith("| ")}
    ours, lightly, ratio = (number(c) for c in cells["images/s (median of 1 rounds of 0.5 s)"])
    assert_ratio(ratio, ours, lightly, 1, 1)
    epochs = int(re.search(r"race: simsiam trains (\d+) epochs", out).group(1))
    steps = cells["budget race: steps (epochs)"][0].strip()
    assert steps == f"{epochs * (48 // 16)} ({epochs})"  # whole epochs of 3 steps
    knn = cells["budget race: kNN top-1 on the 12 test images"]
    a, b, gap = (float(c.strip().rstrip("%").replace(" points", "")) for c in knn)
    assert abs(gap - (a - b)) <= 0.011 and 0 <= a <= 100 and 0 <= b <= 100
    assert re.search(rf"race: simsiam \d+ s, kNN {a:.2f}%", out) and re.search(
        rf"race: lightly \d+ s, kNN {b:.2f}%", out
    )


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
    from simsiam import train

    from conftest import tiny_config

    run = tmp_path_factory.mktemp("bench") / "run"
    train(tiny_config(run))
    return run


def test_search_benchmark_compares_embedding_with_the_bare_forward_and_measures_recall(
    results, monkeypatch, capsys, tmp_path
):
    make_folder(tmp_path / "imgs", n=40)
    args = [
        "--sizes",
        "3000",
        "--images",
        "64",
        "--batch-size",
        "32",
        "--workers",
        "0",
        "--data",
        str(tmp_path / "imgs"),
    ]
    out = run_script("search.py", args, monkeypatch, capsys)
    row = next(line for line in out.splitlines() if re.match(r"\| 0 \|", line))
    embed, bare, ratio = (number(c.strip(" *")) for c in row.split("|")[2:5])
    assert_ratio(ratio, embed, bare, 0, 0)
    lines = dict.fromkeys(line for line in out.splitlines() if line.startswith("| 3,000 |"))  # printed twice
    rows = [line.split("|")[1:-1] for line in lines]
    assert [r[1].split(" (")[0].strip() for r in rows] == ["exact", "HNSW"]
    exact, hnsw = rows
    assert number(exact[6]) == 1.0 and 0.5 <= number(hnsw[6]) <= 1.0  # recall@10 against exact
    assert number(hnsw[4]) <= number(hnsw[5])  # p50 <= p99
    assert row in section(results, "search.py")


def test_duplicates_benchmark_scores_both_methods_on_a_planted_folder(
    results, monkeypatch, capsys, tmp_path, cifar_slice, tiny_backbone
):
    args = ["--backbone", str(tiny_backbone), "--data", str(cifar_slice / "test"), "--work", str(tmp_path)]
    out = run_script("duplicates.py", [*args, "--distinct", "60", "--planted", "10"], monkeypatch, capsys)
    assert "110 files, 150 true pairs" in out  # 60 + 10 x 5 edits; 10 groups of 6: 15 pairs each
    rows = {line.split("|")[1].strip(): line.split("|")[2:6] for line in out.splitlines() if line.startswith("| ")}
    for name in ("pHash (Hamming <=), best F1", "simsiam duplicates (cosine >=), best F1"):
        p, r, f = (number(c) for c in rows[name][1:4])
        assert 0 <= p <= 1 and 0 <= r <= 1 and f == pytest.approx(2 * p * r / (p + r), abs=0.002)
    assert "| pHash, best F1 |" in out and "groups found" in out
    assert "Near-duplicates" in section(results, "duplicates.py")


def test_select_benchmark_trains_a_classifier_on_each_strategys_labels(
    results, monkeypatch, capsys, cifar_slice, tiny_backbone
):
    args = ["--backbone", str(tiny_backbone), "--data", str(cifar_slice), "--budgets", "10", "--seeds", "0", "1"]
    out = run_script("label_first.py", args, monkeypatch, capsys)
    row = next(line for line in out.splitlines() if line.startswith("| 10 |"))
    cells = row.split("|")[2:-1]
    assert len(cells) == 3
    for c in cells:  # "acc ± sd (classes covered)"
        acc, covered = float(c.split("±")[0]), float(c.split("(")[1].rstrip(") "))
        assert 0 <= acc <= 100 and 1 <= covered <= 10
    assert "Pool: 1000 CIFAR-10 train images" in out and row in section(results, "label_first.py")


def test_no_benchmark_script_shadows_a_standard_module():
    """`python benchmarks/X.py` puts benchmarks/ first on sys.path: a script named select.py would
    replace the standard `select` that subprocess imports (it broke vs_lightly.py once)."""
    names = {p.stem for p in BENCHMARKS.glob("*.py")}
    assert not names & set(sys.stdlib_module_names)
