"""`sslcli pretrain`: data -> budget plan -> model -> optimizer -> restore -> run folder -> fit -> summary.

run() reads as those stages; what each is built from lives in the library (pretraining.py, budget.py,
resume.py, checkpoint.py). Under torchrun every rank runs them, rank 0 alone writes the run folder and reports.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sslcli import budget, checkpoint, console, distributed, monitors, online_knn, report, trackers
from sslcli import resume as resumption
from sslcli.device import prepare_device, resolve_device
from sslcli.errors import Interrupted, UsageError
from sslcli.files import atomic_write_json
from sslcli.methods import CONFIGS
from sslcli.pretraining import (
    Model,
    TrainingData,
    build_model,
    load_data,
    loop_config,
    optimizer_and_schedule,
    resolve_init,
    rng_states,
    short_run_warnings,
    step_function,
    weight_decay_schedule,
    with_resolved_settings,
)
from sslcli.run_lock import run_folder_lock
from sslcli.spec import PretrainSpec, dump
from sslcli.train import Events, FitResult, LoopConfig, Step, fit
from sslcli.training_data import cache_policy, labeled_batch_size, training_images


@dataclass
class Run:
    """A run as run() built it, for train() and summary()."""

    spec: PretrainSpec
    run_dir: Path
    data: TrainingData
    loop: LoopConfig
    model: Model
    step: Step  # the step function with its optimizer, lr schedule and loss scaler
    saver: checkpoint.Checkpointer
    device: torch.device
    started: float  # time.perf_counter() when the command started: --budget counts from there
    start_step: int = 0  # a resumed run's
    pacer: budget.Pacer | None = None
    tracking: trackers.Trackers | None = None  # --log-to: rank 0's experiment trackers


def run(spec: PretrainSpec, resume: str | None = None, force: bool = False,
        started: float | None = None) -> dict[str, Any]:
    """Pretrain an encoder as the spec says; returns the summary printed by the CLI.

    resume: None (a new run), "auto" (continue --out from its newest intact checkpoint, or start it),
    a run folder or a state file. force: resume even when the spec fingerprint differs. started: the
    time.perf_counter() at which the command started (the CLI's, so --budget counts the loading of torch
    and the spec's resolution); now when not given.
    """
    started = time.perf_counter() if started is None else started  # --budget counts from here
    trackers.check_installed(spec.logging.to)  # a tracker that is not installed: refused before any work
    folder = resumption.run_folder(spec, resume)  # None: a new folder, named (and locked) when it is made
    with contextlib.ExitStack() as locks:
        if folder is not None and int(os.environ.get("RANK", "0")) == 0:  # rank 0 alone writes the run folder
            locks.enter_context(run_folder_lock(folder))  # one process at a time in a run folder
        return _run(spec, resume, force, started, locks)


def _run(spec: PretrainSpec, resume: str | None, force: bool, started: float,
         locks: contextlib.ExitStack) -> dict[str, Any]:
    spec = resolve_init(spec)  # --init: the weights' architecture, input size and sha256
    if spec.data.image_size == "auto":  # spec.resolve chooses it from DATA's images; none could be read there
        training_images(spec)  # says what is wrong with DATA
        raise UsageError("data.image_size=auto: no image of DATA could be measured; set --set data.image_size=N")
    resume_dir, state = resumption.resume_point(spec, resume, force)
    device = distributed.init(resolve_device(spec.train.device))  # joins torchrun's group when launched by it
    prepare_device(device)
    torch.manual_seed(spec.train.seed)  # the same initial weights on every rank
    spec = budget.cpu_sizing(spec, device)
    train_data = load_data(spec, device)
    spec, pacer = budget.plan(spec, state, train_data, device, started)
    loop = loop_config(spec, train_data.steps_per_epoch, device)
    model = build_model(spec, loop, device, train_data.num_classes, len(train_data.images))
    spec = with_resolved_settings(spec, model.method)
    optimizer, lr_schedule = optimizer_and_schedule(spec, model.method, loop)
    step = step_function(spec, loop, model, device, optimizer, lr_schedule, weight_decay_schedule(spec, loop))
    step.scaler = torch.amp.GradScaler(device.type, enabled=loop.precision == "fp16")
    identity = resumption.fingerprint(spec, train_data.images, loop.total_steps)  # of the first plan
    start_step, replans = 0, []
    if state is not None:
        start_step = resumption.restore(state, spec, identity, force, model.method, optimizer, step.scaler,
                                        model.generator, model.augment, device)
        if spec.train.budget is not None:  # a --budget run's own re-plans, made before this state
            replans = resumption.recorded_replans(state)
            step.lr_schedule, step.wd_schedule = budget.follow_replans(replans, loop, step.lr_schedule, model.method,
                                                                       step.wd_schedule)
        if start_step >= loop.total_steps:
            console.info(f"{resume_dir} holds a finished run ({start_step}/{loop.total_steps} steps), so there is "
                         f"nothing to resume: {checkpoint.further_training(resume_dir)}")
            return {"run_dir": str(resume_dir), "encoder": str(resume_dir / "encoder.safetensors"),
                    "method": spec.method.name, "steps": start_step, "already_complete": True}
        console.info(f"resuming from {state} at step {start_step}/{loop.total_steps}")
    run_dir = open_run_dir(spec, resume_dir, model.method)
    if resume_dir is None and spec.out is None and distributed.is_main():
        locks.enter_context(run_folder_lock(run_dir))
    announce(spec, run_dir, train_data, loop, model, device)
    saver = checkpoint.Checkpointer(run_dir, model.method, optimizer, step.scaler, model.info, spec.method.name,
                                    dump(spec), identity, spec.train.keep_checkpoints, lambda: rng_states(model, device),
                                    replans=list(replans), trained_input=CONFIGS[spec.method.name].encoder_input)
    this = Run(spec, run_dir, train_data, loop, model, step, saver, device, started, start_step, pacer)
    result, knn, health = train(this)
    if not distributed.is_main():
        return {}  # rank 0 reports
    out = summary(this, result, knn, health)
    if this.tracking is not None:
        beside = [run_dir / name for name in getattr(model.method, "export_files", dict)()]  # a depth decoder
        this.tracking.finish(out, [run_dir / "encoder.safetensors", run_dir / "projector.safetensors", *beside])
    return out


def open_run_dir(spec: PretrainSpec, resume_dir: Path | None, method: torch.nn.Module) -> Path:
    """Rank 0 creates the run folder and writes spec.json; the other ranks train and stay quiet."""
    run_dir = resume_dir or (Path(spec.out) if spec.out else None)
    if distributed.is_main():
        run_dir = checkpoint.make_run_dir(resume_dir or spec.out, spec.method.name, resuming=resume_dir is not None)
        checkpoint.check_free_space(run_dir, method, spec.train.keep_checkpoints)
        atomic_write_json(run_dir / "spec.json", dump(spec))
    return run_dir


def announce(spec: PretrainSpec, run_dir: Path, train_data: TrainingData, loop: LoopConfig, model: Model,
             device: torch.device) -> None:
    world = distributed.world_size()
    on = f"{world} processes ({device.type}, sync BN {'on' if model.sync_bn else 'off'})" if world > 1 else str(device)
    train_data.policy.release()
    skipped = train_data.policy.count
    images = console.plural(train_data.trained_images, "image") + (f" ({skipped} unreadable skipped)"
                                                                   if skipped else "")
    console.info(f"run folder {run_dir}: {images} at {spec.data.image_size} px, "
                 f"{console.plural(train_data.steps_per_epoch, 'step/epoch')} x "
                 f"{console.plural(spec.train.epochs, 'epoch')} on {on} ({loop.precision})")
    if train_data.labels is not None:
        labeled = int((train_data.labels >= 0).sum())
        console.info(f"semi-supervised (S4L): {labeled} labeled images ({spec.data.label_fraction:g} of each class), "
                     f"{labeled_batch_size(spec)} of them added to every step's batch, a linear head on their "
                     f"features, cross entropy x {spec.train.supervised_weight:g} added to the loss")
    console.info(f"lr = base_lr {spec.optim.base_lr} x batch {spec.train.batch_size} / 256 = {spec.scaled_lr():.4g}")
    for line in short_run_warnings(spec, loop):
        console.warn(line)


def train(this: Run) -> tuple[FitResult, online_knn.OnlineKnn, monitors.CollapseWatch]:
    """fit() with the run's events: checkpoints (and the report) from rank 0, the online kNN, the monitors."""
    spec, run_dir, model, pacer = this.spec, this.run_dir, this.model, this.pacer
    main = distributed.is_main()
    if main:  # records after the step this run continues from belong to a history that is being replaced
        resumption.drop_metrics_after(run_dir / "metrics.jsonl", this.start_step)
    this.tracking = trackers.open_trackers(spec.logging.to, run_dir, dump(spec), spec.logging.experiment,
                                           this.start_step, this.device)  # rank 0's; every rank learns if they started
    tracking = this.tracking
    if tracking is not None and this.start_step > 0:
        tracking.backfill(report.read_metrics(run_dir))  # a tracker new to a resumed run: the kept history
    metrics = (console.MetricsLog(run_dir / "metrics.jsonl", also=tracking.record if tracking else None)
               if main else None)
    knn = online_knn.OnlineKnn(spec, model.info, this.device, model.method, metrics, cache_policy(spec))
    knn.final_epoch = this.loop.epochs  # the plan's, re-planned or not
    health = monitors.CollapseWatch(metrics)

    def replan(at_step: int, total: int) -> None:  # the loop has re-planned itself and its lr schedule
        model.method.replan(at_step, total)
        this.saver.replans.append([at_step, total])  # a resume lays the schedules out the same way
        knn.final_epoch = this.loop.epochs

    def save(epoch: int, at_step: int) -> None:
        if not main or at_step == 0:  # no step trained (no image could be read): no encoder to write
            return
        began = time.perf_counter()
        this.saver.save(epoch, at_step)
        if spec.monitor.report:
            write_report(run_dir, knn.new_grid())
            if tracking is not None:
                tracking.images([run_dir / "report" / name for name in report.FILES if name.endswith(".png")
                                 and (run_dir / "report" / name).is_file()], at_step)
        if pacer is not None:  # the run's last save costs what this one did (report/ takes seconds on a CPU)
            probe_s = budget.PROBE_S if knn.splits is not None else 0.0
            pacer.closing_s = probe_s + time.perf_counter() - began

    if this.start_step == 0:
        began = time.perf_counter()
        knn.at_start()  # epoch 0: the random-init start of the curves (a resumed run has it already)
        if pacer is not None and knn.splits is not None:  # the calibration's kNN also built its decode caches
            pacer.eval_s = time.perf_counter() - began
    events = Events(metrics=metrics, on_step_end=model.method.on_step_end, on_log=health.check,
                    on_epoch_end=knn.at_epoch_end, on_checkpoint=save, on_replan=replan, pacer=pacer)
    try:
        result = fit(this.step, this.data.batches, this.loop, this.device, events, start_step=this.start_step)
    except Interrupted as exc:
        _close(tracking, "stopped")
        raise Interrupted(f"{exc}; the weights and training state at this step were saved to {run_dir} "
                          f"(encoder.safetensors, checkpoints/); to continue, run the same command with "
                          f"--out {run_dir} --resume auto", exc.signum) from None
    except KeyboardInterrupt:  # a second Ctrl-C: train.fit stops at once, without a checkpoint of this step
        _close(tracking, "stopped")
        progress = checkpoint.run_progress(run_dir)
        kept = (f"the last checkpoint (step {progress[0]}) is intact; --out {run_dir} --resume auto continues from it"
                if progress else f"no checkpoint was written yet; --out {run_dir} --resume auto starts the run again")
        raise Interrupted(f"interrupted again: stopped at once without a checkpoint; {kept}", signal.SIGINT) from None
    except BaseException:
        _close(tracking, "failed")
        raise
    finally:
        if metrics is not None:
            metrics.close()
    distributed.barrier()  # the run folder is complete before any rank returns
    if result.steps == 0:
        _close(tracking, "failed")
        raise UsageError(f"no training step ran: none of the {len(this.data.images)} images under "
                         f"{this.data.images.root} could be read ({this.data.policy.count} unreadable); no encoder "
                         "was written: check the files, or that they are images")
    return result, knn, health


def _close(tracking: trackers.Trackers | None, status: str) -> None:
    """The tracker runs end as the run did: stopped (a resumed run reopens them) or failed."""
    if tracking is not None:
        tracking.close(status)


def write_report(run_dir: Path, grid: online_knn.NeighbourGrid | None) -> None:
    """The report is a view of the run, not the run: a failure to draw it is a warning, never a lost run."""
    try:
        report.write(run_dir, grid)
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        console.warn(f"report/ not refreshed ({exc}); `sslcli report {run_dir}` retries")


def summary(this: Run, result: FitResult, knn: online_knn.OnlineKnn,
            health: monitors.CollapseWatch) -> dict[str, Any]:
    spec, run_dir, train_data = this.spec, this.run_dir, this.data
    if train_data.policy.summary():
        console.warn(train_data.policy.summary())
    out = {
        "run_dir": str(run_dir),
        "encoder": str(run_dir / "encoder.safetensors"),
        "method": spec.method.name,
        "encoder_name": spec.encoder.name,
        "images": train_data.trained_images,
        "skipped_images": train_data.policy.count,
        "epochs": result.epochs,
        "steps": result.steps,
        "resumed_from_step": this.start_step,
        "skipped_steps": result.skipped_steps,
        "final_loss": result.last_loss,
        "images_per_s": round(result.images_per_s, 2),
        "wall_s": round(result.wall_s, 2),
        "device": str(this.device),
        "processes": distributed.world_size(),
        "knn_top1": knn.last_top1,
        "linear_top1": knn.linear_top1(),
        "random_init_knn_top1": knn.start_top1,  # the encoder at step 0: at its --init weights when given
        "init": this.model.info.init,  # --init: kind, reference, file and sha256 of the starting weights
        "knn_chance": 1 / len(knn.splits.classes) if knn.splits is not None and knn.splits.classes else None,
        "collapse_warnings": health.warnings,
        "budget_s": spec.train.budget,
        # --budget: the steps planned after the calibration, and each re-plan [at step, new total] after.
        "planned_steps": spec.train.max_steps,
        "replans": [list(r) for r in this.saver.replans],
        "report": str(run_dir / "report") if spec.monitor.report else None,
        # Only the files that exist: neighbors.png needs a labeled eval split.
        "report_files": [name for name in report.FILES if (run_dir / "report" / name).is_file()]
        if spec.monitor.report else [],
    }
    # The budget's clock: the whole command (set-up, calibration, training, evaluations and the closing
    # linear probe above), this process; read last, so that it counts everything.
    out["command_s"] = round(time.perf_counter() - this.started, 2)
    return out


def format_text(s: dict[str, Any]) -> str:
    """The result for people: what ran, how fast, how good, and where the files are."""
    if s.get("already_complete"):
        return f"encoder {s['encoder']}  (already complete: {s['steps']} steps)"

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2f} %"

    lines = [f"{s['method']} · {s['encoder_name']} · {console.plural(s['epochs'], 'epoch')} "
             f"({console.plural(s['steps'], 'step')}) · "
             f"{s['images_per_s']:.0f} images/s · {s['wall_s']:.0f} s · final loss {s['final_loss']:.4f}"]
    if s.get("knn_top1") is not None:
        at = "starting weights" if s.get("init") else "random init"
        start = f"{at} {pct(s['random_init_knn_top1'])}, " if s.get("random_init_knn_top1") is not None else ""
        lines.append(f"kNN top-1 {pct(s['knn_top1'])} ({start}chance {pct(s.get('knn_chance'))}) · linear top-1 "
                     f"{pct(s.get('linear_top1'))}  (online evaluation on the labeled eval split)")
    else:
        lines.append("kNN/linear: no labeled eval split (DATA with train/ and val/ or test/, or --val DIR); "
                     "`sslcli probe` scores the encoder later")
    if s.get("collapse_warnings"):
        lines.append(f"collapse warnings: {s['collapse_warnings']} (see metrics.jsonl)")
    lines.append(f"encoder {s['encoder']}")
    if s.get("report"):
        lines.append(f"report  {s['report']}/ ({', '.join(s.get('report_files') or [])})")
    return "\n".join(lines)
