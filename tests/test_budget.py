"""--budget: durations, the step plan, re-planning as the run goes, and a calibrated quickstart run that keeps
its plan on resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from sslcli import checkpoint
from sslcli.budget import REPLAN_AT, Calibration, Pacer, Timing, plan_steps
from sslcli.durations import parse_duration
from sslcli.encoders import build_encoder
from sslcli.errors import UsageError
from sslcli.methods import CONFIGS, method_class
from sslcli.methods.base import Budget
from sslcli.schedules import StepSchedule, stretch, warmup_cosine
from sslcli.spec import PretrainSpec, resolve
from sslcli.train import Events, LoopConfig, Step, StepOut, fit, follow_replan
from tests.test_cli import assert_one_clean_error, sslcli_run
from tests.test_methods import tiny_spec


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

        make_step = lambda: Step(model=model, loss=loss, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),  # noqa: E731
                                 lr_schedule=torch.zeros(1), cancel_gradients=cancelled.append)
        batches = lambda epoch, skip=0: (torch.ones(4, 2) for _ in range(10**6))  # noqa: E731
        calibration = calibrate(make_step, batches, LoopConfig(epochs=1, steps_per_epoch=10), torch.device("cpu"),
                                None, Timing(2, 4, min_s=min_timed_s, first_step=first_step))
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
    planned, replans = summary["planned_steps"], summary["replans"]
    plan_line = next(line for line in proc.stderr.splitlines() if line.startswith("--budget "))
    assert f"{planned} steps of 32, {planned * 32:,} images" in plan_line and "a step takes" in plan_line
    assert any(line.startswith("--budget: the online kNN") and "% of the budget" in line
               for line in proc.stderr.splitlines())
    # Each re-plan (made when the speed measured while training differs from the calibration's) is one line,
    # at a point of the plan then current, and the run trains the last plan.
    lines = [line for line in proc.stderr.splitlines() if line.startswith("--budget: at step")]
    assert len(lines) == len(replans) <= len(REPLAN_AT)
    totals = [planned] + [total for _, total in replans]
    for (at, total), before, line in zip(replans, totals[:-1], lines, strict=True):
        assert f"at step {at} " in line and f"re-planned from {before} to {total} steps" in line
        assert at < total and at >= REPLAN_AT[0] * before
    assert summary["steps"] == totals[-1] and summary["budget_s"] == 40
    assert summary["wall_s"] < summary["command_s"], "the budget clock: the whole command, set-up and closing included"
    spec = json.loads((run / "spec.json").read_text())
    assert spec["train"]["max_steps"] == planned and spec["train"]["epochs"] == -(-planned // 8)  # 8 steps/epoch
    # The schedule keeps the recipe's shape (the quickstart's 6 epochs), and the curves get about 20 points.
    assert spec["train"]["schedule_epochs"] == 6 and spec["train"]["log_every"] == min(20, max(1, planned // 20))
    # The online kNN ran after the last (possibly partial) epoch of the last plan too.
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in records if "knn_top1" in r][-1]["step"] == totals[-1]
    # The checkpoints hold the re-plans, so a resume lays the schedules out as this run did.
    state = checkpoint.complete_states(run / "checkpoints")[-1]
    assert checkpoint.read_state_record(state).get("replans", []) == replans
    assert checkpoint.run_progress(run) == (totals[-1], totals[-1])
    # Resuming the finished run with the same command keeps its plan and re-plans instead of calibrating anew.
    again = sslcli_run(*args, "--budget", "40s", "--resume", "auto")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["steps"] == totals[-1] and "finished run" in again.stderr
    assert not any(line.startswith("--budget") for line in again.stderr.splitlines())


def test_a_stretched_schedule_keeps_its_past_and_ends_at_its_final_value():
    lr = warmup_cosine(1.0, 100, 10, final=0.01)
    for total in (40, 61, 100, 180):
        new = stretch(lr, 30, total)
        assert len(new) == total
        assert torch.equal(new[:31], lr[:31]), "the steps before the re-plan and the re-plan step keep their values"
        assert new[-1] == pytest.approx(0.01) and bool((new[30:].diff() <= 1e-12).all()), "still a cosine down to final"
    assert torch.equal(stretch(lr, 30, 100), lr), "the same total leaves the schedule as it was"
    longer = stretch(lr, 30, 169)  # twice the intervals left (69 -> 138): every second step is an old one
    assert torch.allclose(longer[30::2], lr[30:], atol=1e-12)
    with pytest.raises(ValueError):
        stretch(lr, 100, 120)  # the re-plan step must be a step of both plans


def _pacer(clock: list[float], **kw) -> Pacer:
    return Pacer(deadline=100.0, eval_s=kw.pop("eval_s", 0.0), closing_s=kw.pop("closing_s", 0.0),
                 evaluations_left=kw.pop("evaluations_left", lambda step, total: 0), device=torch.device("cpu"),
                 clock=lambda: clock[0], **kw)


def test_the_pacer_plans_again_from_the_steps_since_its_last_point():
    clock = [0.0]

    def evaluations_left(step: int, total: int) -> int:  # one at every 10th step and at the end
        return -(-total // 10) - step // 10

    def fits(total: int, at: int, step_s: float, eval_s: float, left: float) -> bool:
        return step_s * (total - at) + eval_s * evaluations_left(at, total) <= left

    pacer = _pacer(clock, eval_s=3.0, closing_s=4.0, evaluations_left=evaluations_left)
    pacer.start(0)
    assert not pacer.due(24, 100) and pacer.due(25, 100)
    clock[0] = 50.0  # 25 steps in 50 s, of which 10 s in the evaluations at steps 10 and 20: 1.6 s a step
    total = pacer.replan(25, 100, evaluating_s=10.0)
    # The window's evaluations took 5 s each (the calibration said 3 s), and 46 s are left after the closing:
    # the most steps that fit with the evaluations they bring.
    assert pacer.eval_s == 5.0 and pacer.history == [[25, total]]
    assert total == 44 and fits(44, 25, 1.6, 5.0, 46) and not fits(45, 25, 1.6, 5.0, 46)
    # Half of the new plan (22) is behind: the next point is three quarters of it (33).
    assert not pacer.due(32, 44) and pacer.due(33, 44)
    clock[0] = 50.0 + 8 * 1.0 + 2.0  # 8 steps of 1 s (faster now) and a 2 s evaluation at step 30
    total = pacer.replan(33, 44, evaluating_s=12.0)
    assert pacer.eval_s == 2.0 and pacer.history[-1] == [33, total]
    assert fits(total, 33, 1.0, 2.0, 36) and not fits(total + 1, 33, 1.0, 2.0, 36)
    clock[0] = 200.0  # far past the deadline: one more step, and the run ends
    assert pacer.due(total - 1, total) and pacer.replan(total - 1, total, evaluating_s=12.0) == total
    assert not pacer.due(total, total + 10), "no point is left"


def test_fit_re_plans_a_run_that_falls_behind_and_every_schedule_follows():
    """A run planned for 40 steps whose steps take 2 s of its 100 s: at a quarter of its plan the pacer
    re-plans it to 50 steps, the loop trains the new total, the lr reaches its final value on the new last
    step, on_replan is told, and the re-plans laid out again (as a resume does) give the same schedule."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    clock = [0.0]

    def loss(x: torch.Tensor, step: int) -> StepOut:
        clock[0] += 2.0  # every step takes 2 s of the 100 s
        return StepOut(loss=model(x.float()).pow(2).mean())

    def batches(epoch: int, skip: int = 0):
        for _ in range(10 - skip):
            yield torch.ones(3, 4, dtype=torch.uint8)

    lr = warmup_cosine(0.4, 40, 4, final=0.004)
    cfg = LoopConfig(epochs=4, steps_per_epoch=10, max_steps=40, log_every=1)
    pacer = _pacer(clock)
    seen, replans, epochs = [], [], []
    events = Events(on_step_end=lambda step: seen.append(opt.param_groups[0]["lr"]),
                    on_replan=lambda at, total: replans.append((at, total)),
                    on_epoch_end=lambda done, step: epochs.append((done, step)))
    events.pacer = pacer
    result = fit(Step(model, loss, opt, lr), batches, cfg, torch.device("cpu"), events)
    assert replans == [(10, 50)] and pacer.history == [[10, 50]]  # 80 s left at step 10: 40 more steps
    final = replans[-1][1]
    assert result.steps == final == len(seen) and cfg.total_steps == final and cfg.epochs == -(-final // 10)
    assert epochs[-1] == (cfg.epochs, final), "the last (possibly partial) epoch of the new plan is evaluated"
    assert seen[:11] == pytest.approx(lr[:11].tolist()) and seen[-1] == pytest.approx(0.004)
    # What a resume does with the recorded re-plans: the same lr at every step.
    again = LoopConfig(epochs=4, steps_per_epoch=10, max_steps=40)
    schedule = lr
    for at, total in pacer.history:
        schedule = follow_replan(again, schedule, at, total)
    assert again.total_steps == final and schedule.tolist() == pytest.approx(seen)


def test_every_per_step_schedule_of_a_method_is_re_planned():
    """A method that lays a list over the run's steps makes it a StepSchedule, so a re-plan stretches it."""
    total = 37
    for name in CONFIGS:
        spec = tiny_spec(name)
        encoder, info = build_encoder(spec.encoder.name, 16, spec.encoder.small_stem, spec.encoder.kwargs)
        method = method_class(name)(spec.method, encoder, info.feature_dim, Budget(total, 5, 40))
        per_step = {k for k, v in vars(method).items() if isinstance(v, list) and len(v) == total}
        assert all(isinstance(getattr(method, k), StepSchedule) for k in per_step), name
        if name in ("byol", "dino", "dinov2", "mocov2", "mocov3"):  # the negative control: they do have one
            assert "momentum" in per_step, name
        before = {k: list(getattr(method, k)) for k in per_step}
        method.replan(12, 20)
        for k in per_step:
            after = getattr(method, k)
            assert len(after) == 20 and after[:13] == before[k][:13] and after[-1] == pytest.approx(before[k][-1])


@pytest.mark.parametrize("replans", [[[30, 20]], [[50, 60]], [[10, 40], [5, 45]], [[10, "40"]], [[10]], "x",
                                     [[90, 120]]])
def test_a_state_whose_re_plans_could_not_have_been_made_is_refused(replans, monkeypatch: pytest.MonkeyPatch):
    """A re-plan lies at a step of the plan before it (a 40-step first plan here), after the previous one and
    no later than the state's step (80); anything else is an altered state, refused before any schedule."""
    from sslcli import resume

    record = {"step": 80, "fingerprint_parts": {"total steps": 40}}
    monkeypatch.setattr(checkpoint, "read_state_record", lambda state: {**record, "replans": replans})
    with pytest.raises(UsageError, match="could not have written"):
        resume.recorded_replans(Path("state"))
    monkeypatch.setattr(checkpoint, "read_state_record", lambda state: {**record, "replans": [[10, 50], [30, 90]]})
    assert resume.recorded_replans(Path("state")) == [[10, 50], [30, 90]]


def test_a_budget_run_s_warm_up_and_freezes_are_shares_of_its_plan_and_follow_a_re_plan():
    """--budget keeps a recipe's shape: a warm-up of 1 epoch in a 6-epoch recipe is a sixth of the planned steps
    (here 60, where one epoch of data is 78 steps: the old rule never reached the peak), and a re-plan stretches
    the lr and a method's freeze with the rest of the run, continuous at the re-plan."""
    from sslcli import pretraining

    spec = resolve(PretrainSpec, preset="quickstart", sets=["data.image_size=16", "train.schedule_epochs=6",
                                                            "train.max_steps=60", "train.epochs=1"])
    loop = LoopConfig(epochs=1, steps_per_epoch=78, max_steps=60)
    assert pretraining.warmup_steps(spec, loop) == 10
    lr = warmup_cosine(1.0, loop.total_steps, pretraining.warmup_steps(spec, loop), final=0.0)
    assert float(lr.max()) == pytest.approx(1.0) and int(lr.argmax()) == 9, "the peak is reached, at the sixth"
    stretched = follow_replan(loop, lr, 30, 90)
    assert torch.equal(stretched[:31], lr[:31]) and stretched[-1] == pytest.approx(0.0) and len(stretched) == 90
    # Without a budget, an epoch is an epoch of data, as before.
    fixed = resolve(PretrainSpec, preset="simclr-cpu", sets=["data.image_size=16"])
    assert pretraining.warmup_steps(fixed, LoopConfig(epochs=15, steps_per_epoch=78)) == 78
    # A freeze of 1 schedule epoch (DINO's last layer) in a 6-epoch recipe planned at 60 steps: 10 steps; when the
    # plan nearly doubles at step 5, the 5 frozen steps still ahead take 10 (a mask that stretches with the run).
    budget = Budget(60, 78, 0, schedule_epoch_steps=10.0)
    frozen = budget.until(1)
    assert [frozen.at(s) > 0.5 for s in (9, 10)] == [True, False]
    longer = frozen.stretched(5, 115)
    assert [longer.at(s) > 0.5 for s in (14, 15)] == [True, False] and len(longer) == 115


def test_a_budget_on_a_cpu_with_the_default_encoder_takes_the_quickstart_sizing(capsys):
    """The rule: --budget on a CPU, encoder and batch not chosen, gives resnet10t at half width and batch 128;
    anything chosen (by a preset, an option or the method) is kept, and without a budget or on CUDA nothing
    changes."""
    from sslcli.budget import CPU_BATCH_SIZE, CPU_ENCODER, cpu_sizing

    cpu = torch.device("cpu")
    plain = cpu_sizing(resolve(PretrainSpec, sets=["train.budget=4m", "data.image_size=96"]), cpu)
    assert plain.encoder.model_dump(include=set(CPU_ENCODER)) == CPU_ENCODER
    assert plain.train.batch_size == CPU_BATCH_SIZE and plain.encoder.init is None
    assert "--budget on a CPU: resnet10t at half width" in capsys.readouterr().err
    chosen = resolve(PretrainSpec, options={"encoder.name": "resnet18", "train.batch_size": 64},
                     sets=["train.budget=4m", "data.image_size=96"])
    assert cpu_sizing(chosen, cpu) == chosen
    # Starting weights choose the architecture: a run from them is not resized.
    started = resolve(PretrainSpec, options={"encoder.init": "pretrained"}, sets=["train.budget=4m", "data.image_size=96"])
    assert cpu_sizing(started, cpu).encoder == started.encoder
    mae = resolve(PretrainSpec, options={"method.name": "mae"}, sets=["train.budget=4m", "data.image_size=32"])
    assert cpu_sizing(mae, cpu).encoder == mae.encoder, "the method's own encoder (a ViT) is kept"
    no_budget = resolve(PretrainSpec, sets=["data.image_size=96"])
    assert cpu_sizing(no_budget, cpu) == no_budget
    assert cpu_sizing(resolve(PretrainSpec, sets=["train.budget=4m", "data.image_size=96"]),
                      torch.device("cuda")).encoder.name == "resnet18"
