"""Datasets: torchvision CIFAR/STL-10 from on-disk fixtures and a local download server, the
decode-once cache, flat unlabeled folders, and the bad-input matrix."""

import hashlib
import http.server
import io
import os
import pickle
import tarfile
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets as tvd

from simsiam.data import datasets as D
from simsiam.errors import DataError


def md5(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def write_cifar10(root, n_train=20, n_test=10, seed=0):
    """A CIFAR-10 copy in torchvision's on-disk format (pickled batches), tiny. Returns the
    images/labels written and patches for torchvision's md5 table."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written, train_list = {}, []
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else n_train // 5
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
        written[name] = (data.reshape(n, 3, 32, 32), labels)
        train_list.append([name, md5(folder / name)])
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    patches = {
        "train_list": train_list[:5],
        "test_list": train_list[5:],
        "meta": {"filename": "batches.meta", "key": "label_names", "md5": md5(folder / "batches.meta")},
    }
    return written, patches


def test_cifar10_torchvision_layout(tmp_path, monkeypatch):
    written, patches = write_cifar10(tmp_path / "copy")
    for k, v in patches.items():
        monkeypatch.setattr(tvd.CIFAR10, k, v)
    train, test = D.load_torchvision("cifar10", str(tmp_path / "copy"), 32)
    expected = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
    assert np.array_equal(train.images.numpy(), expected)
    assert test.labels.tolist() == written["test_batch"][1] and train.classes == [f"c{i}" for i in range(10)]
    small, _ = D.load_torchvision("cifar10", str(tmp_path / "copy"), 16)  # resized on load
    assert small.images.shape == (20, 3, 16, 16)
    with pytest.raises(DataError, match="not found or corrupted"):
        D.load_torchvision("cifar10", str(tmp_path), 32)  # a folder without the data


@pytest.fixture
def file_server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_cifar10_download_with_checksum(tmp_path, file_server, monkeypatch):
    served, url = file_server
    _, patches = write_cifar10(tmp_path / "src")
    archive = served / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    for k, v in patches.items():
        monkeypatch.setattr(tvd.CIFAR10, k, v)
    monkeypatch.setattr(tvd.CIFAR10, "url", f"{url}/cifar-10-python.tar.gz")
    monkeypatch.setattr(tvd.CIFAR10, "tgz_md5", "0" * 32)  # wrong checksum: refused
    with pytest.raises(DataError, match="cifar10"):
        D.load_torchvision("cifar10", None, 32, cache_dir=str(tmp_path / "cache1"))
    monkeypatch.setattr(tvd.CIFAR10, "tgz_md5", md5(archive))
    train, test = D.load_torchvision("cifar10", None, 32, cache_dir=str(tmp_path / "cache2"))
    assert len(train) == 20 and len(test) == 10
    assert (tmp_path / "cache2" / "cifar10" / "cifar-10-batches-py").is_dir()
    monkeypatch.setattr(tvd.CIFAR10, "url", f"{url}/missing.tar.gz")
    with pytest.raises(DataError, match="could not download|not found"):
        D.load_torchvision("cifar10", None, 32, cache_dir=str(tmp_path / "cache3"))


def test_stl10_binary_fixture_unlabeled_goes_to_pretraining_only(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    counts = {"train": 6, "test": 4, "unlabeled": 10}
    stored = {}
    for split, n in counts.items():
        # torchvision reads (N, 3, 96, 96) and transposes H/W: the files are column-major
        img = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
        img.transpose(0, 1, 3, 2).tofile(folder / f"{split}_X.bin")
        stored[split] = img
        if split != "unlabeled":
            (rng.integers(1, 11, n).astype(np.uint8)).tofile(folder / f"{split}_y.bin")  # 1-based
    (folder / "class_names.txt").write_text("\n".join(f"k{i}" for i in range(10)))
    monkeypatch.setattr(tvd.STL10, "_check_integrity", lambda self: True)  # fixture files have other md5s
    train, test = D.load_torchvision("stl10", str(tmp_path), 96)
    assert len(train) == 16 and len(test) == 4 and train.classes[0] == "k0"
    assert (train.labels[:10] == D.UNLABELED).all() and (train.labels[10:] >= 0).all()
    assert np.array_equal(train.images[:10].numpy(), stored["unlabeled"])
    assert len(train.labeled()) == 6


def make_images(root, n=6, size=12):
    rng = np.random.default_rng(1)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_decode_cache_hit_and_invalidation(tmp_path, monkeypatch):
    data, cache = tmp_path / "data", tmp_path / "cache"
    make_images(data)
    first = D.read_image_folder(str(data), 8, cache=cache)
    assert len(list(cache.glob("*.images.npy"))) == 1

    def no_decoding(*a, **kw):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(D, "decode_image", no_decoding)
    second = D.read_image_folder(str(data), 8, cache=cache)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    monkeypatch.undo()
    # a new file changes the key: decoded again, with the new image
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(data / "a" / "new.png")
    third = D.read_image_folder(str(data), 8, cache=cache)
    assert len(third) == len(first) + 1 and len(list(cache.glob("*.images.npy"))) == 2
    # a touched file too
    os.utime(data / "a" / "0.png", ns=(time.time_ns(), time.time_ns() + 10**9))
    D.read_image_folder(str(data), 8, cache=cache)
    assert len(list(cache.glob("*.images.npy"))) == 3


def test_flat_folder_is_unlabeled(tmp_path):
    make_images(tmp_path / "x")
    flat = tmp_path / "x" / "a"
    train, test = D.load_folder(str(flat), 8)
    assert len(train) + len(test) == 6 and (train.labels == D.UNLABELED).all() and train.classes == []
    assert len(train.labeled()) == 0


def bad_input_folder(root):
    """One class of good images in every format and mode, one of bad files."""
    good, bad = root / "good", root / "bad"
    good.mkdir(parents=True)
    bad.mkdir()
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(good / "rgb.jpg")
    Image.fromarray(rgb).convert("CMYK").save(good / "cmyk.jpg")
    Image.fromarray(rgb).convert("P").save(good / "palette.png")
    Image.fromarray(np.dstack([rgb, np.full((40, 30), 128, np.uint8)])).save(good / "rgba.png")
    Image.fromarray(rgb[..., 0]).save(good / "gray.png")
    Image.fromarray((rng.integers(0, 65536, (40, 30))).astype(np.uint16)).save(good / "gray16.png")
    Image.fromarray(rgb).save(good / "img.webp")
    Image.fromarray(rgb).save(good / "img.bmp")
    Image.fromarray(rgb[:5, :4]).save(good / "tiny.png")  # smaller than the crop: upscaled
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG")
    (bad / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (bad / "empty.png").write_bytes(b"")
    (bad / "text.jpg").write_text("this is not an image")
    (bad / "notes.txt").write_text("ignored: not an image extension")
    return good, bad


def test_bad_input_matrix(tmp_path, capsys):
    good, bad = bad_input_folder(tmp_path / "data")
    data = D.read_image_folder(str(tmp_path / "data"), 16)
    assert len(data) == 9 and data.images.shape[1:] == (3, 16, 16)
    assert (data.labels == data.classes.index("good")).all()
    err = capsys.readouterr().err
    assert "skipped 3 unreadable image file(s)" in err and len(err.strip().splitlines()) == 1
    # 16-bit gray keeps its contrast (scaled, not clipped to white)
    gray16 = D.decode_image(str(good / "gray16.png"), 16)
    assert gray16.std() > 15 and 60 < gray16.mean() < 200  # clipped, it would be almost all 255
    with pytest.raises(DataError, match=r"cannot read image .*(truncated|empty|text)"):
        D.read_image_folder(str(tmp_path / "data"), 16, strict=True)
    # only bad files: a one-line error, not an empty dataset
    with pytest.raises(DataError, match="none of the 3 image files"):
        D.read_image_folder(str(bad), 16)


def test_stream_placement_trains_exactly_like_memory(tmp_path):
    """Streaming decodes the same pixels in the same order through DataLoader workers, so the
    trained weights and the kNN equal the in-memory run's bit for bit."""
    from simsiam import from_preset, train
    from simsiam.data import load_splits

    from conftest import make_folder

    data = make_folder(tmp_path / "photos", n=20)
    kw = dict(
        data_dir=str(data),
        image_size=16,
        load_size=18,
        width=0.125,
        dim=32,
        pred_dim=8,
        proj_hidden=32,
        batch_size=8,
        epochs=2,
        knn_every=1,
        knn_random_init=False,
        report=False,
        cache=False,
    )
    runs = {}
    for placement in ("memory", "stream"):
        cfg = from_preset("folder", placement=placement, workers=2, run_dir=str(tmp_path / placement), **kw)
        train_set, test_set = load_splits(cfg)
        assert type(train_set).__name__ == ("ImageSet" if placement == "memory" else "FileSet")
        assert next(iter(train_set.batches(4))).shape[-2:] == (18, 18)  # stored at --load-size
        runs[placement] = (train(cfg), torch.load(tmp_path / placement / "checkpoint.pt", weights_only=False)["model"])
    (mem, mem_w), (stream, stream_w) = runs["memory"], runs["stream"]
    assert mem["knn_top1"] == stream["knn_top1"] and mem["loss"] == stream["loss"]
    for k in mem_w:
        assert torch.equal(mem_w[k], stream_w[k]), k
    # auto streams once the decoded images would exceed the budget
    auto = from_preset("folder", placement="auto", memory_budget_gb=1e-9, **kw)
    assert type(load_splits(auto)[0]).__name__ == "FileSet"
    assert type(load_splits(auto.replace(memory_budget_gb=1.0))[0]).__name__ == "ImageSet"


def test_stream_skips_unreadable_files_and_strict_stops(tmp_path, capsys):
    from conftest import make_folder

    data = make_folder(tmp_path / "photos", n=4)
    (data / "red" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    files, _ = D.load_folder(str(data), 8, holdout=0.01, placement="stream")
    got = torch.cat(list(files.batches(3, workers=2)))
    assert len(files) == 8 and got.shape == (7, 3, 8, 8)  # 9 files, 1 held out; the broken one is dropped
    assert "skipped 1 unreadable image file(s) while streaming" in capsys.readouterr().err
    strict, _ = D.load_folder(str(data), 8, holdout=0.01, placement="stream", strict=True)
    with pytest.raises(DataError, match="broken.jpg"):
        list(strict.batches(3))
