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
    from simsiam import train
    from simsiam.data import load_splits

    from conftest import make_folder, tiny_config

    data = make_folder(tmp_path / "photos", n=20)
    kw = dict(
        preset="folder",
        data_dir=str(data),
        image_size=16,
        load_size=18,
        dim=32,
        pred_dim=8,
        proj_hidden=32,
        batch_size=8,
        knn_every=1,
        cache=False,
    )
    runs = {}
    for placement in ("memory", "stream"):
        cfg = tiny_config(tmp_path / placement, placement=placement, workers=2, **kw)
        train_set, test_set = load_splits(cfg)
        assert type(train_set).__name__ == ("ImageSet" if placement == "memory" else "FileSet")
        assert next(iter(train_set.batches(4))).shape[-2:] == (18, 18)  # stored at --load-size
        runs[placement] = (train(cfg), torch.load(tmp_path / placement / "checkpoint.pt", weights_only=False)["model"])
    (mem, mem_w), (stream, stream_w) = runs["memory"], runs["stream"]
    assert mem["knn_top1"] == stream["knn_top1"] and mem["loss"] == stream["loss"]
    for k in mem_w:
        assert torch.equal(mem_w[k], stream_w[k]), k
    # auto streams once the decoded images would exceed the budget
    auto = tiny_config(tmp_path / "auto", placement="auto", memory_budget_gb=1e-9, **kw)
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


# --- data folders that fight back: links, loops, huge images, odd files ---------------------------


def one_warning(err, *needles):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_directory_symlink_loop_is_listed_once(tmp_path, capsys):
    """cats/up -> .. used to list 40 images as 1,312 train + 328 test, the same files in both."""
    from conftest import make_folder

    data = make_folder(tmp_path / "photos", n=20, size=8)
    (data / "red" / "up").symlink_to("..")
    train, test = D.load_folder(str(data), 8, cache=tmp_path / "cache")
    assert (len(train), len(test)) == (32, 8)
    one_warning(capsys.readouterr().err, "skipped 1 symlinked folder", str(data / "red" / "up"), "loop")
    # the listing itself: the 40 real files, each once, in torchvision's order
    listing = D._Listing(str(data), [str(data)])
    _, samples = D._list_samples(str(data), listing)
    reals = [os.path.realpath(p) for p, _ in samples]
    assert len(samples) == 40 and len(set(reals)) == 40 and samples == sorted(samples, key=lambda s: (s[1], s[0]))
    assert len(D.list_images(str(data))) == 40  # what `simsiam embed` reads
    one_warning(capsys.readouterr().err, "skipped 1 symlinked folder")


def test_links_never_put_one_image_in_two_splits_or_classes(tmp_path, capsys):
    from conftest import make_folder

    data = tmp_path / "photos"
    make_folder(data / "train", n=5, size=8)
    make_folder(data / "test", n=2, size=8)
    (data / "train" / "red" / "up").symlink_to("../..")  # the data folder: a loop
    (data / "train" / "red" / "peek").symlink_to("../../test")  # a split
    (data / "train" / "blue" / "reds").symlink_to("../red")  # another class, not listed yet
    (data / "test" / "red" / "dup.png").symlink_to("../../train/red/0.png")  # a training image
    (data / "train" / "loop.jpg").symlink_to("loop.jpg")  # a link to itself: no class, no crash
    (data / "train" / "red2").symlink_to("red")  # a class that repeats another
    listing = D._Listing(str(data), [str(data / "train"), str(data / "test")])
    train_classes, train = D._list_samples(str(data / "train"), listing)
    test_classes, test = D._list_samples(str(data / "test"), listing)
    assert train_classes == test_classes == ["blue", "red"]
    assert (len(train), len(test)) == (10, 4)
    assert not {os.path.realpath(p) for p, _ in train} & {os.path.realpath(p) for p, _ in test}
    assert [y for _, y in train] == [0] * 5 + [1] * 5  # blue/reds/ did not relabel red images as blue
    assert len(listing.skipped) == 5
    D.load_folder(str(data), 8)
    one_warning(capsys.readouterr().err, "skipped 5 symlinked folder(s) or file(s)")


def test_file_symlink_loop_and_dangling_link_are_unreadable_files(tmp_path, capsys):
    """os.stat of these raised in the cache key (ELOOP, ENOENT) unless --no-cache."""
    from conftest import make_folder

    data = make_folder(tmp_path / "photos", n=3, size=8)
    (data / "red" / "a.jpg").symlink_to("b.jpg")
    (data / "red" / "b.jpg").symlink_to("a.jpg")
    (data / "blue" / "gone.png").symlink_to("missing.png")
    for _ in range(2):  # decoded, then a cache hit
        got = D.read_image_folder(str(data), 8, cache=tmp_path / "cache")
        assert len(got) == 6
        one_warning(capsys.readouterr().err, "skipped 3 unreadable image file(s)", "gone.png")
    with pytest.raises(DataError, match="cannot read image .*gone.png"):
        D.read_image_folder(str(data), 8, strict=True, cache=tmp_path / "cache")


def test_strict_stops_on_a_cache_hit_too(tmp_path, capsys):
    from conftest import make_folder

    data = make_folder(tmp_path / "photos", n=3, size=8)
    (data / "red" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    assert len(D.read_image_folder(str(data), 8, cache=tmp_path / "cache")) == 6  # fills the cache
    assert len(list((tmp_path / "cache").glob("*.images.npy"))) == 1
    with pytest.raises(DataError, match=r"cannot read image .*broken.jpg; .*drop --strict"):
        D.read_image_folder(str(data), 8, strict=True, cache=tmp_path / "cache")
    with pytest.raises(DataError, match="broken.jpg"):
        D.load_folder(str(data), 8, strict=True, cache=tmp_path / "cache", placement="memory")


def test_images_above_the_pixel_limit_are_skipped_without_pils_warning(tmp_path, monkeypatch, capsys):
    import warnings

    assert D.MAX_PIXELS == Image.MAX_IMAGE_PIXELS  # PIL's decompression-bomb limit, about 89.5 M
    data = tmp_path / "photos"
    (data / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(data / "a" / "small.png")  # 100 px: the limit
    Image.fromarray(np.zeros((10, 11, 3), np.uint8)).save(data / "a" / "over.png")  # 110 px
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(data / "a" / "bomb.png")  # 400 px: PIL refuses
    monkeypatch.setattr(D, "MAX_PIXELS", 100)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL: warns above, raises above 2x
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a raw PIL warning fails the test
        got = D.read_image_folder(str(data), 8)
    assert len(got) == 1
    one_warning(capsys.readouterr().err, "skipped 2 unreadable image file(s)", "over.png", "bomb.png")
    with pytest.raises(DataError, match="cannot read image .*bomb.png"):  # the first bad file in order
        D.read_image_folder(str(data), 8, strict=True)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10**9)  # our limit holds even where PIL's is higher
    assert D.decode_image(str(data / "a" / "over.png"), 8) is None
    assert D.decode_image(str(data / "a" / "small.png"), 8).shape == (8, 8, 3)


def test_data_dir_that_is_a_file_says_so(tmp_path, capsys, monkeypatch):
    from simsiam.export import list_images

    from conftest import assert_one_line_error, simsiam

    f = tmp_path / "photo.jpg"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(f)
    for call in (
        lambda: D.load_folder(str(f), 8),
        lambda: D.read_image_folder(str(f), 8),
        lambda: D.load_torchvision("cifar10", str(f), 32),
        lambda: list_images(f),
    ):
        with pytest.raises(DataError, match="is a file, not a folder; give --data-dir|is a file, not a folder; give"):
            call()
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(simsiam(capsys, "train", "--data-dir", f), str(f), "is a file, not a folder", "--data-dir")
    assert not (tmp_path / "runs").exists()
    res = simsiam(capsys, "embed", tmp_path / "no-run", "--data-dir", f, "--out", tmp_path / "e.npy")
    assert_one_line_error(res, str(f), "is a file, not a folder")


def test_odd_files_decode_or_are_skipped(tmp_path, capsys):
    """1x1 images, names with spaces, unicode or a leading dash decode; a zero-byte file is skipped."""
    data = tmp_path / "photos"
    (data / "a b").mkdir(parents=True)
    Image.fromarray(np.full((1, 1, 3), (200, 10, 30), np.uint8)).save(data / "a b" / "1x1.png")
    for name in ("with space.png", "ünïcødé 猫.png", "-leading-dash.png", "--help.png", ".hidden.png"):
        Image.fromarray(np.full((6, 5, 3), 99, np.uint8)).save(data / "a b" / name)
    (data / "a b" / "zero.jpg").write_bytes(b"")
    got = D.read_image_folder(str(data), 4)
    assert len(got) == 6 and got.classes == ["a b"]
    one_warning(capsys.readouterr().err, "skipped 1 unreadable image file(s)", "zero.jpg")
    one = D.decode_image(str(data / "a b" / "1x1.png"), 4)
    assert one.shape == (4, 4, 3) and (one == np.array([200, 10, 30], np.uint8)).all()  # upscaled, same colour


def test_a_fifo_named_like_an_image_is_skipped_not_waited_for(tmp_path, capsys):
    import threading

    from conftest import make_folder

    data = make_folder(tmp_path / "photos", n=2, size=8)
    fifo = data / "red" / "pipe.jpg"
    os.mkfifo(fifo)
    result = []
    reader = threading.Thread(target=lambda: result.append(D.read_image_folder(str(data), 8)), daemon=True)
    reader.start()
    reader.join(timeout=30)
    if reader.is_alive():  # release the blocked open before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join()
        pytest.fail("read_image_folder waited for a writer on a FIFO")
    assert len(result[0]) == 4
    one_warning(capsys.readouterr().err, "skipped 1 unreadable image file(s)", "pipe.jpg")


def test_unreadable_file_and_folder_are_skipped_with_a_warning(tmp_path, capsys, monkeypatch):
    from conftest import make_folder

    data = make_folder(tmp_path / "photos", n=3, size=8)
    locked = data / "red" / "0.png"
    hidden = data / "blue" / "sub"
    hidden.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(hidden / "x.png")
    locked.chmod(0)
    hidden.chmod(0)
    try:
        try:
            locked.read_bytes()
            deny_as_the_kernel_would(monkeypatch, {str(locked), str(hidden)})  # root reads through chmod 000
        except PermissionError:
            pass
        got = D.read_image_folder(str(data), 8)
        assert len(got) == 5
        err = capsys.readouterr().err
        assert "skipped 1 folder(s)" in err and "sub" in err and "skipped 1 unreadable image file(s)" in err
        with pytest.raises(DataError, match="cannot read image .*0.png"):
            D.read_image_folder(str(data), 8, strict=True)
    finally:
        locked.chmod(0o644)
        hidden.chmod(0o755)


def deny_as_the_kernel_would(monkeypatch, paths: set[str]) -> None:
    """EACCES for these paths from os.scandir and PIL's open: what a user without read permission
    gets, for a test running as root (which chmod 000 does not stop)."""
    import errno

    scandir, pil_open = os.scandir, Image.open

    def refuse(path):
        if str(path) in paths:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(os, "scandir", lambda path=".": refuse(path) or scandir(path))
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: refuse(fp) or pil_open(fp, *a, **k))


def test_listing_order_is_torchvisions_for_ordinary_trees(tmp_path):
    """Our walk replaced torchvision's find_classes + make_dataset; for a tree without links the
    classes, labels and order (and so the decode cache keys) are the same."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    names = ["a", "a-b", "a.b", "B", "é", " sp", "-x", "9.png", "x.PNG", "y.jpeg", "n.txt", "w.webp"]
    rng = np.random.default_rng(3)

    def fill(d, depth):
        for name in rng.choice(names, size=6, replace=False):
            if depth < 2 and "." not in name:
                (d / name).mkdir()
                fill(d / name, depth + 1)
            else:
                (d / name).write_bytes(b"")

    root = tmp_path / "tree"
    (root / "cls").mkdir(parents=True)
    fill(root / "cls", 0)
    fill(root, 1)
    classes, class_to_idx = find_classes(str(root))
    expected = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    assert D._list_samples(str(root), D._Listing(str(root), [str(root)])) == (classes, expected)
    assert len(expected) > 5


# --- decode: bounded by what is produced ----------------------------------------------------------


def resize_then_crop(path, size):
    """decode_image as it was before the aspect-ratio bound: the reference for ordinary images."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.float64)
            im = Image.fromarray((arr * (255.0 / max(arr.max(), 255.0) if arr.max() > 255 else 1.0)).astype(np.uint8))
        im = im.convert("RGB")
        if im.size != (size, size):
            w, h = im.size
            s = size / min(w, h)
            im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BICUBIC)
            left, top = (im.width - size) // 2, (im.height - size) // 2
            im = im.crop((left, top, left + size, top + size))
        return np.array(im, dtype=np.uint8)


def test_ordinary_images_decode_bit_for_bit_as_before(tmp_path):
    """Training numerics must not move: every image within the aspect-ratio bound (here up to 15:1)
    decodes to exactly the resize-then-crop of before."""
    rng = np.random.default_rng(5)
    for w, h in ((40, 30), (30, 95), (500, 333), (7, 5), (1, 1), (225, 15)):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{w}x{h}.png")
    Image.fromarray(rng.integers(0, 65536, (50, 70)).astype(np.uint16)).save(tmp_path / "gray16.png")
    for path in sorted(tmp_path.iterdir()):
        for size in (15, 32, 224):
            assert np.array_equal(D.decode_image(str(path), size), resize_then_crop(path, size)), (path.name, size)
    # beyond the bound (here 1000:17 and 11:900): the same sample positions, computed for the crop only;
    # the two resampling passes may run in the other order, so up to a level or two of rounding apart
    y, x = np.mgrid[0:1000, 0:900]
    smooth = np.stack([x * 255 // 899, y * 255 // 999, 128 + 100 * np.sin(y / 7) * np.cos(x / 3)], -1).astype(np.uint8)
    Image.fromarray(np.ascontiguousarray(smooth[:, :17])).save(tmp_path / "tall.png")
    Image.fromarray(np.ascontiguousarray(smooth[:11])).save(tmp_path / "wide.png")
    for name in ("tall.png", "wide.png"):
        got, ref = D.decode_image(str(tmp_path / name), 32), resize_then_crop(tmp_path / name, 32)
        assert got.shape == ref.shape and np.abs(got.astype(int) - ref).max() <= 2, name


def test_extreme_aspect_ratios_decode_in_bounded_memory(tmp_path):
    """A 2,000,000 x 1 PNG (a few KB) resized by its shorter side would be a 448,000,000 x 224 image
    (400 GB); it decodes to size x size from its centre with no more memory than the source."""
    import resource
    import time

    colour = (200, 30, 90)
    for w, h in ((2_000_000, 1), (1, 2_000_000), (100_000, 3)):
        Image.new("RGB", (w, h), colour).save(tmp_path / f"{w}x{h}.png")
    vm_kb = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmSize:"))
    limits = resource.getrlimit(resource.RLIMIT_AS)
    start = time.perf_counter()
    resource.setrlimit(resource.RLIMIT_AS, (vm_kb * 1024 + 100 * 2**20, limits[1]))  # 100 MB more at most
    try:
        got = [D.decode_image(str(p), 224) for p in sorted(tmp_path.iterdir())]
    finally:
        resource.setrlimit(resource.RLIMIT_AS, limits)
    assert time.perf_counter() - start < 5
    for a in got:
        assert a.shape == (224, 224, 3) and (a == np.array(colour, np.uint8)).all()


def test_pixel_limit_is_checked_again_after_decoding(tmp_path, monkeypatch):
    """Some decoders settle on another size at load than their header gave (ICNS, EPS at a scale,
    PIL's ICO before it loaded on open): the decoded size is held to MAX_PIXELS too."""
    from PIL import PngImagePlugin

    Image.new("RGB", (10, 10), (1, 2, 3)).save(tmp_path / "grows.png")
    load = PngImagePlugin.PngImageFile.load

    def load_larger(self):  # a decoder that gives 20 x 20 pixels for a 10 x 10 header
        load(self)
        self.im, self._size = Image.core.fill("RGB", (20, 20), (1, 2, 3)), (20, 20)
        return self.im.pixel_access()

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", load_larger)
    monkeypatch.setattr(D, "MAX_PIXELS", 300)  # above the header's 100 pixels, below the decoded 400
    assert D.decode_image(str(tmp_path / "grows.png"), 8) is None
    monkeypatch.setattr(D, "MAX_PIXELS", 400)
    assert (D.decode_image(str(tmp_path / "grows.png"), 8) == (1, 2, 3)).all()
