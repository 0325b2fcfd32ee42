"""Rows of docs/robustness.md not covered elsewhere: bad numbers and choices on the command line,
a batch larger than the data, weights of another architecture. Each is one line and exit 2."""

import json
import shutil

import pytest
import torch

from simsiam import ConfigError, DataError, build_backbone, from_preset, train

from conftest import TINY, assert_one_line_error, simsiam


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
    ],
)
def test_bad_numbers_and_choices_are_one_line_errors(args, needles, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(simsiam(capsys, "train", *args), *needles)
    assert not (tmp_path / "runs").exists()


def test_a_value_argparse_cannot_parse_is_its_usage_error(tmp_path, capsys, monkeypatch):
    """argparse's own message: the usage line and an error line naming the option, exit 2."""
    monkeypatch.chdir(tmp_path)
    res = simsiam(capsys, "train", "--batch-size", "abc")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and lines[0].startswith("usage: simsiam train") and "Traceback" not in res.stderr
    assert "--batch-size: invalid int value: 'abc'" in lines[-1]
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished one-epoch run of the tiny model (width 0.125)."""
    run = tmp_path_factory.mktemp("run") / "r"
    from simsiam.cli import main

    assert main(["train", *TINY, "--epochs", "1", "--run-dir", str(run)]) == 0
    return run


def test_weights_of_another_architecture_are_one_line(tiny_run, tmp_path, capsys):
    """A run directory whose backbone.pt does not fit its config.json (wider network)."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run / "r")
    torch.save(build_backbone("resnet18", True, 0.25)[0].state_dict(), run / "r" / "backbone.pt")
    for command in (["eval", "knn", run / "r"], ["export", run / "r", "--out", tmp_path / "b.st"]):
        assert_one_line_error(simsiam(capsys, *command), "weights do not fit")
    config = json.loads((run / "r" / "config.json").read_text())
    assert config["width"] == 0.125


@pytest.mark.parametrize("bad", [["--k", "0"], ["--t", "0"], ["--k", "-3"]])
def test_eval_knn_of_a_real_run_refuses_a_bad_k_or_t(tiny_run, bad, capsys):
    """--k 0 and --t 0 reported an accuracy (11.1%) with exit 0; --k -3 was a traceback."""
    res = simsiam(capsys, "eval", "knn", tiny_run, *bad, "--out", tiny_run / "bad.json")
    assert_one_line_error(res, f"{bad[0]} must be a positive")
    assert not (tiny_run / "bad.json").exists()


def test_python_api_errors_are_typed(tmp_path):
    """From Python the same problems are SimSiamError subclasses, never bare exceptions."""
    with pytest.raises(ConfigError, match="^--epochs must be a positive integer"):
        from_preset("digits", epochs=-1)
    with pytest.raises(DataError):
        train(from_preset("folder", data_dir=str(tmp_path), run_dir=str(tmp_path / "r")))
