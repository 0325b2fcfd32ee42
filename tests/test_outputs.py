"""eval knn / eval linear / export / embed from a run directory, and the official checkpoint format."""

import csv
import json

import numpy as np
import pytest
import torch
import torchvision

from simsiam import build_backbone, train
from simsiam.cli import main
from simsiam.runs import load_backbone

from conftest import make_folder, tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "digits"
    summary = train(tiny_config(run_dir, subset=256, epochs=1))
    return run_dir, summary


def test_eval_knn_matches_the_training_monitor(run, capsys):
    run_dir, summary = run
    assert main(["eval", "knn", str(run_dir)]) == 0
    res = json.loads((run_dir / "eval_knn.json").read_text())
    assert res["top1"] == pytest.approx(summary["knn_top1"], abs=0.006)  # same backbone, same data, same k/T
    assert 0 <= res["top1"] <= res["top5"] <= 1 and len(res["per_class"]) == 10
    assert res["k"] == 200 and res["num_queries"] == summary["num_test"]
    assert "knn top-1" in capsys.readouterr().out


def test_eval_linear_fast_probes_the_runs_backbone_and_leaves_it_unchanged(run, monkeypatch):
    import sys

    import simsiam.evaluate as E

    run_dir, _ = run
    seen = {}
    real = E.linear_report

    def spy(backbone, *a, **kw):  # the module `eval linear` probes, before and after the probe
        seen["before"] = E.fingerprint(backbone)
        res = real(backbone, *a, **kw)
        seen["after"] = E.fingerprint(backbone)
        return res

    for name, module in list(sys.modules.items()):  # wherever `eval linear` finds linear_report
        if name.startswith("simsiam") and getattr(module, "linear_report", None) is real:
            monkeypatch.setattr(module, "linear_report", spy)
    out = run_dir / "lin.json"
    assert main(["eval", "linear", str(run_dir), "--fast", "--epochs", "20", "--out", str(out)]) == 0
    assert seen["before"] == seen["after"] == E.fingerprint(load_backbone(run_dir)[0])  # the run's weights, unmoved
    res = json.loads(out.read_text())
    assert res["protocol"] == "linear-fast"
    assert res["top1"] > 0.3  # 10 classes: far above chance even for a 1-epoch backbone


def test_eval_on_another_folder_and_checkpoint_file(run, tmp_path):
    run_dir, _ = run
    data = make_folder(tmp_path / "photos", n=12)
    assert main(["eval", "knn", str(run_dir / "checkpoint.pt"), "--data-dir", str(data), "--k", "5"]) == 0
    res = json.loads((run_dir / "checkpoint.eval_knn.json").read_text())
    assert res["dataset"] == "folder" and res["num_bank"] + res["num_queries"] == 24 and "top5" not in res


def test_export_loads_into_torchvision_with_same_features(tmp_path):
    run_dir = tmp_path / "wide"
    train(tiny_config(run_dir, subset=64, batch_size=32, epochs=1, width=1.0))
    out = tmp_path / "export" / "backbone.safetensors"
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["arch"] == "resnet18" and meta["cifar_stem"] == "true" and meta["torchvision_loadable"] == "true"
    for sd in (load_file(str(out)), torch.load(out.with_suffix(".pth"))):
        tv = torchvision.models.resnet18()
        tv.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # the CIFAR stem, as the metadata says
        tv.maxpool = torch.nn.Identity()
        res = tv.load_state_dict(sd, strict=False)
        assert sorted(res.missing_keys) == ["fc.bias", "fc.weight"] and not res.unexpected_keys
        tv.fc = torch.nn.Identity()
        ours, _ = load_backbone(run_dir)
        x = torch.randn(4, 3, 16, 16)
        with torch.no_grad():
            assert (tv.eval()(x) - ours(x)).abs().max() < 1e-5


def official_checkpoint(path, arch="resnet18"):
    """A file in facebookresearch/simsiam's format: encoder = ResNet with fc = projector."""
    torch.manual_seed(0)
    backbone, dim = build_backbone(arch)
    sd = {f"module.encoder.{k}": v for k, v in backbone.state_dict().items()}
    sd.update(
        {
            "module.encoder.fc.0.weight": torch.randn(dim, dim),
            "module.encoder.fc.6.bias": torch.zeros(dim),
            "module.predictor.0.weight": torch.randn(128, dim),
        }
    )
    torch.save({"epoch": 100, "arch": arch, "state_dict": sd, "optimizer": {}}, path)
    return backbone


def test_official_checkpoint_loads_and_evaluates(tmp_path, capsys):
    ckpt = tmp_path / "checkpoint_0099.pth.tar"
    ref = official_checkpoint(ckpt)
    backbone, cfg = load_backbone(ckpt)
    assert cfg.arch == "resnet18" and not cfg.cifar_stem and cfg.stored_size == 256  # Resize(256) + CenterCrop(224)
    for k, v in ref.state_dict().items():
        assert torch.equal(backbone.state_dict()[k], v), k
    data = make_folder(tmp_path / "photos", n=10, size=40)
    assert main(["eval", "knn", str(ckpt), "--data-dir", str(data), "--k", "3"]) == 0
    assert json.loads((tmp_path / "checkpoint_0099.pth.eval_knn.json").read_text())["num_bank"] == 16
    # without --data-dir the format does not say what data it saw: a one-line error
    assert main(["eval", "knn", str(ckpt)]) == 2
    assert "give --data-dir" in capsys.readouterr().err


def test_embed_writes_features_and_paths(run, tmp_path):
    run_dir, _ = run
    data = make_folder(tmp_path / "photos", n=5)
    (data / "red" / "nested").mkdir()
    (data / "red" / "nested" / "bad.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "emb.npy"
    assert (
        main(["embed", str(run_dir), "--data-dir", str(data), "--out", str(out), "--projector", "--batch-size", "4"])
        == 0
    )
    feats = np.load(out)
    rows = list(csv.DictReader(open(tmp_path / "emb.csv")))
    assert feats.shape == (10, 64) and np.isfinite(feats).all()  # width 1/8 ResNet-18: 64-d pool features
    assert len(rows) == 10 and all("bad.jpg" not in r["path"] for r in rows)
    assert rows == sorted(rows, key=lambda r: r["path"])
    assert np.load(tmp_path / "emb.projector.npy").shape == (10, 64)
    # the same image gives the same feature as the library's own extraction path
    backbone, cfg = load_backbone(run_dir)
    from simsiam.data.augment import prepare
    from simsiam.data.datasets import decode_image

    x = torch.from_numpy(decode_image(rows[0]["path"], cfg.image_size)).permute(2, 0, 1)[None]
    with torch.no_grad():
        np.testing.assert_allclose(
            backbone(prepare(x, cfg.image_size, cfg.mean, cfg.std)).numpy()[0], feats[0], rtol=1e-4, atol=1e-5
        )


def test_prepare_is_torchvision_center_crop_of_the_stored_images():
    from torchvision.transforms import functional as TF

    from simsiam.data.augment import prepare

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    for h, w in [(24, 24), (23, 25), (16, 16)]:  # odd margins: torchvision rounds the offset
        x = torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8)
        ref = TF.normalize(TF.center_crop(x.float() / 255, [16, 16]), mean, std)
        assert torch.equal(prepare(x, 16, mean, std), ref), (h, w)
    small = torch.randint(0, 256, (1, 3, 12, 14), dtype=torch.uint8)  # below the crop: resized up first
    assert prepare(small, 16, mean, std).shape == (1, 3, 16, 16)


def test_load_size_trains_on_larger_decodes_and_evaluates_on_the_centre_crop(tmp_path):
    """--load-size 24 --image-size 16: images are stored at 24 px, the network sees 16 px crops
    in training and the 16 px centre (Resize(24) + CenterCrop(16)) in kNN, embed and export."""
    from safetensors import safe_open

    from simsiam.data import load_splits
    from simsiam.data.augment import normalize
    from simsiam.evaluate import extract_features

    data = make_folder(tmp_path / "photos", n=8, size=40)
    cfg = tiny_config(
        tmp_path / "run",
        preset="folder",
        data_dir=str(data),
        image_size=16,
        load_size=24,
        batch_size=8,
        epochs=1,
        cache_dir=str(tmp_path / "cache"),
    )
    summary = train(cfg)
    assert np.isfinite(summary["loss"])
    train_set, _ = load_splits(cfg)
    assert train_set.images.shape[-2:] == (24, 24)
    backbone, loaded = load_backbone(tmp_path / "run")
    assert (loaded.image_size, loaded.stored_size) == (16, 24)
    x = train_set.images[:4]
    with torch.no_grad():
        centre = backbone.eval()(normalize(x[..., 4:20, 4:20].float() / 255, cfg.mean, cfg.std))
    feats = extract_features(backbone, x, cfg.image_size, cfg.mean, cfg.std, l2=False)
    torch.testing.assert_close(feats, centre, rtol=1e-4, atol=1e-5)
    # embed decodes at the load size too, so a file gets the feature the evaluation path gives it
    out = tmp_path / "emb.npy"
    assert main(["embed", str(tmp_path / "run"), "--data-dir", str(data / "blue"), "--out", str(out)]) == 0
    from simsiam.data.datasets import decode_image

    first = torch.from_numpy(decode_image(str(data / "blue" / "0.png"), 24)).permute(2, 0, 1)[None]
    np.testing.assert_allclose(
        np.load(out)[0], extract_features(backbone, first, 16, cfg.mean, cfg.std, l2=False)[0], rtol=1e-4, atol=1e-5
    )
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "b.safetensors")]) == 0
    with safe_open(str(tmp_path / "b.safetensors"), "pt") as f:
        assert f.metadata()["eval_transform"].startswith("Resize(24) + CenterCrop(16)")


def official_lincls_load(path, arch):
    """facebookresearch/simsiam main_lincls.py --pretrained, its loading written out: torch.load,
    keep module.encoder.* but fc under their plain names, strict=False, only fc.* missing."""
    model = torchvision.models.__dict__[arch]()
    state_dict = torch.load(path, map_location="cpu")["state_dict"]  # weights_only: tensors and plain types
    for k in list(state_dict.keys()):
        if k.startswith("module.encoder") and not k.startswith("module.encoder.fc"):
            state_dict[k[len("module.encoder.") :]] = state_dict[k]
        del state_dict[k]
    msg = model.load_state_dict(state_dict, strict=False)
    assert set(msg.missing_keys) == {"fc.weight", "fc.bias"}
    return model


def official_simsiam(arch, dim, pred_dim):
    """facebookresearch/simsiam builder.SimSiam's modules, rebuilt: encoder = ResNet(num_classes=dim)
    whose fc becomes the 3-layer projector, and the 2-layer predictor."""
    nn = torch.nn
    encoder = torchvision.models.__dict__[arch](num_classes=dim, zero_init_residual=True)
    prev = encoder.fc.weight.shape[1]
    encoder.fc = nn.Sequential(
        nn.Linear(prev, prev, bias=False),
        nn.BatchNorm1d(prev),
        nn.ReLU(inplace=True),
        nn.Linear(prev, prev, bias=False),
        nn.BatchNorm1d(prev),
        nn.ReLU(inplace=True),
        encoder.fc,
        nn.BatchNorm1d(dim, affine=False),
    )
    predictor = nn.Sequential(
        nn.Linear(dim, pred_dim, bias=False), nn.BatchNorm1d(pred_dim), nn.ReLU(inplace=True), nn.Linear(pred_dim, dim)
    )
    return nn.ModuleDict({"encoder": encoder, "predictor": predictor})


def test_export_official_loads_in_main_lincls_and_in_the_official_model(tmp_path, capsys):
    from simsiam import checkpoint
    from simsiam.export import export_official
    from simsiam.methods import build_model

    run_dir = tmp_path / "imagenet-stem"
    cfg = tiny_config(
        run_dir,
        arch="resnet18",
        width=1.0,
        cifar_stem=False,
        dim=32,
        pred_dim=8,
        proj_layers=3,  # the official projector
        proj_hidden=512,
        subset=64,
        batch_size=32,
        epochs=1,
        image_size=32,
    )
    train(cfg)
    out = tmp_path / "checkpoint_0001.pth.tar"
    assert main(["export", str(run_dir), "--format", "official", "--out", str(out)]) == 0
    assert "main_lincls.py --pretrained" in capsys.readouterr().out
    ours, _ = load_backbone(run_dir)
    lincls = official_lincls_load(out, "resnet18")
    lincls.fc = torch.nn.Identity()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(lincls.eval()(x), ours.eval()(x))
    # every key fits the official SimSiam model itself (strict), and its projector is ours
    saved = torch.load(out, map_location="cpu")
    assert saved["arch"] == "resnet18" and saved["epoch"] == 1
    official = official_simsiam("resnet18", 32, 8)
    official.load_state_dict({k[len("module.") :]: v for k, v in saved["state_dict"].items()}, strict=True)
    model = build_model(cfg)
    model.load_state_dict(checkpoint.plain_keys(checkpoint.load_latest(run_dir).model))
    model.eval(), official.eval()
    with torch.no_grad():
        z = official["encoder"](x)
        torch.testing.assert_close(z, model.projector(model.backbone(x)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(official["predictor"](z), model.predictor(z), rtol=1e-5, atol=1e-5)
    # and our own reader takes it back
    back, _ = load_backbone(out)
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert export_official(run_dir / "checkpoint.pt", tmp_path / "bare.pth.tar")  # a file: the backbone alone
    assert not any(".fc." in k or "predictor" in k for k in torch.load(tmp_path / "bare.pth.tar")["state_dict"])
    assert "the file holds the backbone alone" in capsys.readouterr().err
    official_lincls_load(tmp_path / "bare.pth.tar", "resnet18")  # which main_lincls.py loads all the same


def test_export_official_refuses_what_main_lincls_cannot_build(run, tmp_path, capsys):
    run_dir, _ = run  # the CIFAR stem at width 1/8
    assert main(["export", str(run_dir), "--format", "official", "--out", str(tmp_path / "x.pth.tar")]) == 2
    err = capsys.readouterr().err
    assert "resnet18 at width 0.125" in err and "--format safetensors" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.pth.tar").exists()
