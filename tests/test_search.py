"""simsiam index / search: FAISS over a folder's features, stored with its paths and its backbone."""

import csv
import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from simsiam import search as S
from simsiam import train

from conftest import assert_one_line_error, pattern_folder, simsiam, tiny_config


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    train(tiny_config(base / "a", subset=256, epochs=1))
    train(tiny_config(base / "b", subset=256, epochs=1, seed=1))
    return base / "a", base / "b"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return pattern_folder(tmp_path_factory.mktemp("img") / "patterns", 200)


def test_exact_neighbours_match_a_full_sort():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((1000, 16)).astype(np.float32)
    q = v[:7] + 0.1
    want = np.argsort(-(q @ v.T), axis=1)[:, :5]
    assert (S.exact_neighbours(v, q, 5, chunk=97) == want).all()  # chunks that do not divide the size


def test_an_indexed_image_finds_itself_first_and_an_edited_copy_finds_its_original(backbones, images, tmp_path, capsys):
    res = simsiam(capsys, "index", backbones[0], "--data-dir", images, "--out", tmp_path / "idx", "--workers", "0")
    assert res.returncode == 0, res.stderr
    assert "indexed 200 images" in res.stdout and "exact search" in res.stdout
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert meta["count"] == 200 and meta["kind"] == "exact" and meta["dim"] == 64
    # edited copies of five indexed images: a pixel cropped off each side, rescaled, JPEG quality 30
    queries = tmp_path / "queries"
    queries.mkdir()
    originals = sorted(images.iterdir())[10:15]
    for p in originals:
        im = Image.open(p)
        im = im.crop((1, 1, 31, 31)).resize((32, 32))
        im.save(queries / f"edited-{p.stem}.jpg", quality=30)
    out, page = tmp_path / "hits.csv", tmp_path / "hits.html"
    res = simsiam(capsys, "search", tmp_path / "idx", originals[0], queries, "-k", "5", "--out", out, "--html", page)
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(out.open()))
    by_query: dict[str, list[str]] = {}
    for r in rows:
        by_query.setdefault(r["query"], []).append(r["path"])
    assert len(by_query) == 6 and all(len(v) == 5 for v in by_query.values())
    assert by_query[str(originals[0])][0] == str(originals[0])  # itself first
    for p in originals:
        assert str(p) in by_query[str(queries / f"edited-{p.stem}.jpg")], p  # the original in the top 5
    assert float(rows[0]["score"]) == pytest.approx(1.0, abs=1e-5)
    html = page.read_text()
    assert html.count("<img") == 6 * 6 and "data:image/jpeg;base64," in html  # query + 5 neighbours, embedded


def test_hnsw_recall_is_measured_on_held_out_queries_against_exact_search(monkeypatch):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((50, 32))
    v = (centres[rng.integers(0, 50, 3000)] + 0.5 * rng.standard_normal((3000, 32))).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    seen = []
    monkeypatch.setattr(S, "EF_SEARCH", (1, 2, 512))  # efSearch 1 cannot reach the target; 512 does
    index, info, order = S.build(v, "hnsw", log=seen.append)
    assert info["kind"] == "hnsw" and len(seen) >= 2 and info["ef_search"] == 512
    assert sorted(order) == list(range(3000)) and (S.vectors_of(index) == v[order]).all()  # id i is v[order[i]]
    held = info["recall_queries"]
    assert held == 300  # a tenth of the vectors, at most RECALL_QUERIES
    queries, base = v[order[-held:]], v[order[:-held]]
    assert info["recall_at_10"] >= S.RECALL_TARGET
    truth = S.exact_neighbours(base, queries, 10)
    index.hnsw.efSearch = 1
    _, found = index.search(queries, 10)  # the held-out queries now find themselves (added last)...
    found = [[i for i in f if i < len(base)] for f in found]  # ...which the measure never counts
    low = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found)])
    assert low < S.RECALL_TARGET  # the measure moves with the index's quality: efSearch 1 is worse


def test_add_embeds_only_the_new_images_and_turns_exact_into_hnsw_past_the_limit(
    backbones, images, tmp_path, capsys, monkeypatch
):
    extra = pattern_folder(tmp_path / "more", 40, seed=1)
    assert simsiam(capsys, "index", backbones[0], "--data-dir", images, "--out", tmp_path / "i").returncode == 0
    before, paths, _ = S.load(tmp_path / "i")
    old = S.vectors_of(before)
    monkeypatch.setattr(S, "EXACT_MAX", 220)
    embedded = []
    real = S.embed_stream
    monkeypatch.setattr(S, "embed_stream", lambda b, c, p, *a, **k: embedded.append(list(p)) or real(b, c, p, *a, **k))
    res = simsiam(capsys, "index", "--add", extra, "--out", tmp_path / "i")
    assert res.returncode == 0, res.stderr
    assert "added 40 images" in res.stdout and "HNSW" in res.stdout
    assert embedded == [sorted(str(p) for p in extra.iterdir())]  # the 200 indexed images were not recomputed
    after, paths2, meta = S.load(tmp_path / "i")
    assert meta["kind"] == "hnsw" and meta["count"] == 240 and sorted(paths2) == sorted(paths + embedded[0])
    now = dict(zip(paths2, S.vectors_of(after)))
    assert all((now[p] == v).all() for p, v in zip(paths, old))  # the indexed vectors, kept as they were
    fresh = tmp_path / "fresh"
    S.create(backbones[0], extra, fresh, progress=False)
    _, fresh_paths, _ = S.load(fresh)
    assert np.allclose([now[p] for p in fresh_paths], S.vectors_of(S.load(fresh)[0]), atol=1e-6)
    res = simsiam(capsys, "index", "--add", extra, "--out", tmp_path / "i")
    assert res.returncode == 0 and "already in the index" in res.stdout
    # an HNSW index growing: the new vectors, before they join, measure its recall again
    more = pattern_folder(tmp_path / "more2", 60, seed=2)
    res = simsiam(capsys, "index", "--add", more, "--out", tmp_path / "i")
    assert res.returncode == 0 and "60 held-out queries" in res.stdout
    assert S.load(tmp_path / "i")[2]["recall_queries"] == 60 and S.load(tmp_path / "i")[2]["count"] == 300


def test_a_query_through_another_backbone_is_refused(backbones, images, tmp_path, capsys):
    assert simsiam(capsys, "index", backbones[0], "--data-dir", images, "--out", tmp_path / "i").returncode == 0
    one = sorted(images.iterdir())[0]
    res = simsiam(capsys, "search", tmp_path / "i", one, "--backbone", backbones[1])
    assert_one_line_error(res, "another backbone", "cannot be compared")
    res = simsiam(capsys, "index", "--add", images, "--out", tmp_path / "i", backbones[1])
    assert_one_line_error(res, "another backbone")


def test_bad_inputs_are_one_line_errors(backbones, images, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(
        simsiam(capsys, "index", backbones[0], "--data-dir", empty, "--out", tmp_path / "x"), "no image files"
    )
    assert_one_line_error(
        simsiam(capsys, "index", backbones[0], "--data-dir", tmp_path / "nope", "--out", tmp_path / "x"), "nope"
    )
    assert_one_line_error(simsiam(capsys, "search", tmp_path / "x", images), "not an index")
    assert_one_line_error(simsiam(capsys, "index", "--data-dir", images, "--out", tmp_path / "x"), "RUN_DIR")
    assert simsiam(capsys, "index", backbones[0], "--data-dir", images, "--out", tmp_path / "i").returncode == 0
    assert_one_line_error(
        simsiam(capsys, "index", backbones[0], "--data-dir", images, "--out", tmp_path / "i"), "already holds an index"
    )
    assert_one_line_error(simsiam(capsys, "search", tmp_path / "i", tmp_path / "missing.png"), "does not exist")
    assert_one_line_error(simsiam(capsys, "search", tmp_path / "i", empty), "no image files")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    assert_one_line_error(simsiam(capsys, "search", tmp_path / "i", bad), "could be read")


def test_the_help_states_the_librarys_exact_search_limit():
    from simsiam.options import IndexOptions

    kind = next(f for f in dataclasses.fields(IndexOptions) if f.name == "kind")
    assert f"up to {S.EXACT_MAX} images" in kind.metadata["help"]
