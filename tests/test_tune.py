"""`simsiam tune`: successive halving on fake scores and a fake clock, the one-line errors of bad grids
and budgets, and one real tiny search whose best.json `simsiam train --config` takes."""

import json

import pytest

from simsiam.cli import main
from simsiam.errors import ConfigError, TrainingError
from simsiam.experiments.tune import Trial, halving

from conftest import TINY

SCORES = {0.1: 0.01, 0.3: 0.03, 1.0: 0.05, 3.0: 0.04, 10.0: None}  # None: ruled out (a collapse)


class Clock:
    """Time advances by `per_epoch` seconds for every epoch trained."""

    def __init__(self, per_epoch=1.0):
        self.now, self.per_epoch = 0.0, per_epoch

    def __call__(self):
        return self.now


def fake_run(clock, scores=SCORES, calls=None):
    def run(lr_f, wd_f, epochs, rung):
        clock.now += clock.per_epoch * epochs
        if calls is not None:
            calls.append((lr_f, epochs, rung))
        score = scores[lr_f]
        return Trial(
            lr_f, wd_f, rung, epochs, "healthy" if score else "dimensional collapse", score, "" if score else "x"
        )

    return run


def grid(factors):
    return [(f, 1.0) for f in factors]


def test_each_rung_keeps_the_best_third_and_trains_it_three_times_longer():
    clock, calls = Clock(), []
    best, trials = halving(grid(SCORES), fake_run(clock, calls=calls), 3, 25, 3, 1e9, clock)
    assert [(c[0], c[1]) for c in calls[:5]] == [(f, 3) for f in SCORES]  # rung 1: everyone, 3 epochs
    assert calls[5:] == [(1.0, 9, 1), (3.0, 9, 1)]  # rung 2: the best ceil(5/3) = 2, 9 epochs
    assert best.lr_factor == 1.0 and best.rung == 1 and len(trials) == 7


def test_the_runs_stop_at_the_configs_epochs_and_ties_keep_grid_order():
    clock, calls = Clock(), []
    scores = {0.5: 0.02, 1.0: 0.02, 2.0: 0.01}
    best, _ = halving(grid(scores), fake_run(clock, scores, calls), 4, 6, 2, 1e9, clock)
    assert calls == [(0.5, 4, 0), (1.0, 4, 0), (2.0, 4, 0), (0.5, 6, 1), (1.0, 6, 1)]  # 4 x 2 capped at 6
    assert best.lr_factor == 0.5  # equal scores: the earlier candidate


def test_a_budget_short_of_the_first_rung_is_one_error_after_one_trial():
    clock, calls = Clock(per_epoch=10.0), []
    with pytest.raises(ConfigError, match=r"--budget-minutes 1 is too small: the first rung alone needs about 2.5 min"):
        halving(grid(SCORES), fake_run(clock, calls=calls), 3, 25, 3, 60, clock)
    assert len(calls) == 1


def test_the_budget_ends_the_search_between_rungs_with_the_best_so_far():
    clock, said = Clock(per_epoch=1.0), []
    best, trials = halving(grid(SCORES), fake_run(clock), 3, 25, 3, 20, clock, log=said.append)
    assert len(trials) == 5 and best.lr_factor == 1.0 and best.rung == 0  # rung 2 needs 18 more s, 5 are left
    assert "the budget ends here" in said[0]


def test_when_every_candidate_is_ruled_out_the_error_says_why():
    clock = Clock()
    with pytest.raises(TrainingError, match=r"every candidate of rung 1 was ruled out \(lr x10 wd x1: x\)"):
        halving(grid([10.0]), fake_run(clock), 3, 25, 3, 1e9, clock)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--lr-factors", "0"], "--lr-factors must be one or more distinct positive numbers"),
        (["--lr-factors", "1", "1"], "--lr-factors must be one or more distinct positive numbers"),
        (["--wd-factors", "nan"], "--wd-factors must be one or more distinct positive numbers"),
        (["--budget-minutes", "0"], "--budget-minutes must be a positive number"),
        (["--eta", "1"], "--eta must be at least 2"),
    ],
)
def test_bad_grids_and_budgets_are_one_line(args, message, tmp_path, capsys):
    assert main(["tune", *TINY, *args, "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "t").exists()


def test_a_real_tiny_search_writes_a_config_train_takes(tmp_path, capsys):
    out = tmp_path / "tune"
    args = ["--subset", "256", "--epochs", "4", "--lr-factors", "0.3", "1", "30", "--wd-factors", "1"]
    assert main(["tune", *TINY, *args, "--first-epochs", "2", "--eta", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "tune.json").read_text())
    trials = record["trials"]
    assert [(t["lr_factor"], t["epochs"]) for t in trials[:3]] == [(0.3, 2), (1.0, 2), (30.0, 2)]
    assert trials[2]["score"] is None and "collapse" in trials[2]["why_out"]  # 30x collapses and is ruled out
    assert all(t["epochs"] == 4 for t in trials[3:]) and 30.0 not in [t["lr_factor"] for t in trials[3:]]
    best = json.loads((out / "best.json").read_text())
    assert best["lr"] == pytest.approx(record["base"]["lr"] * record["best"]["lr_factor"])
    assert best["epochs"] == 4 and best["run_dir"] is None and "**pick**" in printed
    assert main(["train", "--config", str(out / "best.json"), "--epochs", "1", "--run-dir", str(tmp_path / "r")]) == 0
    assert json.loads((tmp_path / "r" / "config.json").read_text())["lr"] == best["lr"]
