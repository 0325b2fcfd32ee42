"""The benchmark scripts stay runnable: a tiny-budget run of each prints its table."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_augment_benchmark_runs_and_prints_the_ratio(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "augment.py"),
            "--seconds",
            "0.2",
            "--rounds",
            "1",
            "--sizes",
            "32",
            "--no-write",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    row = next(line for line in out.stdout.splitlines() if line.startswith("| 32 px -> 32 px |"))
    ours, tv, ratio = (c.strip() for c in row.split("|")[2:5])
    assert float(ours.replace(",", "")) > 0 and float(tv.replace(",", "")) > 0 and ratio.endswith("x")
    assert "% of the step" in out.stdout


def test_throughput_benchmark_runs_and_prints_the_efficiency(tmp_path):
    args = [
        "--seconds",
        "0.3",
        "--rounds",
        "1",
        "--no-write",
        "--batch-size",
        "32",
        "--set",
        "width=0.125",
        "--set",
        "dim=64",
        "--set",
        "proj_hidden=64",
        "--set",
        "pred_dim=16",
    ]
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ours:") or line.startswith("| bare:")]
    assert len(rows) == 2 and all(float(r.split("|")[2].replace(",", "")) > 0 for r in rows)
    assert "Pipeline efficiency ours / bare: **" in out.stdout


def test_vs_lightly_benchmark_runs_both_sides(cifar_slice, tmp_path):
    """The lightly comparison end to end on the CIFAR slice, seconds instead of minutes. It installs
    lightly from PyPI into benchmarks/.venv-lightly the first time; skipped when that cannot be done."""
    script = ROOT / "benchmarks" / "vs_lightly.py"
    probe = subprocess.run(
        [sys.executable, "-c", f"import runpy; runpy.run_path({str(script)!r})['lightly_python']()"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if probe.returncode != 0:
        pytest.skip(f"lightly could not be installed from PyPI here: {probe.stderr.strip().splitlines()[-1:]}")
    args = ["--data", str(cifar_slice), "--rounds", "1", "--seconds", "2", "--minutes", "0.05", "--no-write"]
    out = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rate = next(line for line in out.stdout.splitlines() if line.startswith("| images/s"))
    ours, lightly = (float(c.strip().replace(",", "")) for c in rate.split("|")[2:4])
    assert ours > 0 and lightly > 0
    assert "budget race: kNN top-1 on the 200 test images" in out.stdout
