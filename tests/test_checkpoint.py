import errno

import pytest
import torch

from simsiam import checkpoint
from simsiam.errors import TrainingError


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"epoch": 1})

    def full_disk(obj, f, *a, **kw):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(TrainingError, match="No space left on device.*previous checkpoint is intact"):
        checkpoint.save(path, {"epoch": 2})
    monkeypatch.undo()
    assert torch.load(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no torn temp file left


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    from simsiam import from_preset, train

    cfg = from_preset(
        "digits",
        width=0.125,
        subset=128,
        batch_size=32,
        epochs=2,
        lr=1e30,
        log_every=1,
        knn_random_init=False,
        report=False,
        run_dir=str(tmp_path / "run"),
    )
    with pytest.raises(TrainingError, match=r"loss is nan.*lower --lr"):
        train(cfg)
