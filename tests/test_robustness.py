"""Rows of docs/robustness.md not covered elsewhere: bad numbers and choices on the command line,
a batch larger than the data, weights of another architecture. Each is one line and exit 2."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from test_cli import assert_one_line_error, run_cli

from simsiam import build_backbone
from simsiam.cli import main

from conftest import TINY


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--epochs", "0"], ["--epochs", "positive"]),
        (["--lr", "inf"], ["--lr"]),
        (["--lr", "-0.1"], ["--lr", "positive"]),
        (["--width", "-0.5"], ["--width"]),
        (["--knn-t", "nan"], ["--knn-t"]),
        (["--jitter-p", "1.5"], ["--jitter-p", "probability"]),
        (["--crop-scale", "0.5", "0.2"], ["--crop-scale"]),
        (["--checkpoint-every", "-1"], ["--checkpoint-every", ">= 0"]),
        (["--keep-checkpoints", "0"], ["--keep-checkpoints", "at least 1"]),
        (["--method", "moco"], ["--method", "simsiam"]),
        (["--alternation", "often"], ["--alternation"]),
        (["--subset", "10", "--batch-size", "64"], ["--batch-size 64", "larger than the 10 training images"]),
        (["--batch-size", "abc"], ["--batch-size", "invalid int value"]),
    ],
)
def test_bad_numbers_and_choices_are_one_line_errors(args, needles, tmp_path):
    res = run_cli("train", *args, cwd=tmp_path)
    if "invalid int value" in needles:  # argparse's own message: usage line + error line, exit 2
        assert res.returncode == 2 and "invalid int value" in res.stderr and "Traceback" not in res.stderr
    else:
        assert_one_line_error(res, *needles)
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished one-epoch run of a tiny model (width 0.125)."""
    run = tmp_path_factory.mktemp("run") / "r"
    res = run_cli(
        "train",
        "--epochs",
        "1",
        "--subset",
        "128",
        *TINY,
        "--no-report",
        "--knn-every",
        "0",
        "--no-knn-random-init",
        "--run-dir",
        str(run),
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return run


def test_weights_of_another_architecture_are_one_line(tiny_run, tmp_path):
    """A run directory whose backbone.pt does not fit its config.json (wider network)."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run / "r")
    torch.save(build_backbone("resnet18", True, 0.25)[0].state_dict(), run / "r" / "backbone.pt")
    for command in (["eval", "knn", str(run / "r")], ["export", str(run / "r"), "--out", str(tmp_path / "b.st")]):
        assert_one_line_error(run_cli(*command), "weights do not fit")
    config = json.loads((run / "r" / "config.json").read_text())
    assert config["width"] == 0.125


@pytest.mark.parametrize("bad", [["--k", "0"], ["--t", "0"], ["--k", "-3"]])
def test_eval_knn_of_a_real_run_refuses_a_bad_k_or_t(tiny_run, bad, capsys):
    """--k 0 and --t 0 reported an accuracy (11.1%) with exit 0; --k -3 was a traceback."""
    assert main(["eval", "knn", str(tiny_run), *bad, "--out", str(tiny_run / "bad.json")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"simsiam: error: {bad[0]} must be a positive"), lines
    assert not (tiny_run / "bad.json").exists()


def test_python_api_errors_are_typed(tmp_path):
    """From Python the same problems are SimSiamError subclasses, never bare exceptions."""
    code = (
        "from simsiam import from_preset, train, ConfigError, DataError\n"
        "try:\n    from_preset('digits', epochs=-1)\nexcept ConfigError as e:\n    print('config', e)\n"
        f"try:\n    train(from_preset('folder', data_dir={str(tmp_path)!r}, run_dir={str(tmp_path / 'r')!r}))\n"
        "except DataError as e:\n    print('data', e)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("config --epochs must be a positive integer") and "\ndata " in res.stdout
