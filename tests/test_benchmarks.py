"""The benchmark scripts stay runnable: a tiny-budget run of each prints its table."""

import subprocess
import sys
from pathlib import Path

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
