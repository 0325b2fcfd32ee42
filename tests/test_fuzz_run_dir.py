"""Fuzzing run directories: any file a run directory holds, damaged at random (cut short, bytes
overwritten, replaced by random bytes, or one value of its JSON or checkpoint swapped for a random
one), then `train --resume`, `eval knn`, `export`, `report` and `embed` on it. Each ends with a
result or one `simsiam: error:` line, never a traceback, and never touches a file outside the run
directory (and the outputs it was asked to write). Three cases per run file (27 in all), each a
fraction of a second to a few seconds."""

import json
import os
import random
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simsiam import train
from simsiam.cli import main

from conftest import make_folder, tiny_config

RUN_FILES = [
    "config.json",
    "run.json",
    "metrics.jsonl",
    "summary.json",
    "checkpoints.json",
    "checkpoint.pt",
    "checkpoint-000000002.pt",
    "checkpoint-000000004.pt",
    "backbone.pt",
]
COMMANDS = ["resume", "eval knn", "export", "report", "embed"]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A finished tiny run (2 epochs of 2 steps, a checkpoint every 2 steps), a folder of images,
    and files outside both that nothing may touch."""
    root = tmp_path_factory.mktemp("fuzz-run-dir")
    cfg = tiny_config(
        root / "run",
        dim=32,
        pred_dim=8,
        proj_hidden=32,
        subset=64,
        batch_size=32,
        checkpoint_every=2,
        keep_checkpoints=2,
    )
    train(cfg)
    assert sorted(p.name for p in (root / "run").iterdir() if not p.name.startswith(".")) == sorted(RUN_FILES)
    make_folder(root / "images", n=3, size=12)
    (root / "outside").mkdir()
    torch.save({"epoch": 1}, root / "outside" / "checkpoint.pt")
    (root / "outside" / "notes.txt").write_text("keep me")
    return root


def snapshot(folder: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


# --- damage --------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.sampled_from(["", "../outside", "../outside/checkpoint.pt", "/", "checkpoint.pt", "digits", "folder"])
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
tensors = st.builds(
    lambda shape, dtype, fill: torch.full(shape, fill).to(dtype),
    st.lists(st.integers(0, 3), max_size=3).map(tuple),
    st.sampled_from([torch.float32, torch.float16, torch.int64, torch.uint8, torch.bool]),
    st.sampled_from([0.0, 1.0, -3.0, float("nan"), float("inf")]),
)
values = json_values | tensors


KINDS = ["cut", "flip", "random", "value"]


@st.composite
def damage(draw):
    """(how, value, seed, command): how the file is damaged (an index into KINDS), the value swapped
    in ("value"), the seed of the damage's randomness, the command run (an index into COMMANDS).
    The test turns both indices by the file's place in RUN_FILES: derandomized, every file draws
    the same sequence, so that spreads the kinds and commands over the files."""
    kind = draw(st.integers(0, len(KINDS) - 1))
    command = draw(st.integers(0, len(COMMANDS) - 1))
    value = draw(values)
    seed = draw(st.integers(0, 2**16))
    return kind, value, seed, command


def _swap_one(obj, value, rng: random.Random, depth: int = 0):
    """obj with one entry, somewhere down its dicts and lists, replaced by `value`."""
    if isinstance(obj, dict) and obj and depth < 3:
        key = rng.choice(sorted(obj, key=str))
        if rng.random() < 0.5:
            return {**obj, key: _swap_one(obj[key], value, rng, depth + 1)}
        return {**obj, key: value}
    if isinstance(obj, list) and obj and depth < 3:
        i = rng.randrange(len(obj))
        return [*obj[:i], _swap_one(obj[i], value, rng, depth + 1), *obj[i + 1 :]]
    return value


def apply(path: Path, kind: str, value, seed: int) -> None:
    rng = random.Random(seed)
    data = path.read_bytes()
    if kind == "cut":
        path.write_bytes(data[: rng.randrange(len(data) + 1)])
    elif kind == "flip":
        raw = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        path.write_bytes(bytes(raw))
    elif kind == "random":
        path.write_bytes(rng.randbytes(rng.randrange(1, 300)))
    elif path.suffix == ".pt":
        state = torch.load(path, weights_only=True)
        torch.save(_swap_one(state, value, rng), path)
    elif path.suffix == ".jsonl":
        lines = data.decode().splitlines()
        i = rng.randrange(len(lines))
        lines[i] = json.dumps(_swap_one(json.loads(lines[i]), _plain(value), rng))
        path.write_text("\n".join(lines) + "\n")
    else:
        path.write_text(json.dumps(_swap_one(json.loads(data), _plain(value), rng)))


def _plain(value):
    return value.tolist() if torch.is_tensor(value) else value


def command_args(command: str, run: Path, out: Path, images: Path) -> list[str]:
    return {
        "resume": ["train", "--resume", "--run-dir", str(run), "--epochs", "3"],
        "eval knn": ["eval", "knn", str(run), "--out", str(out / "knn.json"), "--device", "cpu"],
        "export": ["export", str(run), "--out", str(out / "backbone.safetensors")],
        "report": ["report", str(run), "--no-embedding-map"],
        "embed": ["embed", str(run), "--data-dir", str(images), "--out", str(out / "feats.npy"), "--projector"],
    }[command]


@pytest.mark.parametrize("name", RUN_FILES)
@settings(
    max_examples=3,  # x 9 files: 27 cases; turned by the file, each command and each kind comes 3 times or more
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=damage())
def test_a_damaged_run_dir_gives_a_result_or_one_line_and_touches_nothing_outside(
    name, case, sandbox, tmp_path_factory, capsys, monkeypatch
):
    i = RUN_FILES.index(name)
    k, value, seed, c = case
    kind, command = KINDS[(k + i) % len(KINDS)], COMMANDS[(c + i) % len(COMMANDS)]
    work = tmp_path_factory.mktemp("case")
    run, out = work / "run", work / "out"
    shutil.copytree(sandbox / "run", run, symlinks=True)
    out.mkdir()
    apply(run / name, kind, value, seed)

    def no_network(*a, **kw):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)  # a config naming cifar10 must not download
    before = snapshot(sandbox)
    capsys.readouterr()
    code = main(command_args(command, run, out, sandbox / "images"))  # any exception fails the test
    err = capsys.readouterr().err
    assert code in (0, 2), (name, kind, command, code, err[-500:])
    errors = [line for line in err.splitlines() if line.startswith("simsiam: error:")]
    if code == 2:
        assert len(errors) == 1, (name, kind, command, err[-1000:])
    else:
        assert not errors
        produced = {
            "eval knn": ["knn.json"],
            "export": ["backbone.safetensors", "backbone.pth"],
            "embed": ["feats.npy"],
        }
        assert all((out / f).exists() for f in produced.get(command, [])), (name, kind, command)
    assert "Traceback" not in err
    assert snapshot(sandbox) == before, (name, kind, command)  # the original run, the images, outside/
    assert sorted(os.listdir(work)) == ["out", "run"]  # nothing written beside the run either
