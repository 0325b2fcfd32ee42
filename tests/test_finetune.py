"""eval finetune: SimCLR's semi-supervised protocol — the subset (balanced, reproducible, in a file
any backbone can reuse), the fine-tuning (the backbone moves), and the from-scratch baseline on
the very same batches."""

import json

import pytest
import torch

import simsiam.finetune as FT
from simsiam import train
from simsiam.cli import main
from simsiam.errors import ConfigError, DataError
from simsiam.evaluate import fingerprint
from simsiam.runs import load_backbone

from conftest import make_folder, tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "digits"
    train(tiny_config(run_dir, epochs=1))
    return run_dir


def test_the_subset_is_class_balanced_and_reproducible_from_its_seed():
    labels = torch.tensor([0] * 200 + [1] * 100 + [2] * 30)  # uneven classes: the same share of each
    idx = FT.balanced_subset(labels, 3, fraction=0.1, seed=0)
    assert torch.bincount(labels[idx]).tolist() == [20, 10, 3] and len(set(idx.tolist())) == len(idx)
    assert torch.equal(idx, FT.balanced_subset(labels, 3, fraction=0.1, seed=0))
    assert not torch.equal(idx, FT.balanced_subset(labels, 3, fraction=0.1, seed=1))
    assert torch.bincount(labels[FT.balanced_subset(labels, 3, fraction=0.001)]).tolist() == [1, 1, 1]  # >= 1
    assert torch.bincount(labels[FT.balanced_subset(labels, 3, per_class=7, seed=3)]).tolist() == [7, 7, 7]
    with pytest.raises(ConfigError, match="class 2 has only 30 train images"):
        FT.balanced_subset(labels, 3, per_class=31)
    with pytest.raises(ConfigError, match="one of"):
        FT.balanced_subset(labels, 3)


def test_a_subset_file_reads_back_by_name_by_absolute_path_and_by_simclr_style_file_name(tmp_path):
    root = "/data/photos"
    names = ["train/cat/001.jpg", "train/cat/002.jpg", "train/dog/001.jpg", "train/dog/777.jpg"]
    f = tmp_path / "subset.txt"
    FT.write_subset(f, torch.tensor([1, 3]), names, "2 of 4")
    assert f.read_text().splitlines() == [f"{FT.SUBSET_HEADER}: 2 of 4", "train/cat/002.jpg", "train/dog/777.jpg"]
    assert FT.read_subset(f, names, root).tolist() == [1, 3]
    f.write_text(f"{root}/train/cat/001.jpg\n\n777.jpg\n# a comment\n")  # absolute; a unique bare name
    assert FT.read_subset(f, names, root).tolist() == [0, 3]
    f.write_text("001.jpg\n")  # two files of that name: which one is not known
    with pytest.raises(DataError, match=r"1 of its images are not in this train split \(e.g. '001.jpg'\)"):
        FT.read_subset(f, names, root)
    with pytest.raises(DataError, match="does not exist"):
        FT.read_subset(tmp_path / "none.txt", names, root)
    f.write_text("# nothing\n")
    with pytest.raises(DataError, match="names no image"):
        FT.read_subset(f, names, root)


def test_finetune_moves_the_backbone_and_scratch_sees_the_same_batches(run, tmp_path, monkeypatch, capsys):
    seen: dict[str, list] = {"pretrained": [], "random": []}
    real = FT.Augment

    class Spy(real):  # every batch of crops the model is given
        def __call__(self, x, gen):
            out = super().__call__(x, gen)
            seen[which].append(out.clone())
            return out

    monkeypatch.setattr(FT, "Augment", Spy)
    which = "pretrained"
    common = ["--labels-per-class", "3", "--epochs", "2", "--batch-size", "16", "--device", "cpu"]
    assert main(["eval", "finetune", str(run), *common]) == 0
    out = capsys.readouterr().out
    res = json.loads((run / "eval_finetune.json").read_text())
    assert res["protocol"] == "finetune" and res["init"] == "pretrained" and res["backbone_changed"] is True
    assert res["num_labeled"] == 30 and res["steps"] == 4 and res["epochs"] == 2 and 0 <= res["top1"] <= 1
    assert "batch 16, lr 0.05 x 16/256" in res["optimizer"] and len(res["per_class"]) == 10
    subset = run / "finetune-subset-3-per-class-seed0.txt"
    assert res["subset_file"] == str(subset) and subset.exists() and "--subset-file" in out
    assert len([ln for ln in subset.read_text().splitlines() if not ln.startswith("#")]) == 30

    which = "random"
    assert main(["eval", "finetune", str(run), "--from-scratch", "--subset-file", str(subset), *common[2:]]) == 0
    scratch = json.loads((run / "eval_finetune_scratch.json").read_text())
    assert scratch["init"] == "random" and scratch["subset_sha256"] == res["subset_sha256"]
    assert scratch["label_fraction"] is None and scratch["labels_per_class"] is None  # the file said which
    assert len(seen["pretrained"]) == len(seen["random"]) == 4
    for a, b in zip(seen["pretrained"], seen["random"]):
        assert torch.equal(a, b)  # identical images, crops and order
    assert res["top1"] != scratch["top1"]  # different weights: not the same run twice
    assert fingerprint(load_backbone(run)[0]) == fingerprint(load_backbone(run)[0])  # the run itself untouched


def test_the_subset_file_of_a_folder_names_its_files(tmp_path):
    data = make_folder(tmp_path / "photos", n=12, size=24)
    run_dir = tmp_path / "run"
    train(tiny_config(run_dir, dataset="folder", data_dir=str(data), subset=None, batch_size=8, epochs=1))
    out = tmp_path / "new" / "folder" / "ft.json"  # created, for the subset file too
    assert main(["eval", "finetune", str(run_dir), "--label-fraction", "0.5", "--epochs", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    lines = [ln for ln in open(res["subset_file"]).read().splitlines() if not ln.startswith("#")]
    assert res["num_labeled"] == len(lines) > 0 and all((data / ln).is_file() for ln in lines)
    assert res["label_fraction"] == 0.5 and res["subset_file"].endswith("finetune-subset-0.5-seed0.txt")


def test_finetune_bad_inputs_are_one_line_errors(run, tmp_path, capsys):
    for argv, msg in [
        ([], "give one of --label-fraction F, --labels-per-class K or --subset-file FILE"),
        (["--label-fraction", "1.5"], "--label-fraction"),
        (["--labels-per-class", "500"], "has only"),
        (["--subset-file", str(tmp_path / "missing.txt")], "does not exist"),
    ]:
        assert main(["eval", "finetune", str(run), *argv]) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, err


def test_save_writes_a_classifier_that_gives_the_reported_top1(run, tmp_path):
    import safetensors.torch as st
    from safetensors import safe_open

    from simsiam.backbones import build_backbone
    from simsiam.data import labeled_splits
    from simsiam.evaluate import pooled_features
    from simsiam.evaluation import evaluate_finetune

    model = tmp_path / "models" / "digits-ft.safetensors"
    res = evaluate_finetune(
        run,
        labels_per_class=3,
        epochs=2,
        batch_size=16,
        device="cpu",
        save=str(model),
        out=tmp_path / "r.json",
        progress=False,
    )
    assert res.model_file == str(model) and json.loads((tmp_path / "r.json").read_text())["model_file"] == str(model)
    state = st.load_file(model)
    with safe_open(model, "pt") as f:
        meta = f.metadata()
    _, cfg = load_backbone(run)
    assert json.loads(meta["classes"]) == [str(i) for i in range(10)] and meta["arch"] == cfg.arch
    backbone, dim = build_backbone(cfg.arch, cfg.cifar_stem, cfg.width, image_size=cfg.image_size)
    backbone.load_state_dict({k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")})
    head = torch.nn.Linear(dim, 10)
    head.load_state_dict({"weight": state["head.weight"], "bias": state["head.bias"]})
    assert not torch.equal(state["backbone.conv1.weight"], load_backbone(run)[0].state_dict()["conv1.weight"])
    _, test = labeled_splits(cfg)
    with torch.no_grad():
        scores = head(pooled_features(backbone.eval(), test, cfg.image_size, cfg.mean, cfg.std))
    assert (scores.argmax(1) == test.labels).float().mean().item() == pytest.approx(res.top1, abs=1e-6)
