"""simsiam duplicates: identical files and near-duplicates, grouped."""

import csv
import shutil

import numpy as np
import pytest
from PIL import Image

from simsiam import duplicates as D
from simsiam import train

from conftest import assert_one_line_error, pattern_folder, simsiam, tiny_config

# The tiny test backbone tells these 32x32 patterns apart only near 1: distinct ones reach a cosine
# of 0.9995, a JPEG (quality 90) copy stays above 0.99996 of its original.
TIGHT = "0.9999"


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "a"
    train(tiny_config(run, subset=256, epochs=1))
    return run


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """60 distinct patterns; JPEG copies of the first five; two byte copies of the eleventh."""
    root = pattern_folder(tmp_path_factory.mktemp("dup") / "photos", 60)
    files = sorted(root.iterdir())
    for p in files[:5]:
        Image.open(p).save(root / f"{p.stem}-copy.jpg", quality=90)
    shutil.copy(files[10], root / "copy-a.png")
    shutil.copy(files[10], root / "sub-copy-b.png")
    return root, files


def test_planted_duplicates_are_found_and_grouped(backbone, planted, tmp_path, capsys):
    root, files = planted
    out, page = tmp_path / "groups.csv", tmp_path / "groups.html"
    res = simsiam(
        capsys, "duplicates", root, "--backbone", backbone, "--threshold", TIGHT, "--out", out, "--html", page
    )
    assert res.returncode == 0, res.stderr
    assert "67 images: 6 groups of duplicates (1 of identical files, 5 near), 13 images in them" in res.stdout
    rows = list(csv.DictReader(out.open()))
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    found = {frozenset(r["path"] for r in g) for g in groups.values()}
    want = {frozenset({str(p), str(root / f"{p.stem}-copy.jpg")}) for p in files[:5]}
    want.add(frozenset({str(files[10]), str(root / "copy-a.png"), str(root / "sub-copy-b.png")}))
    assert found == want
    exact = [g for g in groups.values() if g[0]["kind"] == "exact"]
    assert len(exact) == 1 and len(exact[0]) == 3 and all(float(r["similarity"]) == pytest.approx(1) for r in exact[0])
    assert rows[0]["group"] == "1" and rows[0]["size"] == "3"  # the largest group first
    assert page.read_text().count("<img") == 13


def test_a_folder_without_duplicates_reports_none(backbone, tmp_path, capsys):
    root = pattern_folder(tmp_path / "distinct", 60)
    res = simsiam(capsys, "duplicates", root, "--backbone", backbone, "--threshold", TIGHT)
    assert res.returncode == 0, res.stderr
    assert "60 images: 0 groups of duplicates" in res.stdout
    assert "pairs among nearest neighbours at other thresholds" in res.stdout


def test_an_index_folder_is_read_instead_of_embedding_again(backbone, planted, tmp_path, capsys):
    root, _ = planted
    assert simsiam(capsys, "index", backbone, "--data-dir", root, "--out", tmp_path / "idx").returncode == 0
    res = simsiam(capsys, "duplicates", tmp_path / "idx", "--threshold", TIGHT)
    assert res.returncode == 0, res.stderr
    assert "67 images: 6 groups of duplicates (1 of identical files, 5 near)" in res.stdout


def test_groups_are_chains_of_pairs_with_the_most_central_image_first():
    v = np.array([[1, 0, 0], [0.99, 0.14, 0], [0.96, 0.28, 0], [0, 0, 1], [0, 0.02, 1]], dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    pairs = D.neighbour_pairs(v, k=4)
    groups = D.group(v, ["a", "b", "c", "d", "e"], pairs, threshold=0.98)
    assert [g["members"] for g in groups] == [[1, 0, 2], [3, 4]]  # 0-1 and 1-2 pass, 0-2 (0.96) does not
    assert groups[0]["similarity"][0] == pytest.approx(1) and all(g["kind"] == "near" for g in groups)
    same = D.group(v, ["a", "x", "c", "x", "e"], pairs, threshold=0.99999)  # same bytes join whatever the features
    assert [g["members"] for g in same] == [[1, 3]] or [g["members"] for g in same] == [[3, 1]]


def test_bad_inputs_are_one_line_errors(backbone, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(simsiam(capsys, "duplicates", empty, "--backbone", backbone), "no image files")
    assert_one_line_error(simsiam(capsys, "duplicates", empty), "--backbone")
    assert_one_line_error(simsiam(capsys, "duplicates", tmp_path / "nope", "--backbone", backbone), "nope")
    for bad in ("0", "1.5"):
        res = simsiam(capsys, "duplicates", empty, "--backbone", backbone, "--threshold", bad)
        assert_one_line_error(res, "--threshold")


def test_the_commands_default_threshold_is_the_librarys():
    from simsiam.options import DuplicatesOptions

    assert DuplicatesOptions().threshold == D.THRESHOLD
