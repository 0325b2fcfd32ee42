"""`simsiam doctor`: each state from synthetic metric traces (the rules of docs/health.md), the causes it
ranks from the run's config, and two real tiny runs: a healthy one and one without stop-gradient."""

import json
import math

import pytest

from simsiam.cli import main
from simsiam.config import Config
from simsiam.doctor import COLLAPSED_RANK_Z, HEALTHY, diagnose, epoch_state, judge
from simsiam.records import MetricsRow
from simsiam.runs import read_events, read_metrics

from conftest import TINY, tiny_config

H = 1 / math.sqrt(2048)  # the healthy z-std of d = 2048


def row(epoch, z=1.0, rank_z=None, rank_f=None, loss=None):
    """An epoch line: z-std `z` x 1/sqrt(d), the ranks, a loss falling 0.05 an epoch unless given."""
    loss = -0.05 * epoch if loss is None else loss
    m = MetricsRow(epoch, loss, z * H, H, 0.5, {}, 100.0, 1.0, rank_backbone=rank_f, rank_z=rank_z)
    m.rank_z_max, m.rank_backbone_max = (1024, 128) if rank_z is not None else (None, None)
    return m


def trace(zs, ranks_z, ranks_f=None):
    ranks_f = ranks_f or [30.0] * len(zs)
    return [row(i + 1, z, rz, rf) for i, (z, rz, rf) in enumerate(zip(zs, ranks_z, ranks_f))]


CFG = Config()


def test_one_epoch_line_is_judged_by_the_rank_of_z_first():
    assert epoch_state(row(1, 1.0, 120.0, 30.0), 0.5) == HEALTHY
    assert epoch_state(row(1, 0.3, 1.4, 5.0), 0.5) == "complete collapse"  # no stop-gradient, no predictor
    assert epoch_state(row(1, 0.9, 1.8, 3.0), 0.5) == "dimensional collapse"  # lr 10x: z-std looks fine
    assert epoch_state(row(1, 0.06, 10.0, 38.0), 0.5) == "head collapse"  # no BN in the heads
    assert epoch_state(row(1, 1.0, COLLAPSED_RANK_Z, 30.0), 0.5) == "dimensional collapse"  # the line is inclusive
    assert epoch_state(row(1, 1.0, float("nan"), 30.0), 0.5) == "diverged"
    assert epoch_state(row(1, 0.3), 0.5) == "complete collapse"  # no rank: z-std alone
    assert epoch_state(row(1, 1.0), 0.5) is None  # no rank and z-std fine: cannot tell


@pytest.mark.parametrize(
    "zs,ranks,state,since",
    [
        ([1.0] * 5, [120, 150, 160, 170, 170], HEALTHY, None),
        ([1.0, 0.9, 0.5, 0.3, 0.25], [110, 7, 3, 1.5, 1.3], "complete collapse", 3),
        ([1.0, 0.9, 0.9, 0.8, 0.9], [50, 3, 2, 2, 2], "dimensional collapse", 2),
        ([0.2, 0.07, 0.07, 0.06, 0.06], [13, 12, 11, 10, 10], "head collapse", 1),
        ([1.0, 1.0, 0.4, 0.3, 0.3], [100, 80, 6, 3, 2], "complete collapse", 3),  # head collapse first: one stretch
        ([1.0, 0.3, 0.3, 1.0, 1.0], [100, 2, 2, 90, 100], HEALTHY, None),  # recovered: judged on the end
    ],
)
def test_a_runs_state_and_since_when_from_its_trace(zs, ranks, state, since):
    v = judge(CFG, trace(zs, ranks), [])
    assert (v.state, v.since, v.epochs) == (state, since, 5)


def test_a_loss_that_does_not_fall_is_not_learning():
    flat = [row(i + 1, 1.0, 300.0, 40.0, loss=-0.003 - 0.001 * i) for i in range(10)]
    v = judge(CFG, flat, [])
    assert v.state == "not learning" and v.since == 1
    assert "fell by 0.009" in v.evidence[-1]
    assert judge(CFG, flat[:9], []).state == HEALTHY  # under 10 epochs: too short to tell
    rows = [row(i + 1, 1.0, 300.0, 40.0, loss=-0.003 - 0.03 * i) for i in range(10)]
    assert judge(CFG, rows, []).state == HEALTHY


def test_a_run_without_the_rank_is_judged_on_z_std_and_says_so(tmp_path):
    assert judge(CFG, [row(i + 1, 1.0) for i in range(4)], []).state == HEALTHY
    v = judge(CFG, [row(1, 1.0), row(2, 0.3), row(3, 0.2)], [])
    assert (v.state, v.since) == ("complete collapse", 2)


def test_a_non_finite_stop_and_an_empty_run_are_named():
    events = [{"event": "diverged", "epoch": 3, "message": "loss is nan at epoch 3, step 2"}]
    v = judge(CFG, trace([1.0, 1.0], [100, 90]), events)
    assert (v.state, v.since) == ("diverged", 3) and "nan" in v.evidence[0]
    assert judge(CFG, [], []).state == "no epoch yet"
    # a divergence that a resume went past is history, not the state
    assert judge(CFG, trace([1.0] * 4, [100] * 4), events).state == HEALTHY


def write_run(run_dir, cfg, rows, events=()):
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict()))
    lines = [json.dumps(r.to_json()) for r in rows] + [json.dumps(e) for e in events]
    (run_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))


def test_causes_put_what_the_config_shows_first(tmp_path):
    collapsed = trace([1.0, 0.3, 0.2], [100, 1.5, 1.3])
    write_run(tmp_path / "nosg", tiny_config(tmp_path / "x", stop_gradient=False), collapsed)
    causes = diagnose(tmp_path / "nosg").causes
    assert "--no-stop-gradient" in causes[0].why and causes[0].command.endswith("--stop-gradient")
    assert f"--config {tmp_path / 'nosg'}/config.json" in causes[0].command

    write_run(tmp_path / "hot", tiny_config(tmp_path / "x", lr=10.0), trace([1.0, 0.9, 0.9], [80, 2, 2]))
    v = diagnose(tmp_path / "hot")
    assert v.state == "dimensional collapse"
    assert "10x the digits preset's 1" in v.causes[0].why and v.causes[0].command.endswith("--lr 3.33")
    assert v.causes[-1].command.endswith("--on-collapse recover")

    write_run(tmp_path / "nobn", tiny_config(tmp_path / "x", head_bn="none"), trace([0.2, 0.07, 0.06], [13, 11, 10]))
    v = diagnose(tmp_path / "nobn")
    assert v.state == "head collapse" and v.causes[0].command.endswith("--head-bn default")

    slow = [row(i + 1, 1.0, 300.0, 40.0, loss=-0.001 * i) for i in range(12)]
    write_run(tmp_path / "cold", tiny_config(tmp_path / "x", lr=0.003), slow)
    v = diagnose(tmp_path / "cold")
    assert v.state == "not learning" and "0.003x the digits preset's 1" in v.causes[0].why


def test_a_healthy_run_that_lost_most_of_its_z_rank_gets_a_note(tmp_path):
    write_run(tmp_path / "lr3", tiny_config(tmp_path / "x", lr=3.0), trace([1.0] * 4, [113, 43, 20, 13]))
    v = diagnose(tmp_path / "lr3")
    assert v.healthy and any("fell from 113 to 13" in n for n in v.notes)


def test_event_lines_are_not_epochs_and_not_complaints(tmp_path):
    event = {"event": "recovery", "epoch": 3, "back_to": 2, "reason": "x", "lr_factor": 0.5, "lr_scale": 0.5}
    write_run(tmp_path / "r", CFG, trace([1.0] * 2, [100] * 2), [event])
    warned = []
    assert [m.epoch for m in read_metrics(tmp_path / "r", warn=warned.append)] == [1, 2] and warned == []
    assert read_events(tmp_path / "r") == [event]
    assert any("recovered at epoch 3" in n for n in diagnose(tmp_path / "r").notes)


def test_the_doctor_on_real_runs_healthy_and_without_stop_gradient(tmp_path, capsys):
    """Two real tiny runs: the default, and --no-stop-gradient (collapses within 8 epochs here)."""
    common = [*TINY, "--rank-every", "1", "--subset", "448", "--epochs", "8", "--knn-every", "0"]
    assert main(["train", *common, "--run-dir", str(tmp_path / "ok")]) == 0
    assert main(["train", *common, "--no-stop-gradient", "--run-dir", str(tmp_path / "nosg")]) == 0
    out = capsys.readouterr().out
    assert "health: healthy" in out and "NO STOP" not in out
    assert "COMPLETE COLLAPSE" in out or "DIMENSIONAL COLLAPSE" in out  # train prints the verdict of a sick run

    assert main(["doctor", str(tmp_path / "ok")]) == 0
    assert "HEALTHY" in capsys.readouterr().out
    assert main(["doctor", str(tmp_path / "nosg"), "--json"]) == 1
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["state"] in ("complete collapse", "dimensional collapse")
    assert "--no-stop-gradient" in verdict["causes"][0]["why"]
    assert json.loads((tmp_path / "nosg" / "doctor.json").read_text()) == verdict
    assert json.loads((tmp_path / "nosg" / "summary.json").read_text())["health"] == verdict["state"]


def test_doctor_on_a_folder_that_is_no_run_is_one_line(tmp_path, capsys):
    assert main(["doctor", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a simsiam run directory" in err
