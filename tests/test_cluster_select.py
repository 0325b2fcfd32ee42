"""simsiam cluster (k-means pseudo-labels) and simsiam select (what to label first)."""

import csv

import numpy as np
import pytest

from simsiam import cluster as C
from simsiam import select as L
from simsiam import train

from conftest import assert_one_line_error, make_folder, simsiam, tiny_config


def blobs(k: int = 6, per: int = 40, d: int = 16, seed: int = 0, spread: float = 0.15):
    """k well-separated groups of unit vectors, and the group of each."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d))
    groups = np.repeat(np.arange(k), per)
    v = centres[groups] / np.linalg.norm(centres[groups], axis=1, keepdims=True)
    v = v + spread * rng.standard_normal(v.shape) / np.sqrt(d)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32), groups


@pytest.mark.parametrize("strategy", L.STRATEGIES)
def test_each_strategy_picks_n_distinct_images_the_same_for_a_seed(strategy):
    v, _ = blobs()
    picks = L.choose(v, 17, strategy, seed=3)
    assert len(picks) == 17 == len(set(picks)) and all(0 <= i < len(v) for i in picks)
    assert L.choose(v, 17, strategy, seed=3) == picks
    if strategy != "typiclust":  # k-means may well land on the same clusters from another seed
        assert L.choose(v, 17, strategy, seed=4) != picks


def test_typiclust_picks_the_densest_image_of_each_blob():
    v, groups = blobs(k=6)
    picks = L.choose(v, 6, "typiclust")
    assert sorted(groups[picks]) == list(range(6))  # one per blob
    for i in picks:  # and within its blob, the most typical one
        members = np.flatnonzero(groups == groups[i])
        assert i == members[np.argmax(L.typicality(v[members]))]


def test_kcenter_covers_every_blob_and_random_is_a_plain_draw():
    v, groups = blobs(k=6)
    assert sorted(groups[L.choose(v, 6, "kcenter")]) == list(range(6))
    rng = np.random.default_rng(5)
    assert L.choose(v, 6, "random", seed=5) == [int(i) for i in rng.choice(len(v), size=6, replace=False)]


def test_typicality_is_the_inverse_mean_distance_to_the_nearest_others():
    m = np.sqrt(0.5)
    x = np.array([[1, 0, 0], [0, 1, 0], [m, m, 0]], dtype=np.float32)  # e1, e2 and their bisector
    between = np.sqrt(2 - 2 * m)  # |e1 - bisector|
    want = [1 / ((np.sqrt(2) + between) / 2), 1 / ((np.sqrt(2) + between) / 2), 1 / between]
    assert L.typicality(x) == pytest.approx(want, rel=1e-5)
    rng = np.random.default_rng(0)
    dense = np.array([1.0, 0, 0]) + 0.05 * rng.standard_normal((50, 3))
    x = np.concatenate([dense, [[0.0, 0.0, 1.0]]]).astype(np.float32)  # and one image far from them
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert np.argmin(L.typicality(x)) == 50


def test_kmeans_finds_the_blobs_and_the_silhouette_their_number():
    from sklearn.metrics import adjusted_rand_score

    v, groups = blobs(k=5)
    labels, sims = C.kmeans(v, 5)
    assert adjusted_rand_score(groups, labels) == pytest.approx(1.0)
    assert sims.shape == (len(v),) and (sims > 0.8).all()
    scores = C.silhouettes(v, [2, 3, 4, 5, 6, 7, 8])
    assert max(scores, key=lambda k: scores[k]) == 5


@pytest.fixture(scope="module")
def folder_and_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("cs")
    train(tiny_config(base / "run", subset=256, epochs=1))
    return make_folder(base / "photos", classes=("red", "green", "blue"), n=20), base / "run"


def test_cluster_writes_pseudo_labels_a_gallery_and_scores_against_the_sub_folders(folder_and_run, tmp_path, capsys):
    folder, run = folder_and_run
    out, page = tmp_path / "c.csv", tmp_path / "c.html"
    res = simsiam(capsys, "cluster", folder, "--backbone", run, "--k-max", "6", "--out", out, "--html", page)
    assert res.returncode == 0, res.stderr
    assert "silhouette (cosine) by K: 2:" in res.stdout and "against the 3 sub-folders" in res.stdout
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 60 and len({r["path"] for r in rows}) == 60
    k = len({r["cluster"] for r in rows})
    assert 2 <= k <= 6 and f"in {k} clusters" in res.stdout
    first = [r for r in rows if r["rank_in_cluster"] == "1"]
    assert len(first) == k  # the most typical of each cluster: the highest similarity to its centre
    for f in first:
        same = [float(r["similarity_to_centroid"]) for r in rows if r["cluster"] == f["cluster"]]
        assert float(f["similarity_to_centroid"]) == max(same)
    assert page.read_text().count("<h2>") == k
    res = simsiam(capsys, "cluster", folder, "--backbone", run, "-k", "3")
    assert res.returncode == 0 and "in 3 clusters" in res.stdout and "silhouette" not in res.stdout


def test_select_writes_the_images_to_label_first(folder_and_run, tmp_path, capsys):
    folder, run = folder_and_run
    out = tmp_path / "s.csv"
    res = simsiam(
        capsys, "select", folder, "--backbone", run, "--budget", "5", "--out", out, "--html", tmp_path / "s.html"
    )
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(out.open()))
    assert [r["order"] for r in rows] == ["1", "2", "3", "4", "5"] and len({r["path"] for r in rows}) == 5
    assert "5 of 60 images to label first (typiclust, seed 0)" in res.stdout


def test_bad_inputs_are_one_line_errors(folder_and_run, tmp_path, capsys):
    folder, run = folder_and_run
    assert_one_line_error(simsiam(capsys, "select", folder, "--backbone", run, "--budget", "61"), "--budget 61", "60")
    assert_one_line_error(simsiam(capsys, "select", folder, "--backbone", run), "--budget")
    assert_one_line_error(simsiam(capsys, "select", folder, "--backbone", run, "--budget", "0"), "--budget")
    assert_one_line_error(simsiam(capsys, "cluster", folder, "--backbone", run, "-k", "61"), "-k 61")
    res = simsiam(capsys, "cluster", folder, "--backbone", run, "--k-min", "5", "--k-max", "3")
    assert_one_line_error(res, "--k-min 5 --k-max 3")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(simsiam(capsys, "cluster", empty, "--backbone", run), "no image files")
    assert_one_line_error(simsiam(capsys, "select", folder, "--budget", "3"), "--backbone")
