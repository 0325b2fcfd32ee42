"""The run directory cannot lose or poison a checkpoint, and nothing in it is trusted: a kill between
any two file-system calls of the checkpoint rotation leaves a run that resumes from the newest
complete checkpoint; a manifest that disagrees with the disk (or names files elsewhere) is repaired,
never followed; a diverging run never writes a non-finite checkpoint; a full disk at the end leaves
no torn backbone.pt; a damaged run file is one line, never a traceback."""

import errno
import json
import os
import shutil

import pytest
import torch

from simsiam import checkpoint, train
from simsiam.checkpoint import numbered
from simsiam.cli import main
from simsiam.errors import TrainingError

from conftest import make_folder, tiny_config


class Killed(BaseException):
    """The process dies here: no except clause of simsiam's catches it, no clean-up runs."""


class KillAt:
    """Stands in for checkpoint.py's `os`: the n-th call that changes the disk (create, fsync, link,
    rename, unlink) never happens, the process 'dies' just before it."""

    CHANGES = {"open", "fsync", "link", "replace", "unlink"}

    def __init__(self, n: int):
        self.n, self.calls = n, []

    def __getattr__(self, name):
        real = getattr(os, name)
        if name not in self.CHANGES:
            return real

        def call(*args, **kw):
            if name == "open" and not args[1] & os.O_CREAT:
                return real(*args, **kw)  # opening a folder to fsync it changes nothing
            self.calls.append(f"{name} {os.path.basename(str(args[-1] if name != 'fsync' else ''))}")
            if len(self.calls) == self.n:
                raise Killed(self.calls[-1])
            return real(*args, **kw)

        return call


def state(step: int) -> dict:
    return {
        "epoch": 0,
        "step": step,
        "model": {"w": torch.full((3,), float(step))},
        "optimizer": {},
        "config": {},
        "generator": torch.zeros(8, dtype=torch.uint8),
        "order": torch.arange(4),
        "partial": {"steps": step, "seconds": 0.0, "loss_sum": torch.zeros(()), "zstd_sum": torch.zeros(())},
    }


def legacy_layout(run_dir):
    """A run directory as simsiam wrote it before numbered files: checkpoint.pt is the newest
    (step 8), the one before it is checkpoint-000000004.pt, the manifest names both."""
    run_dir.mkdir()
    entries = []
    for step, name in [(8, "checkpoint.pt"), (4, numbered(4))]:
        torch.save(state(step), run_dir / name)
        path = run_dir / name
        entries.append(
            {
                "file": name,
                "global_step": step,
                "epoch": 0,
                "step": step,
                "size": path.stat().st_size,
                "sha256": checkpoint.sha256(path),
            }
        )
    (run_dir / checkpoint.MANIFEST).write_text(json.dumps(entries))


def numbered_layout(run_dir):
    run_dir.mkdir()
    for step in (4, 8):
        checkpoint.write_checkpoint(run_dir, state(step), step, keep=2)


def assert_consistent(run_dir, newest: int):
    """What a finished rotation leaves: checkpoint.pt is the newest, the manifest lists exactly the
    numbered files on disk, every one matches its hash, and no temporary file is left."""
    entries = checkpoint.read_manifest(run_dir)
    assert entries[0]["global_step"] == newest
    on_disk = sorted(p.name for p in run_dir.iterdir() if p.name.startswith("checkpoint-"))
    assert on_disk == sorted(e["file"] for e in entries)
    for e in entries:
        assert checkpoint.sha256(run_dir / e["file"]) == e["sha256"]
    assert torch.load(run_dir / "checkpoint.pt")["step"] == newest
    assert not list(run_dir.glob("*.tmp"))


@pytest.mark.parametrize("layout", ["numbered", "legacy", "no hard links"])
def test_a_kill_at_any_step_of_the_rotation_leaves_a_resumable_run(layout, tmp_path, monkeypatch):
    if layout == "no hard links":  # FAT, some network file systems: checkpoint.pt is a copy

        def no_link(*a, **kw):
            raise OSError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_link)
    make = legacy_layout if layout == "legacy" else numbered_layout
    counter = KillAt(10**9)
    make(tmp_path / "count")
    monkeypatch.setattr(checkpoint, "os", counter)
    checkpoint.write_checkpoint(tmp_path / "count", state(12), 12, keep=2)
    monkeypatch.setattr(checkpoint, "os", os)
    assert_consistent(tmp_path / "count", 12)
    assert len(counter.calls) >= 8, counter.calls  # files created, synced, linked, renamed, deleted

    for n in range(1, len(counter.calls) + 1):
        run_dir = tmp_path / f"kill{n}"
        make(run_dir)
        monkeypatch.setattr(checkpoint, "os", KillAt(n))
        with pytest.raises(Killed):
            checkpoint.write_checkpoint(run_dir, state(12), 12, keep=2)
        monkeypatch.setattr(checkpoint, "os", os)
        # The resume: the newest complete checkpoint, with no complaint (nothing is torn).
        complete = 12 if (run_dir / numbered(12)).exists() else 8
        warnings = []
        resumed = checkpoint.load_latest(run_dir, warn=warnings.append)
        assert resumed["step"] == complete and warnings == [], (counter.calls[n - 1], warnings)
        assert checkpoint.has_checkpoint(run_dir)
        # ... and the run goes on: its next checkpoint leaves a consistent directory.
        checkpoint.write_checkpoint(run_dir, state(16), 16, keep=2)
        assert_consistent(run_dir, 16)
        assert checkpoint.read_manifest(run_dir)[1]["global_step"] == complete, counter.calls[n - 1]
        assert torch.equal(checkpoint.load_latest(run_dir)["model"]["w"], torch.full((3,), 16.0))


def test_a_manifest_that_lists_a_removed_checkpoint_never_deletes_the_new_one(tmp_path):
    """The old rotation unlinked the stale entry's file name, which was the file it had just written."""
    numbered_layout(tmp_path / "run")
    (tmp_path / "run" / "checkpoint.pt").unlink()  # a user removed it
    checkpoint.write_checkpoint(tmp_path / "run", state(12), 12, keep=2)
    assert_consistent(tmp_path / "run", 12)
    legacy_layout(tmp_path / "old")
    (tmp_path / "old" / "checkpoint.pt").unlink()  # the old layout's manifest still lists it
    assert checkpoint.load_latest(tmp_path / "old")["step"] == 4
    checkpoint.write_checkpoint(tmp_path / "old", state(12), 12, keep=2)
    assert_consistent(tmp_path / "old", 12)


def test_a_kill_between_the_old_rotations_two_renames_resumes(tmp_path):
    """The old rotation renamed checkpoint.pt away, then the new one into place: a kill in between
    left no checkpoint.pt, and `--resume` refused although a complete checkpoint was on disk."""
    legacy_layout(tmp_path / "run")
    run = tmp_path / "run"
    os.replace(run / "checkpoint.pt", run / numbered(8))
    torch.save(state(12), run / "checkpoint.pt.new")
    assert checkpoint.has_checkpoint(run)
    assert checkpoint.load_latest(run)["step"] == 8
    checkpoint.write_checkpoint(run, state(12), 12, keep=2)
    assert_consistent(run, 12)


def test_a_crafted_manifest_never_reads_or_deletes_outside_the_run_dir(tmp_path):
    victim = tmp_path / "victim.pt"
    torch.save(state(99), victim)
    numbered_layout(tmp_path / "run")
    run = tmp_path / "run"
    entries = json.loads((run / checkpoint.MANIFEST).read_text())
    entry = {**entries[0], "global_step": 100, "size": victim.stat().st_size, "sha256": checkpoint.sha256(victim)}
    crafted = [{**entry, "file": "../victim.pt"}, {**entry, "file": str(victim)}, *entries]
    (run / checkpoint.MANIFEST).write_text(json.dumps(crafted))
    os.symlink(victim, run / numbered(50))  # a link in the run dir that leads out of it
    warnings = []
    assert checkpoint.load_latest(run, warn=warnings.append)["step"] == 8  # not the victim's 99
    assert len(warnings) == 1 and "ignored 2 entry(ies)" in warnings[0] and "\n" not in warnings[0]
    checkpoint.write_checkpoint(run, state(12), 12, keep=1)  # retires everything else it knows
    assert victim.exists() and torch.load(victim)["step"] == 99
    assert checkpoint.read_manifest(run)[0]["global_step"] == 12


@pytest.mark.parametrize("content", ["", "{", "[1, 2]", '{"file": "checkpoint.pt"}', "\xff\xfe", "[" * 100_000])
def test_a_damaged_manifest_is_rebuilt_from_the_disk(content, tmp_path):
    numbered_layout(tmp_path / "run")
    (tmp_path / "run" / checkpoint.MANIFEST).write_bytes(content.encode("utf-8", "surrogateescape"))
    assert checkpoint.load_latest(tmp_path / "run", warn=lambda m: None)["step"] == 8
    checkpoint.write_checkpoint(tmp_path / "run", state(12), 12, keep=2)
    assert_consistent(tmp_path / "run", 12)


# --- training: never a non-finite checkpoint, a durable end ------------------------------------


def tiny(run_dir, **kw):
    """The tiny run in 4 steps of 32 an epoch."""
    return tiny_config(run_dir, **{"batch_size": 32, **kw})


def test_a_diverging_run_never_writes_a_non_finite_checkpoint(tmp_path):
    """With checkpoints every step and the loss checked only every 100 steps, the old loop wrote NaN
    weights into every kept checkpoint and said the good one was kept."""
    cfg = tiny(tmp_path / "run", epochs=3, lr=0.4, checkpoint_every=1, log_every=100, keep_checkpoints=3)
    calls = {"n": 0}
    real = torch.optim.SGD.step

    def blow_up_at_step_6(self, *a, **kw):
        calls["n"] += 1
        out = real(self, *a, **kw)
        if calls["n"] == 6:  # a divergence: one parameter becomes inf
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return out

    torch.optim.SGD.step = blow_up_at_step_6
    try:
        with pytest.raises(TrainingError) as e:
            train(cfg)
    finally:
        torch.optim.SGD.step = real
    msg = str(e.value)
    assert "not finite" in msg and "\n" not in msg
    assert "the checkpoint of epoch 2, step 1" in msg, msg  # step 5 of 4-step epochs, named truthfully
    entries = checkpoint.read_manifest(tmp_path / "run")
    assert entries[0]["global_step"] == 5 and len(entries) == 3
    for e in entries:
        weights = torch.load(tmp_path / "run" / e["file"])["model"]
        assert all(t.isfinite().all() for t in weights.values() if t.is_floating_point()), e["file"]


def test_a_full_disk_at_the_end_leaves_no_torn_backbone_and_the_run_still_evaluates(tmp_path, monkeypatch):
    real = torch.save

    def full_disk_for_the_backbone(obj, f, *a, **kw):
        if "conv1.weight" in obj:  # backbone.pt's state_dict (a checkpoint's has "epoch", "model", ...)
            f.write(b"partial")
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full_disk_for_the_backbone)
    with pytest.raises(TrainingError, match=r"could not write .*backbone.pt .*file write failed") as e:
        train(tiny(tmp_path / "run", epochs=1))
    assert "\n" not in str(e.value)
    monkeypatch.undo()
    run = tmp_path / "run"
    assert not (run / "backbone.pt").exists() and not list(run.glob("*.tmp"))
    out = tmp_path / "b.safetensors"
    assert main(["export", str(run), "--out", str(out)]) == 0 and out.exists()  # from the checkpoint
    (run / "backbone.pt").write_bytes(b"PK\x03\x04 torn by an older version")
    assert main(["export", str(run), "--out", str(out)]) == 0


def test_eval_refuses_a_backbone_with_non_finite_weights(tmp_path, capsys):
    train(tiny(tmp_path / "run", epochs=1))
    weights = torch.load(tmp_path / "run" / "backbone.pt")
    weights["conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(weights, tmp_path / "run" / "backbone.pt")
    capsys.readouterr()
    for args in (
        ["eval", "knn", str(tmp_path / "run")],
        ["export", str(tmp_path / "run"), "--out", str(tmp_path / "b.st")],
    ):
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not finite" in err[0] and "conv1.weight" in err[0], err


def test_resume_refuses_a_checkpoint_whose_place_does_not_fit_the_run(tmp_path, capsys):
    cfg = tiny(tmp_path / "run", epochs=1, checkpoint_every=2)
    train(cfg)
    run = tmp_path / "run"
    newest = checkpoint.read_manifest(run)[1]  # a mid-epoch one: step 2
    assert newest["step"] == 2
    for what, change in [
        ("data order", lambda s: s.update(order=torch.zeros_like(s["order"]))),
        ("step 9 of an epoch of 4 steps", lambda s: s.update(step=9)),
        ("generator", lambda s: s.update(generator=torch.zeros(3, dtype=torch.uint8))),
    ]:
        shutil.rmtree(tmp_path / "copy", ignore_errors=True)
        shutil.copytree(run, tmp_path / "copy")
        for name in [checkpoint.CHECKPOINT, *[p.name for p in (tmp_path / "copy").glob("checkpoint-*.pt")]]:
            if name != newest["file"]:
                (tmp_path / "copy" / name).unlink()
        (tmp_path / "copy" / checkpoint.MANIFEST).unlink()
        s = torch.load(tmp_path / "copy" / newest["file"])
        change(s)
        torch.save(s, tmp_path / "copy" / newest["file"])
        capsys.readouterr()
        assert main(["train", "--resume", "--run-dir", str(tmp_path / "copy"), "--epochs", "2"]) == 2, what
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("simsiam: error:") and what.split()[0] in err[0], (what, err)


def test_damaged_json_run_files_are_read_safely(tmp_path, capsys):
    from simsiam.runs import read_metrics, read_summary

    train(tiny(tmp_path / "run", epochs=1))
    run = tmp_path / "run"
    good = read_metrics(run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('5\n{"epoch": "x"}\n{"epoch": 2, "loss": "nan?"}\n[]\n{"epoch": 3, "lr_groups": [1]}\n{"epo')
    warnings = []
    assert read_metrics(run, warn=warnings.append) == good
    assert warnings == [f"{run / 'metrics.jsonl'}: left out 5 line(s) that are not epoch records"]
    for content in ["[1]", '{"knn_top1": "high"}', "{", '{"collapsed": 1}']:
        (run / "summary.json").write_text(content)
        assert read_summary(run, warn=warnings.append) is None
        assert main(["report", str(run), "--no-retrieval", "--no-embedding-map"]) == 0
    (run / "run.json").write_text("[]")
    assert main(["train", "--resume", "--run-dir", str(run), "--epochs", "2"]) == 0
    assert "command" in json.loads((run / "run.json").read_text())  # a record again
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2]


def test_the_run_lock_is_not_inherited_by_dataloader_workers(tmp_path):
    """flock lives as long as any descriptor of it: a forked worker that kept the trainer's would
    keep the run directory locked after the trainer was killed."""
    import fcntl

    from simsiam.data.datasets import load_folder

    train_set, _ = load_folder(str(make_folder(tmp_path / "photos", n=8)), 8, placement="stream")
    lock = checkpoint.RunLock(tmp_path).__enter__()
    batches = train_set.batches(2, workers=1)
    next(batches)  # the worker is alive now
    lock.__exit__()  # the trainer is gone: only the worker could still hold the lock
    with open(tmp_path / checkpoint.LOCK) as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if the worker held it
    assert len(list(batches)) > 0


def test_a_lock_file_planted_as_a_link_is_never_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "run").mkdir()
    os.symlink(victim, tmp_path / "run" / checkpoint.LOCK)
    with pytest.raises(TrainingError, match="could not write .*\\.lock"):
        checkpoint.RunLock(tmp_path / "run").__enter__()
    assert victim.read_text() == "precious"


def test_eval_reports_a_collapsed_backbone_as_collapsed(tmp_path, capsys):
    """Every image giving the same feature is a collapse: the accuracy is the class prior's, and the
    result says so instead of passing it off as a measure of the backbone."""
    from simsiam.evaluation import evaluate

    train(tiny(tmp_path / "run", epochs=1))
    healthy = evaluate(tmp_path / "run", "knn", progress=False)
    assert not healthy["collapsed"] and healthy["feature_spread"] > 0.05
    weights = torch.load(tmp_path / "run" / "backbone.pt")
    torch.save(
        {k: torch.zeros_like(v) if "conv" in k else v for k, v in weights.items()}, tmp_path / "run" / "backbone.pt"
    )
    for protocol, fast in [("knn", False), ("linear", True)]:
        res = evaluate(tmp_path / "run", protocol, fast=fast, progress=False)
        assert res["collapsed"] and res["feature_spread"] < 1e-3, res
    capsys.readouterr()
    assert main(["eval", "knn", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "COLLAPSED" in out and "chance" in out, out
