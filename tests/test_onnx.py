"""`simsiam export --format onnx`: onnxruntime gives torch's features, for any batch size."""

import importlib.util

import pytest
import torch

from simsiam import fit
from simsiam.cli import main
from simsiam.runs import load_backbone

from conftest import tiny_config


def test_onnx_features_match_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    run_dir = tmp_path / "run"
    fit(tiny_config(run_dir, subset=64, batch_size=32, epochs=1))
    out = tmp_path / "export" / "backbone.onnx"
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(out)]) == 0
    assert [p.name for p in out.parent.iterdir()] == ["backbone.onnx"]  # weights inside, no .data file
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ours, cfg = load_backbone(run_dir)
    for n in (1, 5):  # the batch axis is dynamic; the export traced a batch of 2
        x = torch.randn(n, 3, cfg.image_size, cfg.image_size)
        (got,) = session.run(["features"], {"images": x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(got), ours(x), atol=1e-4, rtol=1e-4)
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["arch"] == "resnet18" and meta["image_size"] == "16" and meta["feature_dim"] == "64"


def test_onnx_without_the_extra_names_it(monkeypatch, capsys, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    assert main(["export", str(tmp_path / "run"), "--format", "onnx", "--out", str(tmp_path / "b.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and 'pip install "simsiam[onnx]"' in err and "onnxscript" in err
