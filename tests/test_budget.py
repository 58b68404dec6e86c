"""--budget: durations, the step plan, and a calibrated quickstart run that keeps its plan on resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sslcli.budget import Calibration, plan_steps
from sslcli.durations import parse_duration
from sslcli.errors import UsageError
from tests.test_cli import assert_one_clean_error, sslcli_run


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("5m", 300), ("2h", 7200), ("1h30m", 5400),
                                               ("1.5h", 5400), ("45", 45), (12.5, 12.5)])
def test_durations_people_write(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "5x", "m5", "-5m", "0", "0s", "inf", "5m junk"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_plan_fills_what_is_left_after_set_up_evaluations_and_the_closing():
    # 300 s budget, 20 s gone, 5 s closing; 0.5 s a step, 2 s an evaluation, one evaluation per 100 steps.
    steps = plan_steps(300, 20, Calibration(step_s=0.5, eval_s=2.0), 100, lambda s: -(-s // 100), fixed_s=5)
    assert steps * 0.5 + -(-steps // 100) * 2.0 <= 275 < (steps + 2) * 0.5 + -(-(steps + 2) // 100) * 2.0
    with pytest.raises(UsageError, match="used up before training starts"):
        plan_steps(30, 29, Calibration(step_s=0.5, eval_s=0.0), 100, lambda s: 0, fixed_s=5)


def test_calibration_times_steps_that_train_for_at_least_its_share_of_the_budget():
    """The timed steps go on past the first few until min_timed_s is timed (a drifting machine is sampled for
    longer than a moment), and the method sees them as the steps after its memory-filling epochs."""
    import time

    import torch

    from sslcli.budget import calibrate, timed_seconds
    from sslcli.train import LoopConfig, Step, StepOut

    def measure(min_timed_s: float, first_step: int) -> tuple[list[int], list[int]]:
        model = torch.nn.Linear(2, 1)
        seen, cancelled = [], []

        def loss(batch, step):
            seen.append(step)
            time.sleep(0.005)
            return StepOut(loss=model(batch.float()).sum(), logs={})

        make_step = lambda: (Step(model=model, loss=loss, cancel_gradients=cancelled.append),  # noqa: E731
                             torch.optim.SGD(model.parameters(), lr=0.1))
        batches = lambda epoch, skip=0: (torch.ones(4, 2) for _ in range(10**6))  # noqa: E731
        calibration = calibrate(make_step, batches, LoopConfig(epochs=1, steps_per_epoch=10), torch.device("cpu"),
                                None, warmup_steps=2, timed_steps=4, min_timed_s=min_timed_s, first_step=first_step)
        assert calibration.step_s >= 0.005 and calibration.eval_s == 0
        return seen, cancelled

    seen, cancelled = measure(0.0, 0)
    assert seen == [0, 1, 0, 1, 2, 3] and cancelled == seen, "2 warm-up steps, then 4 timed"
    seen, cancelled = measure(0.5, 78)
    assert len(seen) > 30 and seen[:6] == [78, 79, 78, 79, 80, 81] and cancelled == seen, \
        "timed for half a second (about 100 steps of 5 ms), as steps 78 on"
    assert [timed_seconds(b) for b in (60, 480, 3600, 7200)] == pytest.approx([5.0, 14.4, 60.0, 60.0])


def test_budget_in_the_spec_reads_durations_and_refuses_nonsense(tmp_path: Path):
    proc = sslcli_run("pretrain", str(tmp_path), "--budget", "2m", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["train"]["budget"] == 120
    bad = sslcli_run("pretrain", str(tmp_path), "--budget", "soon")
    assert_one_clean_error(bad, 2, "train.budget", "'soon' is not a duration")


def test_the_quickstart_preset_has_a_budget_and_explicit_epochs_replace_it(tmp_path: Path):
    from sslcli.spec import PretrainSpec, resolve

    quickstart = resolve(PretrainSpec, preset="quickstart")
    assert quickstart.train.budget == 210  # 3m30s: the preset fits its promise on any CPU
    for options, sets in (({"train.epochs": 2}, []), ({}, ["train.epochs=2"])):
        spec = resolve(PretrainSpec, preset="quickstart", options=options, sets=sets)
        assert spec.train.budget is None and spec.train.epochs == 2
    # A CPU preset's max_steps end its own epochs (where its expected figure was measured): --epochs replaces them.
    assert resolve(PretrainSpec, preset="rotation-cpu").train.max_steps is not None
    assert resolve(PretrainSpec, preset="rotation-cpu", options={"train.epochs": 5}).train.max_steps is None
    # A budget above a preset's epochs wins, and a --set budget above an --epochs option too.
    assert resolve(PretrainSpec, preset="simclr-cpu", options={"train.budget": "1m"}).train.budget == 60
    assert resolve(PretrainSpec, options={"train.epochs": 3}, sets=["train.budget=90s"]).train.budget == 90
    # Both from the user in one layer: which was meant? One usage error line, exit 2.
    both = sslcli_run("pretrain", str(tmp_path), "--epochs", "2", "--budget", "1m", "--dry-run")
    assert_one_clean_error(both, 2, "both epochs and a budget given")
    dry = sslcli_run("pretrain", str(tmp_path), "--preset", "quickstart", "--epochs", "1", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["train"]["budget"] is None


def test_a_budget_run_plans_its_steps_trains_them_and_keeps_the_plan_on_resume(cifar_small: Path, tmp_path: Path):
    run = tmp_path / "run"
    args = ["pretrain", str(cifar_small), "--preset", "quickstart", "--batch-size", "32", "--out", str(run),
            "--set", "data.max_images=256", "--set", "method.proj_hidden_dim=64", "--set", "monitor.report=false",
            "--set", "data.num_workers=0", "--json"]
    proc = sslcli_run(*args, "--budget", "40s")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    planned = summary["planned_steps"]
    plan_line = next(line for line in proc.stderr.splitlines() if line.startswith("--budget"))
    assert f"{planned} steps" in plan_line and "a step takes" in plan_line and "online kNN" in plan_line
    assert summary["steps"] == planned and summary["budget_s"] == 40
    assert summary["wall_s"] < summary["command_s"], "the budget clock: the whole command, set-up and closing included"
    spec = json.loads((run / "spec.json").read_text())
    assert spec["train"]["max_steps"] == planned and spec["train"]["epochs"] == -(-planned // 8)  # 8 steps/epoch
    # The online kNN ran after the last (possibly partial) epoch too.
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in records if "knn_top1" in r][-1]["step"] == planned
    # Resuming the finished run with the same command keeps its plan instead of calibrating a new one.
    again = sslcli_run(*args, "--budget", "40s", "--resume", "auto")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["steps"] == planned and "finished run" in again.stderr
    assert not any(line.startswith("--budget") for line in again.stderr.splitlines())
