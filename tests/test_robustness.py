"""Rows of docs/robustness.md not covered elsewhere: bad numbers and choices on the command line,
a batch larger than the data, weights of another architecture. Each is one line and exit 2."""

import json
import subprocess
import sys

import pytest
import torch
from test_cli import assert_one_line_error, run_cli

from simsiam import build_backbone

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


def test_weights_of_another_architecture_are_one_line(tmp_path):
    """A run directory whose backbone.pt does not fit its config.json (wider network)."""
    run = tmp_path / "run"
    run.mkdir()
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
        str(run / "r"),
    )
    assert res.returncode == 0, res.stderr[-2000:]
    torch.save(build_backbone("resnet18", True, 0.25)[0].state_dict(), run / "r" / "backbone.pt")
    for command in (["eval", "knn", str(run / "r")], ["export", str(run / "r"), "--out", str(tmp_path / "b.st")]):
        assert_one_line_error(run_cli(*command), "weights do not fit")
    config = json.loads((run / "r" / "config.json").read_text())
    assert config["width"] == 0.125


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
