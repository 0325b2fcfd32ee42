"""--on-collapse warn|stop|recover on real collapses: a tiny digits run at 30x the preset's lr collapses
(rank of z about 1.5) in its second epoch. `recover` goes back to the last healthy checkpoint with the
lr halved (here the start: epoch 1's z rank, 4.4, is under the working level 8), records it, and a
kill -9 after a recovery resumes to the same weights bit for bit."""

import json
import signal

import pytest
import torch
from test_reliability import ARGS, assert_same_weights, cli, one_thread, start  # noqa: F401 (a fixture)

from simsiam import checkpoint
from simsiam.cli import main
from simsiam.errors import NonFinite
from simsiam.monitor import Monitor
from simsiam.optim import lr_at
from simsiam.report import write_report
from simsiam.runs import read_events, read_metrics

HOT = ["--lr", "30", "--rank-every", "1", "--epochs", "4"]  # collapses at epoch 2 (ARGS: 7 steps an epoch)


@pytest.fixture(scope="module")
def recovered(tmp_path_factory, one_thread):  # noqa: F811
    run_dir = tmp_path_factory.mktemp("recovered") / "run"
    assert main(["train", *ARGS, *HOT, "--on-collapse", "recover", "--run-dir", str(run_dir)]) == 0
    return run_dir


def test_recover_goes_back_halves_the_lr_and_records_it(recovered):
    events = read_events(recovered)
    assert [e["event"] for e in events] == ["recovery"] * len(events) and 1 <= len(events) <= 4
    first = events[0]
    assert (first["epoch"], first["back_to"], first["state"]) == (2, 0, "dimensional collapse")
    assert [e["lr_scale"] for e in events] == [0.5**i for i in range(1, len(events) + 1)]
    assert first["abandoned"][-1]["epoch"] == 2 and first["abandoned"][-1]["rank_z"] <= 4
    rows = read_metrics(recovered)
    assert [r.epoch for r in rows] == [1, 2, 3, 4]  # each epoch once: the abandoned ones are in the events
    cfg = json.loads((recovered / "config.json").read_text())
    steps = 7
    scale = events[-1]["lr_scale"]
    for r in rows:  # the lr at each epoch's last step: the schedule's, times the scale (all after the start)
        lr, _ = lr_at(_cfg(cfg), r.epoch - 1, steps - 1, steps)
        assert r.lr == pytest.approx(lr * scale, rel=1e-12)
    run = json.loads((recovered / "run.json").read_text())
    assert [e["lr_scale"] for e in run["recoveries"]] == [e["lr_scale"] for e in events]
    summary = json.loads((recovered / "summary.json").read_text())
    assert summary["recoveries"] == len(events) and summary["health"] == "healthy"
    state = torch.load(recovered / "checkpoint.pt", weights_only=True)
    assert state["lr_scale"] == scale and len(state["events"]) == len(events)
    assert (recovered / checkpoint.HEALTHY).is_file()
    page = write_report(recovered, retrieval=False, embedding_map=False).read_text()
    assert "## Recoveries (--on-collapse recover)" in page and "| 2 | dimensional collapse (rank of z" in page


def _cfg(d):
    from simsiam.configure import from_dict

    return from_dict(d)


def test_a_kill_9_after_a_recovery_resumes_to_the_same_weights(recovered, tmp_path, capsys, one_thread):  # noqa: F811
    run_dir = tmp_path / "run"
    proc = start(run_dir, *HOT, "--on-collapse", "recover")
    import time

    t0 = time.time()
    while not any(e["event"] == "recovery" for e in read_events(run_dir)):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < 300
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    code, _, err = cli(capsys, "train", "--resume", "--run-dir", str(run_dir))
    assert code == 0, err[-2000:]
    assert_same_weights(recovered, run_dir)
    strip = [{k: v for k, v in e.items() if k != "abandoned"} for e in read_events(recovered)]
    assert [{k: v for k, v in e.items() if k != "abandoned"} for e in read_events(run_dir)] == strip
    assert [r.loss for r in read_metrics(run_dir)] == [r.loss for r in read_metrics(recovered)]


def test_stop_ends_the_run_at_the_collapse_with_its_checkpoint(tmp_path, capsys):
    code, _, err = cli(capsys, "train", *ARGS, *HOT, "--on-collapse", "stop", "--run-dir", str(tmp_path / "r"))
    assert code == 2
    assert "dimensional collapse at epoch 2 (--on-collapse stop)" in err and err.count("simsiam: error") == 1
    assert checkpoint.read_manifest(tmp_path / "r")[0]["epoch"] == 2
    assert read_events(tmp_path / "r")[-1] == {"event": "stopped", "epoch": 2, "state": "dimensional collapse"}


def test_warn_trains_on_and_says_so(tmp_path, capsys):
    code, out, _ = cli(capsys, "train", *ARGS, *HOT, "--run-dir", str(tmp_path / "r"))
    assert code == 0
    assert "warning: epoch 2: dimensional collapse" in out and "health: dimensional collapse" in out
    assert "DIMENSIONAL COLLAPSE since epoch 2" in out  # the doctor's verdict at the end
    assert read_events(tmp_path / "r") == []


def test_too_many_recoveries_stop_the_run(tmp_path, capsys):
    code, _, err = cli(
        capsys, "train", *ARGS, "--lr", "100", "--rank-every", "1", "--epochs", "3", "--on-collapse", "recover",
        "--max-recoveries", "1", "--run-dir", str(tmp_path / "r"),
    )  # fmt: skip
    assert code == 2 and "after 1 recoveries (--max-recoveries 1)" in err


@pytest.fixture
def nan_at_epoch_2(monkeypatch):
    """The loss of epoch 2 goes non-finite, the first time only (in each run directory)."""
    real, fired = Monitor.end_epoch, set()

    def end_epoch(self):
        if self.epoch == 1 and self.run_dir not in fired:
            fired.add(self.run_dir)
            raise NonFinite("loss is nan at epoch 2, step 7; lower --lr")
        return real(self)

    monkeypatch.setattr(Monitor, "end_epoch", end_epoch)


def test_a_non_finite_loss_is_recorded_and_named_by_the_doctor(tmp_path, capsys, nan_at_epoch_2):
    code, _, err = cli(capsys, "train", *ARGS, "--run-dir", str(tmp_path / "r"))
    assert code == 2 and "loss is nan" in err
    assert read_events(tmp_path / "r")[-1]["event"] == "diverged"
    code, out, _ = cli(capsys, "doctor", str(tmp_path / "r"))
    assert code == 1 and "DIVERGED since epoch 2" in out


def test_recover_steps_back_from_a_non_finite_loss(tmp_path, capsys, nan_at_epoch_2):
    code, out, err = cli(capsys, "train", *ARGS, "--on-collapse", "recover", "--run-dir", str(tmp_path / "r"))
    assert code == 0, err
    (event,) = read_events(tmp_path / "r")  # epoch 1's rank was not measured (digits: every 5th): to the start
    assert (event["state"], event["epoch"], event["back_to"], event["lr_scale"]) == ("diverged", 2, 0, 0.5)
    assert [r.epoch for r in read_metrics(tmp_path / "r")] == [1, 2, 3]
    args = [*ARGS, "--rank-every", "1", "--on-collapse", "recover", "--recover-lr-factor", "0.25"]
    assert cli(capsys, "train", *args, "--run-dir", str(tmp_path / "r1"))[0] == 0
    (event,) = read_events(tmp_path / "r1")  # epoch 1 measured healthy (z rank >= 8): back to its end
    assert (event["epoch"], event["back_to"], event["lr_factor"], event["lr_scale"]) == (2, 1, 0.25, 0.25)


@pytest.mark.parametrize("value", ["1", "0", "-0.5", "nan"])
def test_a_recover_lr_factor_that_does_not_lower_the_lr_is_one_line(value, tmp_path, capsys):
    code, _, err = cli(capsys, "train", *ARGS, "--recover-lr-factor", value, "--run-dir", str(tmp_path / "r"))
    assert code == 2 and err.count("\n") == 1 and "--recover-lr-factor" in err


@pytest.mark.parametrize(
    "key,value,message",
    [("lr_scale", -0.5, "lr_scale is -0.5"), ("lr_scale", float("nan"), "lr_scale is nan"), ("events", [1], "events")],
)
def test_a_checkpoint_with_a_bad_recovery_state_is_refused(recovered, key, value, message):
    from simsiam.errors import DataError
    from simsiam.records import TrainingState

    state = torch.load(recovered / "checkpoint.pt", weights_only=True)
    assert TrainingState.from_dict(state, "x").lr_scale == state["lr_scale"]
    with pytest.raises(DataError, match=message):
        TrainingState.from_dict({**state, key: value}, "x")
