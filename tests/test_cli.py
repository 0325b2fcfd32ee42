"""The command line: bad input gives one line and a non-zero exit; a short run writes its files.

In this process through `simsiam.cli.main` (conftest.simsiam), except the one test of the entry
point itself: `python -m simsiam` in a new process prints the same one line and exits 2."""

import json
import subprocess
import sys

import pytest

from conftest import TINY, assert_one_line_error, assert_picture, make_folder, simsiam


def run_cli(*args, cwd=None):
    """`python -m simsiam ARGS` in a new process (seconds of importing torch: only where the
    process is the point; conftest.simsiam runs a command in this one)."""
    return subprocess.run(
        [sys.executable, "-m", "simsiam", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_the_entry_point_prints_one_line_errors_and_exits_2(tmp_path):
    """The console command is `simsiam.cli:main` behind `raise SystemExit(main())`: its exit code
    and stderr, no traceback, in a process of its own."""
    res = run_cli("train", "--batch-size", "0", cwd=tmp_path)
    assert_one_line_error(res, "--batch-size", "at least 2", "BatchNorm")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--dataset", "folder", "--data-dir", "/nonexistent/images"], ["/nonexistent/images", "does not exist"]),
        (["--batch-size", "0"], ["--batch-size", "at least 2", "BatchNorm"]),
        (["--batch-size", "-4"], ["--batch-size", "at least 2"]),
        (["--lr", "nan"], ["--lr"]),
        (["--preset", "nope"], ["unknown preset", "cifar10"]),
        (["--arch", "vgg"], ["--arch", "did you mean vgg19", "list_models"]),
        (["--dataset", "folder"], ["--data-dir"]),
        (["--resume", "--run-dir", "/nonexistent/run"], ["config.json"]),
    ],
)
def test_bad_options_are_one_line_errors(args, needles, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(simsiam(capsys, "train", *args), *needles)
    assert not (tmp_path / "runs").exists()  # a failed start leaves no empty run directory


def test_empty_data_dir(tmp_path, capsys):
    assert_one_line_error(simsiam(capsys, "train", "--dataset", "folder", "--data-dir", tmp_path), str(tmp_path))
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    assert_one_line_error(simsiam(capsys, "train", "--dataset", "folder", "--data-dir", tmp_path), "no images")


def test_help_documents_the_fixed_options(capsys):
    res = simsiam(capsys, "train", "--help")
    assert res.returncode == 0
    for flag in [
        "--run-dir",
        "--epochs",
        "--batch-size",
        "--lr",
        "--width",
        "--subset",
        "--seed",
        "--no-stop-gradient",
        "--no-predictor",
        "--resume",
        "--preset",
        "--data-dir",
    ]:
        assert flag in res.stdout, flag


@pytest.mark.parametrize(
    "command",
    [["train"], ["eval", "knn"], ["eval", "linear"], ["export"], ["embed"], ["report"], ["reproduce"], ["compare"]],
)
def test_every_help_renders(command, capsys):
    res = simsiam(capsys, *command, "--help")
    assert res.returncode == 0 and res.stdout.startswith("usage: simsiam " + " ".join(command))


def test_short_default_run_writes_summary_and_files(tmp_path, capsys):
    """The default heads (2048-d), kNN of the trained and the random-init backbone, the report."""
    run_dir = tmp_path / "run"
    res = simsiam(
        capsys,
        "train",
        "--epochs",
        "1",
        "--subset",
        "256",
        "--batch-size",
        "64",
        "--width",
        "0.125",
        "--run-dir",
        run_dir,
    )
    assert res.returncode == 0, res.stderr
    assert "random init" in res.stdout and "z-std" in res.stdout
    s = json.loads((run_dir / "summary.json").read_text())
    # 64-d features (width 1/8) and 2048-d z, on the 256 images of the subset
    assert (s["rank_backbone_max"], s["rank_z_max"]) == (64, 256)
    assert (
        f"effective rank (no labels needed; 1 = collapsed): features {s['rank_backbone']:.1f} of at most 64, "
        f"z {s['rank_z']:.1f} of at most 256"
    ) in res.stdout
    for key in [
        "method",
        "dataset",
        "epochs",
        "train_seconds",
        "images_per_second",
        "knn_top1",
        "knn_top1_random_init",
        "z_std",
        "z_std_healthy",
        "collapsed",
    ]:
        assert key in s, key
    assert s["method"] == "simsiam" and s["dataset"] == "digits" and s["epochs"] == 1
    assert f"trained {100 * s['knn_top1']:.2f}% vs random init {100 * s['knn_top1_random_init']:.2f}%" in res.stdout
    assert s["z_std_healthy"] == pytest.approx(2048**-0.5)
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["width"] == 0.125 and cfg["subset"] == 256 and cfg["preset"] == "digits"
    metrics = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1] and "lr_groups" in metrics[0]
    assert (run_dir / "checkpoint.pt").exists() and (run_dir / "backbone.pt").exists()
    assert f"{100 * s['knn_top1']:.2f}%" in (run_dir / "report" / "summary.md").read_text()  # the run's report
    assert_picture(run_dir / "report" / "retrieval.png")
    # the same run directory again without --resume refuses, naming the fix
    assert_one_line_error(simsiam(capsys, "train", "--epochs", "1", "--run-dir", run_dir), "--resume")


def test_data_dir_alone_trains_on_a_folder_and_skips_bad_files(tmp_path, capsys):
    data = make_folder(tmp_path / "photos")
    (data / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (data / "blue" / "empty.png").write_bytes(b"")
    run_dir = tmp_path / "run"
    res = simsiam(
        capsys,
        "train",
        "--data-dir",
        data,
        "--image-size",
        "16",
        *TINY,  # its --subset 128 keeps every image of these folders
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--run-dir",
        run_dir,
    )
    assert res.returncode == 0, res.stderr
    assert "skipped 2 unreadable image file(s)" in res.stderr and "broken.jpg" in res.stderr
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["dataset"] == "folder" and s["preset"] == "folder"
    assert s["num_train"] + s["num_test"] == 48  # the two bad files are not counted


def test_flat_folder_trains_without_labels_and_eval_says_it_needs_them(tmp_path, capsys):
    make_folder(tmp_path / "x")
    flat = tmp_path / "x" / "red"  # 24 images, no class sub-folders
    run_dir = tmp_path / "run"
    res = simsiam(
        capsys,
        "train",
        "--data-dir",
        flat,
        "--image-size",
        "16",
        *TINY,
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--run-dir",
        run_dir,
    )
    assert res.returncode == 0, res.stderr
    assert "kNN monitoring is off" in res.stdout
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["knn_top1"] is None and s["num_train"] > 0
    assert_one_line_error(simsiam(capsys, "eval", "knn", run_dir), "needs labelled images")


@pytest.mark.parametrize(
    "size,options,expect",
    [
        (20, [], dict(image_size=32, cifar_stem=True, blur_p=0.0)),  # small images: at least 32, CIFAR recipe
        (40, [], dict(image_size=40, cifar_stem=True, blur_p=0.0)),
        (100, [], dict(image_size=100, cifar_stem=False, blur_p=0.5)),  # the ImageNet recipe, blur kept
        (300, [], dict(image_size=224, cifar_stem=False, blur_p=0.5)),  # capped at 224
        (40, ["--blur-p", "0.3"], dict(image_size=40, cifar_stem=True, blur_p=0.3)),  # a given option wins
        (40, ["--image-size", "48"], dict(image_size=48, cifar_stem=False, blur_p=0.5)),  # nothing chosen
        (40, ["--preset", "stl10"], dict(image_size=96, cifar_stem=False)),  # another preset: its own size
        (40, ["--arch", "resnet50", "--no-cifar-stem"], dict(image_size=40, cifar_stem=False, blur_p=0.0)),
    ],
)
def test_the_folder_preset_takes_its_crop_size_from_the_images(size, options, expect, tmp_path, capsys):
    from simsiam.cli import build_parser, config_from_args

    data = make_folder(tmp_path / "photos", n=3, size=size)  # size x (size + 4): the shorter side is size
    cfg = config_from_args(build_parser().parse_args(["train", "--data-dir", str(data), *options]))
    assert {k: getattr(cfg, k) for k in expect} == expect
    out = capsys.readouterr().out
    chose = "--image-size" not in options and "--preset" not in options
    assert (f"median shorter side is {size} px (6 sampled): --image-size {expect['image_size']}" in out) == chose
