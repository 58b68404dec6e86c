"""`sslcli pretrain`: data -> method -> optimizer -> restore -> checkpointer -> fit -> summary.

run() reads as those stages; each helper below builds one of them. Under torchrun every rank runs them,
rank 0 alone writes the run folder and reports.
"""

from __future__ import annotations

import collections
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sslcli import (
    budget,
    checkpoint,
    console,
    data,
    distributed,
    monitors,
    online_knn,
    report,
    semi_supervised,
)
from sslcli import resume as resumption
from sslcli.augment import Augmenter
from sslcli.encoders import EncoderInfo, build_encoder
from sslcli.errors import Interrupted, UsageError
from sslcli.methods import CONFIGS, method_class
from sslcli.methods.base import Budget, Method
from sslcli.schedules import warmup_cosine
from sslcli.spec import PretrainSpec, dump
from sslcli.train import (
    Batches,
    Events,
    LoopConfig,
    Step,
    StepOut,
    build_optimizer,
    fit,
    follow_replan,
    prepare_device,
    resolve_channels_last,
    resolve_device,
    resolve_precision,
    resolve_sync_free,
)
from sslcli.training_data import cache_policy, semi_supervised_labels, training_batches, training_images


@dataclass
class TrainingData:
    images: data.ImageSet
    batches: Batches
    steps_per_epoch: int
    policy: data.BadImagePolicy
    labels: torch.Tensor | None = None  # data.label_fraction: each image's class, -1 when unlabeled

    @property
    def num_classes(self) -> int | None:
        """The supervised head's classes in a semi-supervised run, else None."""
        return len(self.images.classes) if self.labels is not None else None


@dataclass
class Model:
    method: Method
    info: EncoderInfo
    augment: Augmenter
    generator: torch.Generator
    sync_bn: bool
    # The augmentation generators' states before each batch augmented but not yet trained (at most one:
    # the batch prepared ahead with train.prefetch on CUDA), oldest first.
    ahead: collections.deque = field(default_factory=collections.deque)


def run(spec: PretrainSpec, resume: str | None = None, force: bool = False,
        started: float | None = None) -> dict[str, Any]:
    """Pretrain an encoder as the spec says; returns the summary printed by the CLI.

    resume: None (a new run), "auto" (continue --out from its newest intact checkpoint, or start it),
    a run folder or a state file. force: resume even when the spec fingerprint differs. started: the
    time.perf_counter() at which the command started (the CLI's, so --budget counts the loading of torch
    and the spec's resolution); now when not given.
    """
    started = time.perf_counter() if started is None else started  # --budget counts from here
    if spec.data.image_size == "auto":  # spec.resolve chooses it from DATA's images; none could be read there
        training_images(spec)  # says what is wrong with DATA
        raise UsageError("data.image_size=auto: no image of DATA could be measured; set --set data.image_size=N")
    resume_dir, state = resumption.resume_point(spec, resume)
    device = distributed.init(resolve_device(spec.train.device))  # joins torchrun's group when launched by it
    prepare_device(device)
    torch.manual_seed(spec.train.seed)  # the same initial weights on every rank
    train_data = load_data(spec, device)
    spec, pacer = plan_budget(spec, state, train_data, device, started)
    loop = loop_config(spec, train_data.steps_per_epoch, device)
    model = build_model(spec, loop, train_data.steps_per_epoch, device, train_data.num_classes,
                        len(train_data.images))
    optimizer, lr_schedule = build_optimizer_and_schedule(spec, model.method, loop)
    scaler = torch.amp.GradScaler(device.type, enabled=loop.precision == "fp16")
    identity = resumption.fingerprint(spec, train_data.images, loop.total_steps)  # of the first plan
    start_step, replans = 0, pacer.history if pacer is not None else []
    if state is not None:
        start_step = resumption.restore(state, spec, identity, force, model.method, optimizer, scaler,
                                        model.generator, model.augment, device)
        if spec.train.budget is not None:  # a --budget run's own re-plans, made before this state
            replans = resumption.recorded_replans(state)
            lr_schedule = follow_replans(replans, loop, lr_schedule, model.method)
        if start_step >= loop.total_steps:
            console.info(f"{resume_dir} holds a finished run ({start_step}/{loop.total_steps} steps), so there is "
                         f"nothing to resume: {checkpoint.further_training(resume_dir)}")
            return {"run_dir": str(resume_dir), "encoder": str(resume_dir / "encoder.safetensors"),
                    "method": spec.method.name, "steps": start_step, "already_complete": True}
        console.info(f"resuming from {state} at step {start_step}/{loop.total_steps}")
    run_dir = open_run_dir(spec, resume_dir, model.method)
    announce(spec, run_dir, train_data, loop, model, device)
    saver = checkpoint.Checkpointer(run_dir, model.method, optimizer, scaler, model.info, spec.method.name,
                                    dump(spec), identity, spec.train.keep_checkpoints, lambda: rng_states(model, device),
                                    replans)
    result, knn, health = train(spec, run_dir, train_data, loop, model, optimizer, lr_schedule, scaler, saver,
                                start_step, device, pacer)
    if not distributed.is_main():
        return {}  # rank 0 reports
    return summary(spec, run_dir, train_data, result, knn, health, start_step, device, started, replans)


def load_data(spec: PretrainSpec, device: torch.device) -> TrainingData:
    images = training_images(spec)
    policy = data.BadImagePolicy(spec.data.on_bad_image)
    policy.hold()  # bad-image warnings wait until the run goes ahead (announce): a refused run prints none
    labels = semi_supervised_labels(spec, images)
    batches, steps_per_epoch = training_batches(spec, images, policy, device, labels,
                                                with_indices=CONFIGS[spec.method.name].uses_indices)
    return TrainingData(images, batches, steps_per_epoch, policy, labels)


def loop_config(spec: PretrainSpec, steps_per_epoch: int, device: torch.device) -> LoopConfig:
    precision = resolve_precision(spec.train.precision, device)
    return LoopConfig(
        epochs=spec.train.epochs,
        steps_per_epoch=steps_per_epoch,
        precision=precision,
        channels_last=resolve_channels_last(spec.train.channels_last, device),
        clip_grad=spec.optim.clip_grad,
        log_every=spec.train.log_every,
        checkpoint_every=spec.train.checkpoint_every,
        checkpoint_every_steps=spec.train.checkpoint_every_steps,
        description=f"{spec.method.name} {spec.encoder.name}",
        on_nan=spec.train.on_nan,
        max_nan_skips=spec.train.max_nan_skips,
        sync_free=resolve_sync_free(spec.train.sync_free, device),
        debug_sync=spec.train.debug_sync,
        prefetch=spec.train.prefetch,
        max_steps=spec.train.max_steps,
    )


def plan_budget(spec: PretrainSpec, state: Path | None, train_data: TrainingData, device: torch.device,
                started: float) -> tuple[PretrainSpec, budget.Pacer | None]:
    """--budget: the spec with the epochs and max_steps a calibration says fit the budget (budget.py), and the
    pacer that plans again as the run goes (None without a budget).

    A resumed run keeps the plan its first start made (recorded in its state, with the re-plans that
    follow_replans applies), so it finishes the same schedule instead of planning a new one."""
    if spec.train.budget is None:
        return spec, None
    if state is not None:
        planned = checkpoint.read_state_record(state).get("spec", {}).get("train", {})
        return _with_steps(spec, planned.get("epochs", spec.train.epochs), planned.get("max_steps")), None
    per_epoch = train_data.steps_per_epoch
    probe_loop = loop_config(spec, per_epoch, device)
    calibration_model: list[Model] = []

    def make_step() -> tuple[Step, torch.optim.Optimizer]:
        model = build_model(spec, probe_loop, per_epoch, device, train_data.num_classes,
                            len(train_data.images))
        calibration_model.append(model)
        optimizer, _ = build_optimizer_and_schedule(spec, model.method, probe_loop)
        return step_function(spec, probe_loop, model, device), optimizer

    def evaluate() -> None:
        model = calibration_model[0]
        knn = online_knn.OnlineKnn(spec, model.info, device, model.method, None, cache_policy(spec))
        if knn.splits is not None and spec.monitor.knn_every:
            knn.measure()
            evaluations.extend([knn.evaluations, knn.evaluations_after])

    evaluations: list = []  # the calibration's OnlineKnn.evaluations and evaluations_after, when it evaluates
    warmup, timed = (15, 30) if device.type == "cuda" else (2, 4)
    calibration = budget.calibrate(make_step, train_data.batches, probe_loop, device, evaluate, warmup, timed,
                                   min_timed_s=budget.timed_seconds(spec.train.budget),
                                   first_step=spec.method.untrained_epochs() * per_epoch)
    count = evaluations[0] if evaluations else (lambda epochs: 0)
    closing_s = budget.closing_seconds(spec.monitor.report, probe=bool(evaluations))
    steps = budget.plan_steps(spec.train.budget, time.perf_counter() - started, calibration, per_epoch,
                              lambda steps: count(math.ceil(steps / per_epoch)), fixed_s=calibration.eval_s + closing_s)
    # Each rank counted the time already spent on its own clock: rank 0's plan is the run's, so that every
    # rank trains the same steps (a rank with one step more would wait forever in its all-reduce).
    steps = int(distributed.all_reduce_(torch.tensor(float(steps if distributed.is_main() else 0), device=device)).item())
    epochs = math.ceil(steps / per_epoch)
    console.info(f"--budget {console.format_seconds(spec.train.budget)}: a step takes {calibration.step_s:.3g} s "
                 f"({probe_loop.precision}), an online kNN {calibration.eval_s:.1f} s: {steps} steps "
                 f"({steps / per_epoch:.2f} epochs of {per_epoch}), training for about "
                 f"{console.format_seconds(steps * calibration.step_s)}")
    after = evaluations[1] if evaluations else (lambda epochs_done, epochs: 0)
    pacer = budget.Pacer(deadline=started + spec.train.budget, eval_s=calibration.eval_s,
                         closing_s=closing_s,
                         evaluations_left=lambda step, total: after(step // per_epoch, math.ceil(total / per_epoch)),
                         device=device)
    return _with_steps(spec, epochs, steps), pacer


def follow_replans(replans: list[list[int]], loop: LoopConfig, lr_schedule: torch.Tensor,
                   method: Method) -> torch.Tensor:
    """A resumed --budget run lays its schedules out as the first start did: each recorded re-plan
    [at step, new total], in order, on the loop (epochs, max_steps), the lr schedule and the method's own."""
    for at_step, total in replans:
        lr_schedule = follow_replan(loop, lr_schedule, at_step, total)
        method.replan(at_step, total)
    return lr_schedule


def _with_steps(spec: PretrainSpec, epochs: int, max_steps: int | None) -> PretrainSpec:
    train = spec.train.model_copy(update={"epochs": epochs, "max_steps": max_steps})
    return spec.model_copy(update={"train": train})


def build_model(spec: PretrainSpec, loop: LoopConfig, steps_per_epoch: int, device: torch.device,
                num_classes: int | None = None, num_images: int = 0) -> Model:
    """The encoder (optionally --init-from), the method around it, and the augmentation drawing its views;
    with num_classes (data.label_fraction) the method also holds S4L's supervised head. num_images sizes
    the memory bank of a method that keeps one (uses_indices)."""
    encoder, info = build_encoder(spec.encoder.name, spec.data.image_size, spec.encoder.small_stem,
                                  spec.encoder.kwargs)
    if spec.init_from is not None:
        resumption.init_from(encoder, info, spec.init_from)
    method = method_class(spec.method.name)(spec.method, encoder, info.feature_dim,
                                            Budget(loop.total_steps, steps_per_epoch, num_images))
    if num_classes is not None:
        semi_supervised.attach_head(method, info.feature_dim, num_classes)
    sync_bn = spec.train.sync_bn if spec.train.sync_bn is not None else CONFIGS[spec.method.name].sync_bn
    if distributed.is_distributed() and sync_bn:
        method = distributed.sync_batchnorm(method, device)
    # On the device before the optimizer exists, so a restored optimizer state lands there too.
    method.to(device=device, memory_format=torch.channels_last if loop.channels_last else torch.contiguous_format)
    if distributed.rank():  # other ranks draw their own augmentations and masks
        torch.manual_seed(distributed.seed_for_rank(spec.train.seed))
    generator = torch.Generator(device=device).manual_seed(distributed.seed_for_rank(spec.train.seed))
    augment = Augmenter(method.views(spec.augment), info.mean, info.std, generator)
    return Model(method, info, augment, generator, sync_bn)


def build_optimizer_and_schedule(spec: PretrainSpec, method: Method,
                                 loop: LoopConfig) -> tuple[torch.optim.Optimizer, torch.Tensor]:
    """The optimizer at lr = base_lr x batch / 256 and its per-step warm-up + cosine schedule."""
    lr = spec.scaled_lr()
    optimizer = build_optimizer(method, spec.optim.name, lr, spec.optim.weight_decay, spec.optim.momentum,
                                spec.optim.trust_coeff, spec.optim.betas, method.fixed_lr_modules)
    warmup_steps = round(spec.optim.warmup_epochs * loop.steps_per_epoch)
    return optimizer, warmup_cosine(lr, loop.total_steps, warmup_steps, final=lr * spec.optim.min_lr_ratio)


def open_run_dir(spec: PretrainSpec, resume_dir: Path | None, method: Method) -> Path:
    """Rank 0 creates the run folder and writes spec.json; the other ranks train and stay quiet."""
    run_dir = resume_dir or (Path(spec.out) if spec.out else None)
    if distributed.is_main():
        run_dir = checkpoint.make_run_dir(resume_dir or spec.out, spec.method.name, resuming=resume_dir is not None)
        checkpoint.check_free_space(run_dir, method, spec.train.keep_checkpoints)
        checkpoint.atomic_write_json(run_dir / "spec.json", dump(spec))
    return run_dir


def announce(spec: PretrainSpec, run_dir: Path, train_data: TrainingData, loop: LoopConfig, model: Model,
             device: torch.device) -> None:
    world = distributed.world_size()
    on = f"{world} processes ({device.type}, sync BN {'on' if model.sync_bn else 'off'})" if world > 1 else str(device)
    train_data.policy.release()
    skipped = train_data.policy.count
    images = f"{console.plural(trained_images(train_data), 'image')}" + (f" ({skipped} unreadable skipped)"
                                                                         if skipped else "")
    console.info(f"run folder {run_dir}: {images} at {spec.data.image_size} px, {console.plural(train_data.steps_per_epoch, 'step/epoch')} x "
                 f"{console.plural(spec.train.epochs, 'epoch')} on {on} ({loop.precision})")
    if train_data.labels is not None:
        labeled = int((train_data.labels >= 0).sum())
        console.info(f"semi-supervised (S4L): {labeled} labeled images ({spec.data.label_fraction:g} of each class), "
                     f"a linear head on the features, cross entropy x {spec.train.supervised_weight:g} added to the loss")
    console.info(f"lr = base_lr {spec.optim.base_lr} x batch {spec.train.batch_size} / 256 = {spec.scaled_lr():.4g}")
    for line in short_run_warnings(spec, loop):
        console.warn(line)


def short_run_warnings(spec: PretrainSpec, loop: LoopConfig) -> list[str]:
    """What a run too short for its own settings should know before it starts."""
    total, warmup = loop.total_steps, round(spec.optim.warmup_epochs * loop.steps_per_epoch)
    lines = []
    if warmup >= total:
        lines.append(f"this run ({console.plural(total, 'step')}) is no longer than its warm-up ({warmup} steps: "
                     f"optim.warmup_epochs {spec.optim.warmup_epochs:g} x {loop.steps_per_epoch} steps/epoch), so "
                     "the learning rate never reaches its peak; train longer or lower optim.warmup_epochs")
    untrained = spec.method.untrained_epochs() * loop.steps_per_epoch
    if untrained and total <= untrained:
        lines.append(f"{spec.method.name} spends its first {console.plural(untrained, 'step')} filling its memory "
                     f"and trains from the next epoch on: this run ({console.plural(total, 'step')}) ends before, "
                     "so its encoder stays at its initialisation; train for more epochs")
    if total <= loop.log_every:
        lines.append(f"this run ({console.plural(total, 'step')}) is no longer than train.log_every "
                     f"({loop.log_every}): only its last step is logged and the curves will be single dots; "
                     f"--set train.log_every={max(1, total // 20)} logs more")
    return lines


def trained_images(train_data: TrainingData) -> int:
    """The images that train: those found less the unreadable ones skipped so far (all of them once decoded)."""
    return len(train_data.images) - train_data.policy.count


def augment_states(model: Model) -> dict[str, torch.Tensor]:
    return {"augment": model.generator.get_state(), "augment_order": model.augment.order_generator.get_state()}


def rng_states(model: Model, device: torch.device) -> dict[str, torch.Tensor]:
    """The generators a checkpoint must hold for an exact resume: the augmentation's as they were before the
    next batch to train was augmented (on CUDA that batch is already augmented, ahead of its step)."""
    rng = dict(model.ahead[0]) if model.ahead else augment_states(model)
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def step_function(spec: PretrainSpec, loop: LoopConfig, model: Model, device: torch.device) -> Step:
    """views (prepared ahead of the step with train.prefetch on CUDA) -> method forward, plus the label-free monitors on the
    steps that are logged."""
    method = model.method
    memory_format = torch.channels_last if loop.channels_last else torch.contiguous_format
    parallel = distributed.wrap(method, device)  # DDP under torchrun, the method itself otherwise
    forward = torch.compile(parallel) if spec.train.compile else parallel

    def prepare(batch: torch.Tensor | tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]):
        x, labels, indices = batch if isinstance(batch, tuple) else (batch, None, None)
        model.ahead.append(augment_states(model))  # what a checkpoint taken before this batch trains holds
        views = [v.contiguous(memory_format=memory_format) for v in model.augment(x)]
        return views, labels, indices

    def loss(prepared: tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor | None], step: int) -> StepOut:
        views, labels, indices = prepared
        model.ahead.popleft()
        out = forward(views, step) if indices is None else forward(views, step, indices)
        if labels is not None:  # data.label_fraction (S4L): the supervised term on the labeled images
            out = semi_supervised.add_supervised_term(out, method, labels, spec.train.supervised_weight)
        logged = (step + 1) % loop.log_every == 0 or step + 1 == loop.total_steps
        if spec.monitor.embeddings and logged:
            with torch.autocast(device.type, enabled=False):
                for kind, views in out.embeddings.items():
                    out.logs.update(monitors.measure(views, kind))
        return out

    return Step(model=method, loss=loss, cancel_gradients=method.cancel_gradients, prepare=prepare)


def train(spec: PretrainSpec, run_dir: Path, train_data: TrainingData, loop: LoopConfig, model: Model,
          optimizer: torch.optim.Optimizer, lr_schedule: torch.Tensor, scaler: torch.amp.GradScaler,
          saver: checkpoint.Checkpointer, start_step: int, device: torch.device, pacer: budget.Pacer | None = None):
    """fit() with the run's events: checkpoints (and the report) from rank 0, the online kNN, the monitors."""
    main = distributed.is_main()
    step = step_function(spec, loop, model, device)
    if main:  # records after the step this run continues from belong to a history that is being replaced
        resumption.drop_metrics_after(run_dir / "metrics.jsonl", start_step)
    metrics = console.MetricsLog(run_dir / "metrics.jsonl") if main else None
    knn = online_knn.OnlineKnn(spec, model.info, device, model.method, metrics, cache_policy(spec))
    knn.final_epoch = loop.epochs  # the plan's, re-planned or not
    health = monitors.CollapseWatch(metrics)

    def replan(at_step: int, total: int) -> None:  # the loop has re-planned itself and its lr schedule
        model.method.replan(at_step, total)
        knn.final_epoch = loop.epochs

    def save(epoch: int, at_step: int) -> None:
        if not main:
            return
        began = time.perf_counter()
        saver.save(epoch, at_step)
        if spec.monitor.report:
            write_report(run_dir, knn.new_grid())
        if pacer is not None:  # the run's last save costs what this one did (report/ takes seconds on a CPU)
            probe_s = budget.PROBE_S if knn.splits is not None else 0.0
            pacer.closing_s = probe_s + time.perf_counter() - began

    if start_step == 0:
        began = time.perf_counter()
        knn.at_start()  # epoch 0: the random-init start of the curves (a resumed run has it already)
        if pacer is not None and knn.splits is not None:  # the calibration's kNN also built its decode caches
            pacer.eval_s = time.perf_counter() - began
    events = Events(metrics=metrics, on_step_end=model.method.on_step_end, on_log=health.check,
                    on_epoch_end=knn.at_epoch_end, on_checkpoint=save, on_replan=replan)
    try:
        result = fit(step, train_data.batches, optimizer, lr_schedule, loop, device, events,
                     start_step=start_step, scaler=scaler, pacer=pacer)
    except Interrupted as exc:
        raise Interrupted(f"{exc}; the weights and training state at this step were saved to {run_dir} "
                          f"(encoder.safetensors, checkpoints/); to continue, run the same command with "
                          f"--out {run_dir} --resume auto", exc.signum) from None
    except KeyboardInterrupt:  # a second Ctrl-C: train.fit stops at once, without a checkpoint of this step
        progress = checkpoint.run_progress(run_dir)
        kept = (f"the last checkpoint (step {progress[0]}) is intact; --out {run_dir} --resume auto continues from it"
                if progress else f"no checkpoint was written yet; --out {run_dir} --resume auto starts the run again")
        raise Interrupted(f"interrupted again: stopped at once without a checkpoint; {kept}", signal.SIGINT) from None
    finally:
        if metrics is not None:
            metrics.close()
    distributed.barrier()  # the run folder is complete before any rank returns
    return result, knn, health


def write_report(run_dir: Path, grid: online_knn.NeighbourGrid | None) -> None:
    """The report is a view of the run, not the run: a failure to draw it is a warning, never a lost run."""
    try:
        report.write(run_dir, grid)
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        console.warn(f"report/ not refreshed ({exc}); `sslcli report {run_dir}` retries")


def summary(spec: PretrainSpec, run_dir: Path, train_data: TrainingData, result, knn: online_knn.OnlineKnn,
            health: monitors.CollapseWatch, start_step: int, device: torch.device,
            started: float, replans: list[list[int]] | None = None) -> dict[str, Any]:
    if train_data.policy.summary():
        console.warn(train_data.policy.summary())
    out = {
        "run_dir": str(run_dir),
        "encoder": str(run_dir / "encoder.safetensors"),
        "method": spec.method.name,
        "encoder_name": spec.encoder.name,
        "images": trained_images(train_data),
        "skipped_images": train_data.policy.count,
        "epochs": result.epochs,
        "steps": result.steps,
        "resumed_from_step": start_step,
        "skipped_steps": result.skipped_steps,
        "final_loss": result.last_loss,
        "images_per_s": round(result.images_per_s, 2),
        "wall_s": round(result.wall_s, 2),
        "device": str(device),
        "processes": distributed.world_size(),
        "knn_top1": knn.last_top1,
        "linear_top1": knn.linear_top1(),
        "random_init_knn_top1": knn.start_top1,
        "knn_chance": 1 / len(knn.splits.classes) if knn.splits is not None and knn.splits.classes else None,
        "collapse_warnings": health.warnings,
        "budget_s": spec.train.budget,
        # --budget: the steps planned after the calibration, and each re-plan [at step, new total] after.
        "planned_steps": spec.train.max_steps,
        "replans": replans or [],
        "report": str(run_dir / "report") if spec.monitor.report else None,
        # Only the files that exist: neighbors.png needs a labeled eval split.
        "report_files": [name for name in report.FILES if (run_dir / "report" / name).is_file()]
        if spec.monitor.report else [],
    }
    # The budget's clock: the whole command (set-up, calibration, training, evaluations and the closing
    # linear probe above), this process; read last, so that it counts everything.
    out["command_s"] = round(time.perf_counter() - started, 2)
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
        start = f"random init {pct(s['random_init_knn_top1'])}, " if s.get("random_init_knn_top1") is not None else ""
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
