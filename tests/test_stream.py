"""Streamed data (FileSet, `--placement stream`) keeps the guarantees of data in memory: `--strict`
is one line from DataLoader workers too, unreadable files are counted in one warning, batches left
too small for BatchNorm are dropped and counted, and a pass that yields nothing is one line."""

import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simsiam.data import datasets as D
from simsiam.errors import DataError


def files(folder: Path, pattern: str) -> list[str]:
    """One image file per letter of `pattern` in folder: g readable (8 x 8, a grey level per file),
    b unreadable (a text file named .png)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, kind in enumerate(pattern):
        path = folder / f"{i:02d}-{kind}.png"
        if kind == "g":
            Image.fromarray(np.full((8, 8, 3), 10 * i, np.uint8)).save(path)
        else:
            path.write_text("not an image")
        paths.append(str(path))
    return paths


def file_set(paths: list[str], strict: bool = False) -> D.FileSet:
    return D.FileSet(paths, torch.full((len(paths),), D.UNLABELED), [], 8, strict)


def warnings_of(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip()]


def test_strict_from_workers_is_one_line_naming_the_file(tmp_path):
    """A bad file under --strict stops with the in-memory path's one line, not DataLoader's
    'Caught DataError in DataLoader worker process 0 ... Original Traceback'."""
    paths = files(tmp_path / "photos", "ggggbggg")
    with pytest.raises(DataError) as caught:
        list(file_set(paths, strict=True).batches(2, workers=2))
    assert str(caught.value) == (f"cannot read image {paths[4]}; fix or remove it, or drop --strict to skip bad files")
    with pytest.raises(DataError) as in_memory:
        D.read_image_folder(str(tmp_path), 8, strict=True)
    assert str(in_memory.value) == str(caught.value)


def test_unreadable_files_are_one_counted_warning_naming_a_few(tmp_path, capsys):
    paths = files(tmp_path / "photos", "gbggbgbgbg")
    got = list(file_set(paths).batches(5, workers=2))
    assert [len(b) for b in got] == [3, 3]
    assert torch.equal(torch.cat(got)[:, 0, 0, 0], torch.tensor([0, 20, 30, 50, 70, 90], dtype=torch.uint8))
    (line,) = warnings_of(capsys.readouterr().err)
    assert f"skipped 4 unreadable image file(s) while streaming {tmp_path / 'photos'}" in line
    assert f"e.g. {paths[1]}, {paths[4]}, {paths[6]} (--strict stops at the first)" in line


def test_a_stuck_worker_costs_a_pause_and_a_warning_not_the_run(tmp_path, capsys, monkeypatch):
    """A forked worker can inherit a lock that a thread of the parent held at the fork and wait on
    it forever (CI once hung 90 minutes on this file). A worker silent for WORKER_STALL_SECONDS is
    stopped and the rest of the pass is decoded in the main process: the same batches, in order."""
    paths = files(tmp_path / "photos", "ggggggbg")
    want = [b.tolist() for b in file_set(paths).batches(2)]
    capsys.readouterr()
    real = D.decode_image

    def stuck_in_a_worker(path, size):
        if path == paths[3] and torch.utils.data.get_worker_info() is not None:
            threading.Event().wait()  # a lock nobody will release
        return real(path, size)

    monkeypatch.setattr(D, "decode_image", stuck_in_a_worker)  # the workers are forked: they get it too
    monkeypatch.setattr(D, "WORKER_STALL_SECONDS", 2)
    monkeypatch.setattr(torch.utils.data._utils, "MP_STATUS_CHECK_INTERVAL", 0.5)  # the join before kill
    got = [b.tolist() for b in file_set(paths).batches(2, workers=2)]
    assert got == want
    stalled, skipped = warnings_of(capsys.readouterr().err)
    assert stalled == (
        "simsiam: warning: the 2 image-decoding worker(s) sent no batch in 2 s; decoding the other 3 "
        "batch(es) of this pass in the main process (if this repeats, use --workers 0)"
    )
    assert "skipped 1 unreadable image file(s)" in skipped


def test_batches_left_too_small_are_dropped_and_counted(tmp_path, capsys):
    """With min_batch=2 (training: BatchNorm needs two images), a batch left with one readable
    image (or none) is dropped, and one warning line at the end of the pass says how many."""
    paths = files(tmp_path / "photos", "gbggbbggbg")
    fs = file_set(paths)
    got = list(fs.batches(2, min_batch=2))  # (g b) (g g) (b b) (g g) (b g)
    assert [b[:, 0, 0, 0].tolist() for b in got] == [[20, 30], [60, 70]]
    skipped, dropped = warnings_of(capsys.readouterr().err)
    assert "skipped 4 unreadable image file(s)" in skipped
    assert dropped == "simsiam: warning: dropped 3 batch(es) left with fewer than 2 readable images"
    # the default keeps a batch of one; only the empty one goes
    assert [len(b) for b in fs.batches(2)] == [1, 2, 2, 1]
    assert "dropped 1 batch(es) left with no readable image" in capsys.readouterr().err
    # in memory there is nothing to drop: the same call is accepted
    mem = D.ImageSet(torch.zeros(5, 3, 8, 8, dtype=torch.uint8), torch.zeros(5, dtype=torch.int64), [])
    assert [len(b) for b in mem.batches(2, min_batch=2)] == [2, 2, 1]


def test_a_dropped_batch_under_torchrun_is_one_line(tmp_path, monkeypatch):
    """Processes step together: one that dropped a batch would wait for the others forever, so with
    more than one process a batch too small to keep stops the run instead."""
    monkeypatch.setattr(D, "rank_and_world", lambda: (1, 2))
    paths = files(tmp_path / "photos", "ggbggg")
    with pytest.raises(DataError) as caught:
        list(file_set(paths).batches(2, min_batch=2))
    msg = str(caught.value)
    assert "\n" not in msg and paths[2] in msg and "2 processes" in msg
    assert [len(b) for b in file_set(paths).batches(3, min_batch=2)] == [2, 3]  # nothing dropped: no error


def test_a_pass_with_no_readable_batch_is_one_line(tmp_path, capsys):
    """All files bad: one line, not an empty pass (training then crashed with an AttributeError,
    feature extraction in torch.cat)."""
    bad = files(tmp_path / "bad", "bbb")
    for workers in (0, 2):
        with pytest.raises(
            DataError, match=re.escape(f"none of the 3 image files under {tmp_path / 'bad'} could be read")
        ):
            list(file_set(bad).batches(2, workers=workers))
    with pytest.raises(DataError, match="cannot read image .*01-b.png, which this step needs"):
        file_set(bad).take([1])  # not a StopIteration
    # readable images, but every batch left too small
    some = files(tmp_path / "some", "gbbggb")
    with pytest.raises(DataError) as caught:
        list(file_set(some).batches(2, min_batch=2, drop_last=True))
    msg = str(caught.value)
    assert "\n" not in msg and "fewer than 2 readable images" in msg and some[1] in msg
    # nothing asked for is not an error
    capsys.readouterr()
    assert list(file_set(some).batches(2, order=torch.zeros(0, dtype=torch.int64))) == []
    assert list(file_set(some).batches(8, drop_last=True)) == []


def test_streamed_training_survives_a_batch_left_with_one_image(tmp_path, capsys):
    """End to end: every order of 5 readable and 3 unreadable files in batches of 2 leaves a batch
    with one image (an odd count in 4 batches) and one with two; training drops the first instead
    of failing in BatchNorm, and finishes."""
    from simsiam import train

    from conftest import tiny_config

    root = tmp_path / "photos"
    files(root / "train", "gbgbggbg")
    files(root / "test", "gg")
    cfg = tiny_config(
        tmp_path / "run",
        preset="folder",
        data_dir=str(root),
        placement="stream",
        workers=0,
        image_size=16,
        load_size=16,
        batch_size=2,
        epochs=1,
    )
    summary = train(cfg)
    assert np.isfinite(summary["loss"])
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    assert "left with fewer than 2 readable images" in capsys.readouterr().err


def test_evaluation_never_pairs_a_feature_with_another_images_label(tmp_path, capsys):
    """Training skips unreadable streamed files; evaluation and `take` must not: their rows are
    paired with labels (or targets) by index, so a skipped file is one line, never a shifted label."""
    import torch.nn as nn

    from simsiam.evaluate import extract_features

    paths = files(tmp_path / "photos", "ggbgg")
    fs = file_set(paths)
    assert fs.take([0, 3]).shape == (2, 3, 8, 8)
    with pytest.raises(DataError, match=f"cannot read image {re.escape(paths[2])}, which this step needs"):
        fs.take([1, 2])
    pool = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert extract_features(pool, file_set([p for p in paths if "-g" in p]), 8, (0.5,) * 3, (0.5,) * 3).shape == (4, 4)
    with pytest.raises(DataError, match="1 of the 5 images to evaluate could not be read") as e:
        extract_features(pool, fs, 8, (0.5,) * 3, (0.5,) * 3)
    assert "\n" not in str(e.value)
