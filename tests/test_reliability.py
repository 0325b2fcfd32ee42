"""Runs survive what happens to long jobs: kill -9, Ctrl-C, SIGTERM, a torn checkpoint, a full disk,
a read-only run directory, a second `simsiam train` into the same directory. Resuming after any
of them gives the weights of an uninterrupted run, bit for bit (one thread each, same machine).

A separate `python -m simsiam train` process only where one is the point: a kill -9, a signal, a
second process holding the run directory. Everything else (the uninterrupted reference, every
resume) runs in this process through `simsiam.cli.main`, on one thread like the subprocesses."""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from simsiam import checkpoint, train
from simsiam.cli import main

from conftest import TINY, tiny_config

# digits, 3 epochs of 7 steps, a checkpoint every 4 steps (global steps 4, 7 = epoch 1's end, 8, 12, 14,
# ...); about 0.1 s a step here.
ARGS = [*TINY, "--epochs", "3", "--subset", "448", "--log-every", "1", "--checkpoint-every", "4"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def start(run_dir, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "simsiam", "train", *ARGS, "--run-dir", str(run_dir), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


@pytest.fixture(scope="module")
def one_thread():
    """The subprocesses' OMP_NUM_THREADS=1 in this process: the same float summation order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cli(capsys, *args):
    """`simsiam ARGS` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def wait_for_step(run_dir, step, proc, timeout=300):
    """Until the run's newest checkpoint is at `step` or later (global steps)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        entries = checkpoint.read_manifest(run_dir)
        if entries and entries[0]["global_step"] >= step:
            return entries[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("no checkpoint in time")


def weights(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def epochs_in(run_dir):
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def errors(stderr):
    return [line for line in stderr.splitlines() if line.startswith("simsiam:")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread):
    """The uninterrupted run every interrupted one must end at."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    assert main(["train", *ARGS, "--run-dir", str(run_dir)]) == 0
    return run_dir


def test_kill_9_mid_epoch_then_resume_gives_the_same_weights(reference, tmp_path, capsys, one_thread):
    proc = start(tmp_path / "run")
    wait_for_step(tmp_path / "run", 9, proc)  # epoch 2, step 2 at least
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    code, out, err = cli(capsys, "train", "--resume", "--run-dir", str(tmp_path / "run"))
    assert code == 0, err[-2000:]
    assert "resumed" in out
    assert_same_weights(reference, tmp_path / "run")
    assert epochs_in(tmp_path / "run") == [1, 2, 3]  # no epoch twice, none missing
    assert losses(tmp_path / "run") == losses(reference)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_checkpoint_at_the_next_step_and_stop(sig, code, reference, tmp_path, capsys, one_thread):
    proc = start(tmp_path / "run")
    wait_for_step(tmp_path / "run", 5, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    (line,) = errors(err)
    # where the stop lands depends on the machine's speed: mid-epoch, or right at an epoch's end
    assert re.search(rf"simsiam: {sig.name}: stopped at (epoch \d+, step \d+|the end of epoch \d+)", line), line
    assert "--resume" in line
    newest = checkpoint.read_manifest(tmp_path / "run")[0]
    assert newest["global_step"] > 5  # written at the signal, not only the last periodic one
    resumed, _, err = cli(capsys, "train", "--resume", "--run-dir", str(tmp_path / "run"))
    assert resumed == 0, err[-2000:]
    assert_same_weights(reference, tmp_path / "run")


def test_a_second_ctrl_c_exits_at_once():
    """The first SIGINT only asks for a stop at the next step boundary; the second raises at once.
    (In-process: two signals sent to a subprocess back to back arrive as one.)"""
    from simsiam.runtime import StopSignals

    before = signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert stop.received == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is before  # restored on the way out


class Killed(BaseException):
    """The process dies here: no except clause of simsiam's catches it."""


def test_a_torn_newest_checkpoint_is_detected_and_the_previous_used(
    reference, tmp_path, capsys, monkeypatch, one_thread
):
    """What a kill -9 in the middle of a checkpoint write leaves: the newest file cut short (the
    process dies after the checkpoint of global step 12, epoch 2's step 5; the file is cut by hand)."""
    real = checkpoint.write_checkpoint

    def write_then_die(run_dir, state, global_step, *a, **kw):
        path = real(run_dir, state, global_step, *a, **kw)
        if global_step >= 11:
            raise Killed
        return path

    monkeypatch.setattr(checkpoint, "write_checkpoint", write_then_die)
    with pytest.raises(Killed):
        main(["train", *ARGS, "--run-dir", str(tmp_path / "run")])
    monkeypatch.undo()
    newest = tmp_path / "run" / "checkpoint.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # killed in the middle of a write
    code, _, err = cli(capsys, "train", "--resume", "--run-dir", str(tmp_path / "run"))
    assert code == 0, err[-2000:]
    assert "does not match its recorded size and hash" in err and "using" in err
    assert_same_weights(reference, tmp_path / "run")


def test_a_second_train_into_the_same_run_dir_refuses(tmp_path, capsys):
    proc = start(tmp_path / "run", "--epochs", "100")  # a separate process, still running while we try
    try:
        wait_for_step(tmp_path / "run", 2, proc)
        for args, says in [
            (ARGS, "already holds a run"),
            (["--resume"], f"in use by another simsiam train (pid {proc.pid})"),
        ]:
            code, _, err = cli(capsys, "train", *args, "--run-dir", str(tmp_path / "run"))
            assert code == 2
            (line,) = errors(err)
            assert says in line, line
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    epochs = epochs_in(tmp_path / "run")
    assert epochs == list(range(1, len(epochs) + 1))  # never interleaved


def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one_and_metrics_consistent(tmp_path, monkeypatch):
    """Also the end-of-epoch resume: after the failed epoch-2 checkpoint, --resume from epoch 1's
    ends with the weights and losses of a run that was never stopped."""
    real = checkpoint.save
    calls = []

    def full_disk_the_second_time(path, state):
        calls.append(path)
        if len(calls) == 2:
            raise checkpoint.TrainingError(checkpoint.cannot_write(path, OSError(errno.ENOSPC, "No space left")))
        real(path, state)

    monkeypatch.setattr(checkpoint, "save", full_disk_the_second_time)
    with pytest.raises(checkpoint.TrainingError, match="No space left.*previous checkpoint is intact"):
        train(tiny_config(tmp_path / "run"))
    monkeypatch.undo()
    assert epochs_in(tmp_path / "run") == [1]  # the line of epoch 2 was not written: its checkpoint was not
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not list((tmp_path / "run").glob("*.new")) and not list((tmp_path / "run").glob("*.tmp"))
    train(tiny_config(tmp_path / "run", resume=True))
    assert epochs_in(tmp_path / "run") == [1, 2]
    train(tiny_config(tmp_path / "straight"))
    assert_same_weights(tmp_path / "straight", tmp_path / "run")
    assert losses(tmp_path / "run") == losses(tmp_path / "straight")


@pytest.mark.parametrize("where", ["run dir", "parent"])
def test_an_unwritable_run_dir_is_a_one_line_error(where, tmp_path, monkeypatch):
    """EACCES on any write into the run directory (simulated: tests may run as root), or on creating it."""
    import builtins

    real_open, real_mkdir = builtins.open, type(tmp_path).mkdir
    run_dir = tmp_path / "run"

    def no_write(file, mode="r", *a, **kw):
        if str(file).startswith(str(run_dir)) and any(m in mode for m in "wa+"):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, mode, *a, **kw)

    def no_mkdir(self, *a, **kw):
        if self == run_dir:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(builtins, "open", no_write)
    if where == "parent":
        monkeypatch.setattr(type(tmp_path), "mkdir", no_mkdir)
    with pytest.raises(checkpoint.TrainingError, match=r"could not write .*Permission denied.*--run-dir"):
        train(tiny_config(run_dir))


def test_a_read_only_run_dir_is_one_line(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    run_dir = tmp_path / "ro"
    run_dir.mkdir()
    run_dir.chmod(0o500)
    try:
        code, _, err = cli(capsys, "train", *TINY, "--epochs", "1", "--run-dir", str(run_dir))
    finally:
        run_dir.chmod(0o700)
    assert code == 2 and len(errors(err)) == 1, err


def test_resume_names_what_changed_and_keeps_the_first_command(tmp_path, capsys, monkeypatch):
    train(tiny_config(tmp_path / "run", epochs=1))
    first = json.loads((tmp_path / "run" / "run.json").read_text())
    code, _, err = cli(capsys, "train", "--resume", "--run-dir", str(tmp_path / "run"), "--width", "0.25")
    assert code == 2
    (line,) = errors(err)
    assert "--width 0.125 (now 0.25)" in line and "resume with the run's own options" in line
    args = ["train", "--resume", "--run-dir", str(tmp_path / "run"), "--epochs", "2"]
    monkeypatch.setattr(sys, "argv", ["simsiam", *args])  # as the console script has it
    code, _, err = cli(capsys, *args)
    assert code == 0, err[-2000:]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["command"] == first["command"] and len(record["resumed"]) == 1
    assert record["resumed"][0]["command"] == ["simsiam", *args]


def test_a_checkpoint_from_before_mid_epoch_resume_still_resumes(tmp_path):
    """Checkpoints written before this version have no step, rng, metrics or manifest."""
    train(tiny_config(tmp_path / "run", epochs=1))
    path = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    for key in ["step", "order", "partial", "rng", "metrics"]:
        del state[key]
    torch.save(state, path)
    (tmp_path / "run" / "checkpoints.json").unlink()
    s = train(tiny_config(tmp_path / "run", resume=True))
    assert s["epochs"] == 2 and epochs_in(tmp_path / "run") == [1, 2]


def test_memory_does_not_grow_over_epochs(tmp_path):
    train(tiny_config(tmp_path / "run", epochs=6, subset=256))
    rss = [json.loads(line)["rss_mb"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    if rss[0] is None:
        pytest.skip("no /proc/self/statm here")
    assert rss[5] - rss[1] < 50, rss  # MB between epoch 2 and epoch 6
