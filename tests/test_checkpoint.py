"""Checkpoints: atomic writes, safe loading on every path that reads one, wrapper-free keys."""

import errno
import json
import os

import pytest
import torch
import torch.nn as nn

from simsiam import build_backbone, checkpoint, train
from simsiam.cli import main
from simsiam.errors import DataError, TrainingError

from conftest import make_folder, tiny_config


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"epoch": 1})

    def full_disk(obj, f, *a, **kw):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(TrainingError, match="No space left on device.*previous checkpoint is intact"):
        checkpoint.save(path, {"epoch": 2})
    monkeypatch.undo()
    assert torch.load(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no torn temp file left


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    cfg = tiny_config(tmp_path / "run", batch_size=32, lr=1e30, log_every=1)
    with pytest.raises(TrainingError, match=r"loss is nan.*lower --lr"):
        train(cfg)


class _Payload:
    """Unpickling this runs os.mkdir(marker): what a crafted checkpoint would do, harmlessly."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _crafted(path, marker, **fields):
    cfg = tiny_config(path.parent)
    state = {"epoch": 1, "config": cfg.to_dict(), "model": {}, "train_seconds": _Payload(marker), **fields}
    torch.save(state, path)
    return cfg


@pytest.mark.parametrize("where", ["checkpoint file", "run dir", "backbone.pt", "resume", "embed --projector"])
def test_a_crafted_checkpoint_is_refused_and_runs_nothing(where, tmp_path, capsys):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    cfg = _crafted(run / "checkpoint.pt", marker)
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    images = make_folder(tmp_path / "images", n=2)
    args = {
        "checkpoint file": ["eval", "knn", str(run / "checkpoint.pt"), "--data-dir", str(images)],
        "run dir": ["export", str(run), "--out", str(tmp_path / "b.safetensors")],
        "backbone.pt": ["export", str(run), "--out", str(tmp_path / "b.safetensors")],
        "resume": ["train", "--resume", "--run-dir", str(run)],
        "embed --projector": [
            "embed",
            str(run),
            "--data-dir",
            str(images),
            "--out",
            str(tmp_path / "e.npy"),
            "--projector",
        ],
    }[where]
    if where == "backbone.pt":
        torch.save({"conv1.weight": _Payload(marker)}, run / "backbone.pt")
    if where == "embed --projector":  # a good backbone, a crafted checkpoint.pt beside it
        torch.save(build_backbone("resnet18", True, 0.125)[0].state_dict(), run / "backbone.pt")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refusing to load it" in err[0], err
    assert not marker.exists()  # the payload never ran


def test_plain_keys_and_unwrap_see_through_ddp_and_compile_wrappers():
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    compiled = torch.compile(model)  # not called: no compilation happens, only the wrapper
    assert checkpoint.unwrap(compiled) is model and checkpoint.unwrap(nn.DataParallel(compiled)) is model
    assert next(iter(compiled.state_dict())).startswith("_orig_mod.")
    for wrapped in [compiled, nn.DataParallel(model), nn.DataParallel(compiled)]:
        assert checkpoint.model_state(wrapped).keys() == model.state_dict().keys()
    keys = {"module._orig_mod.0.weight": 1, "encoder._orig_mod.1.bias": 2, "module.module.x": 3}
    assert checkpoint.plain_keys(keys) == {"0.weight": 1, "encoder.1.bias": 2, "x": 3}


def test_a_truncated_checkpoint_is_a_one_line_error(tmp_path):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"epoch": 1, "model": {"w": torch.ones(1000)}})
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match="cannot read checkpoint .*checkpoint.pt"):
        checkpoint.load(path)
