"""`sslcli finetune`: a timm classifier on a pretrained encoder, trained by the same loop as pretraining.

The classifier is `timm.create_model(encoder, num_classes=C)` with the encoder's weights and a fresh head
(finetuning.py); its loss is the `Step` that train.fit calls, the val split is scored every
`train.eval_every` epochs (default 1, and always after the last) from fit's epoch-end event, and the
classifier is written by its checkpoint event: at the end, or at the step a SIGTERM/SIGINT stopped the run.

With `baseline` (--baseline), the same recipe then fine-tunes the same architecture from a seeded random
init (same head init, data order and augmentation): the figure the pretrained encoder is measured against.

With `keep_projection_layers` N (--keep-projection-layers, SimCLR v2's fine-tuning from a projection layer), the
first N layers of the projection head saved beside the encoder (projector.safetensors) sit between the encoder's
pooled features and the fresh linear classifier, in the timm model's classifier slot (fc of a ResNet).

With `sla.enabled` (--sla, SLA: label_augmentation.py) the classifier has 4 x C joint (class, rotation) outputs,
each training batch holds every image at its four rotations, and scoring is SLA's aggregated inference; with
`sla.self_distill` (--sla-distill) a fifth block of C outputs is the self-distillation head, the one saved.

With `distill.teacher` (--distill-from CLASSIFIER --unlabeled DIR, SimCLR v2's distillation:
teacher_distillation.py) the student (ENCODER plus a fresh head) trains on the teacher's soft labels of the
unlabeled images (by default the teacher labels the student's own augmented view every step), plus
`distill.labeled_weight` x the labeled images' loss.

Under torchrun the classifier is wrapped in DDP, each rank trains on a DistributedSampler's share of
the global batch (train.batch_size), the val split is scored in shards and gathered, and rank 0 writes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sslcli import checkpoint, console, data, distributed, label_augmentation, trackers, weights
from sslcli import teacher_distillation as distillation
from sslcli.augment import Augmenter
from sslcli.device import PRECISIONS, prepare_device, resolve_device
from sslcli.encoders import EncoderInfo, rebuild_encoder
from sslcli.errors import Interrupted, UsageError
from sslcli.files import atomic_write_json
from sslcli.finetuning import (
    Predict,
    Scorer,
    build_classifier,
    classifier_metadata,
    encoder_path,
    kept_layers,
    kept_projection,
    load_classifier,
    make_criterion,
    make_optimizer,
    train_loader,
)
from sslcli.headers import checked_classifier, checked_projector
from sslcli.heads import MLPLayout
from sslcli.schedules import warmup_cosine
from sslcli.spec import FinetuneSpec, dump
from sslcli.splits import labeled_splits
from sslcli.step import StepOut
from sslcli.train import Events, FitResult, LoopConfig, Step, fit
from sslcli.views import ViewConfig

MEANINGFUL_STEPS = 100  # fewer steps than this and a fine-tune's score is mostly its fresh head's luck


@dataclass
class Job:
    """Everything a fine-tuning run is built from, prepared by run() and consumed by _train()."""

    spec: FinetuneSpec
    info: EncoderInfo
    source: dict[str, str]  # the encoder's metadata, kept as provenance
    model: nn.Module
    classes: list[str]
    train_set: data.ImageSet
    loader: Any
    score: Scorer
    loop: LoopConfig
    out: Path
    device: torch.device
    baseline: bool = False  # the random-init reference run: its own metrics file, no classifier written
    projection: MLPLayout | None = None  # the layout of the projection head whose first layers the model keeps
    tracking: trackers.Trackers | None = None  # --log-to: the fine-tune's metrics (not the baseline's) go there too
    distiller: Distiller | None = None  # distillation: the teacher and, precomputed, its targets


def run(spec: FinetuneSpec) -> dict[str, Any]:
    """Fine-tune as the spec says; writes classifier.safetensors, finetune.json and metrics.jsonl (and, with
    spec.baseline, fine-tunes a random init of the same architecture after it: baseline-metrics.jsonl)."""
    if spec.encoder is None:
        raise UsageError("no encoder given: sslcli finetune ENCODER --data DIR")
    if spec.data.path is None:
        raise UsageError("no labeled data given: sslcli finetune ENCODER --data DIR")
    if spec.keep_projection_layers:
        checked_projector(encoder_path(spec))  # a missing or mismatched head: one line, before any work
    if spec.distill.teacher is not None:
        checked_classifier(spec.distill.teacher)  # an encoder or any other file: one line, before any work
        data.find_images(spec.distill.unlabeled, "--unlabeled")  # a missing or empty folder: before any work
    trackers.check_installed(spec.logging.to)
    device = distributed.init(resolve_device(spec.train.device))  # joins torchrun's group when launched by it
    prepare_device(device)
    torch.manual_seed(spec.train.seed)  # the same fresh head on every rank
    encoder, info, source = weights.load_encoder_ref(spec.encoder)
    projection = kept_projection(spec)
    train_set, val_set, val_labels = labeled_splits(spec.data.path, spec.data.val, spec.data.label_fraction,
                                                    spec.train.seed)
    classes = list(train_set.classes or [])
    layout = projection[1] if projection is not None else None
    kept = kept_layers(projection[0], layout, spec.keep_projection_layers) if layout else None
    model = make_model(spec, info, encoder, len(classes), kept)
    distiller = None
    if spec.distill.teacher is not None:
        train_set, distiller = distillation_set(spec, train_set, classes, info, device)
    mixing = spec.augment.mixup_alpha > 0 or spec.augment.cutmix_alpha > 0
    loader, batch_size = train_loader(spec, train_set, info, device, mixing=mixing)
    spec = spec.model_copy(update={"train": spec.train.model_copy(update={"batch_size": batch_size})})
    loop = LoopConfig.from_spec(spec.train, spec.optim.clip_grad, len(loader), device, f"finetune {info.name}")
    # Scores are computed at full precision on CPU (as probe does), so the saved classifier re-scores to
    # exactly the reported top-1; CUDA evaluates under the training autocast, where fp32 would only cost time.
    dtype = PRECISIONS[loop.precision] if device.type == "cuda" else None
    score = Scorer(val_set, val_labels, info, device, dtype, predictor(spec, len(classes)))
    out = output_dir(spec) if distributed.is_main() else Path(spec.out or ".")
    if distributed.is_main():
        atomic_write_json(out / "spec.json", dump(spec))
    tracking = trackers.open_trackers(spec.logging.to, out, dump(spec), spec.logging.experiment, device=device)
    job = Job(spec, info, source, model, classes, train_set, loader, score, loop, out, device, projection=layout,
              tracking=tracking, distiller=distiller)
    announce(job, len(val_set))
    status = "failed"
    try:
        result, history = _train(job)
        summary = _summary(job, result, history, len(val_set)) if distributed.is_main() else {}
        distributed.barrier()  # the classifier is written before any rank returns (and before a baseline starts)
        try:
            if spec.baseline:
                summary["baseline"] = _train_baseline(job)
        finally:  # once: with the baseline's figures, or without them when it was interrupted
            if distributed.is_main():
                atomic_write_json(out / "finetune.json", summary)
        if tracking is not None:
            tracking.finish(summary, [out / "classifier.safetensors", out / "finetune.json"])
        status = "finished"
    except (Interrupted, KeyboardInterrupt):
        status = "stopped"
        raise
    finally:
        if tracking is not None and status != "finished":
            tracking.close(status)
    return summary


def make_model(spec: FinetuneSpec, info: EncoderInfo, encoder: nn.Module, num_classes: int,
               kept: tuple[nn.Sequential, int] | None) -> nn.Module:
    """The classifier: C outputs, or SLA's 4C joint outputs (+ C for its self-distillation head)."""
    outputs = (label_augmentation.outputs(num_classes, spec.sla.self_distill) if spec.sla.enabled else num_classes)
    return build_classifier(info, encoder, outputs, kept)


def predictor(spec: FinetuneSpec, num_classes: int) -> Predict | None:
    """How the classifier answers on eval images: SLA's aggregated inference, else its own logits (None)."""
    if not spec.sla.enabled:
        return None
    return lambda model, x: label_augmentation.predictions(model, x, num_classes, spec.sla.self_distill)


@dataclass
class Distiller:
    """A distillation run's teacher: its model and metadata, the unlabeled rows (train_set's first n_unlabeled),
    its precomputed targets of them (teacher_view "center"; None when it labels each augmented view), and what the
    summary says of it."""

    model: nn.Module
    meta: dict[str, str]
    info: EncoderInfo
    n_unlabeled: int
    targets: torch.Tensor | None
    summary: dict[str, Any]


def distillation_set(spec: FinetuneSpec, labeled: data.ImageSet, classes: list[str], info: EncoderInfo,
                     device: torch.device) -> tuple[data.ImageSet, Distiller]:
    """The student's training set (the unlabeled images, then the labeled ones when their loss is on; labels
    -1 on the unlabeled rows) and its teacher (with teacher_view "center", its probabilities of the unlabeled
    rows, computed here once)."""
    path = Path(spec.distill.teacher)
    teacher, teacher_info, meta = load_classifier(path)
    teacher_classes = json.loads(meta.get("classes", "[]"))
    if teacher_classes != classes:
        raise UsageError(f"the teacher {path} was fine-tuned on the classes {teacher_classes[:5]}..., --data has "
                         f"{classes[:5]}...: the student learns the teacher's classes, so they must be the same")
    if len(teacher_info.mean) != len(info.mean):
        raise UsageError(f"the teacher {path} takes {len(teacher_info.mean)}-channel images, the student "
                         f"{len(info.mean)}-channel ones: they must see the same images")
    unlabeled = data.find_images(spec.distill.unlabeled, "--unlabeled")
    targets, paths = None, unlabeled.paths
    if spec.distill.teacher_view == "center":
        targets, paths = distillation.teacher_probabilities(teacher, meta, teacher_info, unlabeled,
                                                            spec.distill.temperature, device,
                                                            data.BadImagePolicy(spec.data.on_bad_image))
    labeled_rows = spec.distill.labeled_weight > 0
    train_set = data.ImageSet(root=unlabeled.root, paths=paths + (labeled.paths if labeled_rows else []),
                              labels=[-1] * len(paths) + (list(labeled.labels or []) if labeled_rows else []),
                              classes=classes)
    summary = {"path": str(path), "encoder_name": teacher_info.name, "n_unlabeled": len(paths),
               "teacher_view": spec.distill.teacher_view, "temperature": spec.distill.temperature,
               "labeled_weight": spec.distill.labeled_weight}
    return train_set, Distiller(teacher, meta, teacher_info, len(paths), targets, summary)


def output_dir(spec: FinetuneSpec) -> Path:
    out = Path(spec.out) if spec.out else Path(spec.encoder).parent / f"finetune-{time.strftime('%Y%m%d-%H%M%S')}"
    if (out / "classifier.safetensors").exists():
        raise UsageError(f"{out} already holds a fine-tuned classifier; choose another --out so nothing is overwritten")
    out.mkdir(parents=True, exist_ok=True)
    return out


def announce(job: Job, n_eval: int) -> None:
    spec, loop = job.spec, job.loop
    kept = (f" + {console.plural(spec.keep_projection_layers, 'projection layer')} of {job.source.get('method')}"
            if job.projection else "")
    if spec.sla.enabled:
        kept += f", SLA ({'joint + self-distillation heads' if spec.sla.self_distill else 'joint head'}, 4 rotations)"
    if job.distiller is not None:
        teacher = job.distiller.summary
        labels = ("its labels of each augmented view" if spec.distill.teacher_view == "augmented"
                  else "its labels of the centre crops")
        kept += (f", distilling {teacher['encoder_name']} teacher {teacher['path']} "
                 f"({teacher['n_unlabeled']} unlabeled images, {labels}, T {spec.distill.temperature:g})")
    per_epoch = loop.steps_per_epoch
    console.info(f"fine-tuning {job.info.name}{kept} on {len(job.train_set)} images, {len(job.classes)} classes "
                 f"({n_eval} eval), {console.plural(per_epoch, 'step/epoch')} x "
                 f"{console.plural(spec.train.epochs, 'epoch')} on {job.device}; "
                 f"lr = {spec.optim.base_lr} x {spec.train.batch_size} / 256 = {spec.scaled_lr():.4g}")
    if loop.total_steps < MEANINGFUL_STEPS:
        console.warn(f"this fine-tune is only {console.plural(loop.total_steps, 'step')}: its score says little "
                     f"about the encoder; give it at least {MEANINGFUL_STEPS} steps "
                     f"(--epochs {-(-MEANINGFUL_STEPS // per_epoch)} here)")


def _train_baseline(job: Job) -> dict[str, Any]:
    """The same recipe from a random init of the same architecture: the seed, head init, data order and
    augmentation of the run it is compared with (the encoder is drawn the way load_encoder builds one)."""
    spec, info = job.spec, job.info
    console.info(f"random-init baseline: fine-tuning the same {info.name} from seed {spec.train.seed} with the "
                 "same recipe")
    torch.manual_seed(spec.train.seed)
    encoder = rebuild_encoder(info)
    # The kept projection layers at a fresh init too, drawn as load_projector draws the head before loading it.
    fresh = (kept_layers(job.projection.build(), job.projection, spec.keep_projection_layers)
             if job.projection is not None else None)
    model = make_model(spec, info, encoder, len(job.classes), fresh)
    mixing = spec.augment.mixup_alpha > 0 or spec.augment.cutmix_alpha > 0
    loader, _ = train_loader(spec, job.train_set, info, job.device, mixing=mixing)
    loop = replace(job.loop, description=f"baseline {info.name} (random init)")
    result, history = _train(replace(job, model=model, loader=loader, loop=loop, baseline=True))
    return {"top1": history[-1]["top1"], "top5": history[-1]["top5"], **extra_scores(history[-1]),
            "best_top1": max(h["top1"] for h in history), "final_loss": result.last_loss,
            "history": history, "seed": spec.train.seed, "wall_s": round(result.wall_s, 2)}


def _train(job: Job) -> tuple[FitResult, list[dict[str, Any]]]:
    """train.fit with a supervised loss; the val split is scored every train.eval_every epochs and after the
    last, and the classifier is saved at the end or at the step a signal stopped the run."""
    spec, model, info, device = job.spec, job.model, job.info, job.device
    labels, paths = torch.tensor(job.train_set.labels), job.train_set.paths
    view = ViewConfig(size=info.image_size, scale=spec.augment.scale, ratio=spec.augment.ratio,
                      hflip_p=spec.augment.hflip_p, jitter_p=0, gray_p=0, blur_p=0, solarize_p=0)
    seed = distributed.seed_for_rank(spec.train.seed)  # each rank draws its own crops and flips
    augment = Augmenter([view], info.mean, info.std, torch.Generator(device=device).manual_seed(seed))
    policy = data.BadImagePolicy(spec.data.on_bad_image)
    criterion, mixup = make_criterion(spec, len(job.classes))
    history = []
    also = job.tracking.record if job.tracking is not None and not job.baseline else None
    metrics = (console.MetricsLog(job.out / ("baseline-metrics.jsonl" if job.baseline else "metrics.jsonl"), also)
               if distributed.is_main() else None)
    who = "baseline " if job.baseline else ""
    model.to(device=device, memory_format=torch.channels_last if job.loop.channels_last else torch.contiguous_format)
    parallel = distributed.wrap(model, device)  # DDP under torchrun, the model itself otherwise

    def batches(epoch: int, skip: int = 0):  # fine-tuning never resumes mid-epoch: skip is always 0
        if isinstance(job.loader.sampler, torch.utils.data.DistributedSampler):
            job.loader.sampler.set_epoch(epoch)
        for x, idx in data.iter_batches(job.loader, policy, paths):
            yield x, labels[idx], idx

    num_classes, sla = len(job.classes), spec.sla
    distiller = job.distiller
    targets = distiller.targets.to(device) if distiller is not None and distiller.targets is not None else None
    online = (distillation.OnlineTeacher(distiller.model, distiller.meta, distiller.info, info,
                                         spec.distill.temperature, device)
              if distiller is not None and targets is None else None)

    def loss(batch: tuple[torch.Tensor, torch.Tensor], step: int) -> StepOut:
        x, y = augment(batch[0])[0], batch[1]
        if sla.enabled:
            logits = parallel(label_augmentation.rotated(x))
            with torch.autocast(device.type, enabled=False):
                return StepOut(loss=label_augmentation.loss(logits, y, num_classes, criterion, sla.self_distill,
                                                            sla.temperature))
        if distiller is not None:
            return distill_loss(x, parallel(x), y, batch[2])
        if mixup is not None:
            even = x.shape[0] - x.shape[0] % 2  # timm's Mixup pairs samples; a skipped bad file can leave one over
            x, y = mixup(x[:even], y[:even])
        logits = parallel(x)
        # The loss in float32, as every pretraining loss (sslcli.losses): under bf16 autocast timm's
        # LabelSmoothingCrossEntropy would run its log_softmax and means in bf16, and the loss it reports
        # would have 8 bits of mantissa (2.21875 for anything from 2.2109 to 2.2266).
        with torch.autocast(device.type, enabled=False):
            return StepOut(loss=criterion(logits.float(), y))

    def distill_loss(x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> StepOut:
        """The teacher's soft labels on the unlabeled rows (of the views x the student saw, or precomputed),
        + labeled_weight x the labeled rows' loss."""
        unlabeled = y < 0
        n_unlabeled = int(unlabeled.sum())  # one host read decides both halves
        logs = {}
        if n_unlabeled:  # the teacher's forward under the step's autocast, as the student's
            soft_targets = online(x[unlabeled]) if online is not None else targets[idx[unlabeled]]
        with torch.autocast(device.type, enabled=False):
            total = logits.float().sum() * 0  # a batch of one kind still gives a loss with a gradient
            if n_unlabeled:
                soft = distillation.soft_cross_entropy(logits[unlabeled], soft_targets, spec.distill.temperature)
                total, logs["distill"] = total + soft, soft.detach()
            if n_unlabeled < len(y):
                hard = criterion(logits[~unlabeled].float(), y[~unlabeled])
                total, logs["labeled"] = total + spec.distill.labeled_weight * hard, hard.detach()
        return StepOut(loss=total, logs=logs)

    def on_epoch_end(epoch: int, step: int) -> None:
        if epoch % spec.train.eval_every and epoch != spec.train.epochs:
            return
        scores = job.score(model, policy)
        history.append({"epoch": epoch, "step": step, **scores})
        if metrics is not None:
            metrics.write({"epoch": epoch, "step": step, "val_top1": scores["top1"], "val_top5": scores["top5"],
                           **{f"val_{key}": value for key, value in extra_scores(scores).items()}})
        console.info(f"{who}epoch {epoch}/{spec.train.epochs}: val top-1 {100 * scores['top1']:.2f}%  "
                     f"top-5 {100 * scores['top5']:.2f}%")

    def save(epoch: int, step: int) -> None:
        if distributed.is_main() and not job.baseline:
            _save_classifier(job, epoch, step)

    lr = spec.scaled_lr()
    lr_schedule = warmup_cosine(lr, job.loop.total_steps, round(spec.optim.warmup_epochs * job.loop.steps_per_epoch),
                                final=lr * spec.optim.min_lr_ratio)
    step = Step(model=model, loss=loss, optimizer=make_optimizer(model, spec), lr_schedule=lr_schedule)
    try:
        result = fit(step, batches, job.loop, device, Events(metrics=metrics, on_epoch_end=on_epoch_end,
                                                             on_checkpoint=save))
    except Interrupted as exc:
        if job.baseline:
            raise Interrupted(f"{exc} during the random-init baseline; the fine-tuned classifier was saved "
                              f"before it, to {job.out / 'classifier.safetensors'}", exc.signum) from None
        raise Interrupted(f"{exc}; the classifier at this step was saved to {job.out / 'classifier.safetensors'} "
                          "(a partial fine-tune: fine-tuning does not resume; run it again for a full one)",
                          exc.signum) from None
    finally:
        if metrics is not None:
            metrics.close()
    if policy.summary():
        console.warn(policy.summary())
    return result, history


def _save_classifier(job: Job, epoch: int, step: int) -> None:
    """The classifier file: with SLA the 4C joint model (its metadata says so), with SLA+SD the C-way model
    of the self-distillation head alone (a plain classifier)."""
    spec, model, sla = job.spec, job.model, None
    projection = (spec.keep_projection_layers, job.projection) if job.projection is not None else None
    if spec.sla.enabled:
        sla = {"rotations": label_augmentation.ROTATIONS, "head": "self-distilled" if spec.sla.self_distill else "joint"}
        if spec.sla.self_distill:
            model = label_augmentation.single_head_model(model, len(job.classes))
    meta = classifier_metadata(job.info, job.source, encoder_path=Path(spec.encoder), classes=job.classes,
                               epoch=epoch, step=step, spec=dump(spec), projection=projection, sla=sla)
    if spec.distill.teacher is not None:  # provenance: the student learned this classifier's labels
        meta["distill_teacher"] = str(spec.distill.teacher)
    checkpoint.save_encoder(job.out / "classifier.safetensors", model, meta)


def extra_scores(scores: dict[str, Any]) -> dict[str, Any]:
    """The further predictions' top-1 of an evaluation (SLA+SD: aggregated_top1)."""
    return {key: value for key, value in scores.items() if key.endswith("_top1") and key != "top1"}


def _summary(job: Job, result: FitResult, history: list[dict[str, Any]], n_eval: int) -> dict[str, Any]:
    spec, out = job.spec, job.out
    return {
        "classifier": str(out / "classifier.safetensors"),
        "encoder": str(spec.encoder),
        "encoder_name": job.info.name,
        "source_method": job.source.get("method"),
        "keep_projection_layers": spec.keep_projection_layers,
        "num_classes": len(job.classes),
        "chance": 1 / max(1, len(job.classes)),
        "label_fraction": spec.data.label_fraction,
        "n_train": len(job.train_set),
        "n_eval": n_eval,
        "epochs": result.epochs,
        "steps": result.steps,
        "final_loss": result.last_loss,
        "top1": history[-1]["top1"],
        "top5": history[-1]["top5"],
        **extra_scores(history[-1]),
        "sla": job.spec.sla.model_dump() if job.spec.sla.enabled else None,
        "distill": distillation_summary(job),
        "best_top1": max(h["top1"] for h in history),
        "history": history,
        "images_per_s": round(result.images_per_s, 2),
        "wall_s": round(result.wall_s, 2),
        "device": str(job.device),
        "baseline": None,
    }


def distillation_summary(job: Job) -> dict[str, Any] | None:
    """The teacher, and how often the student's top class is the teacher's on the unlabeled images' centre crops
    (each model at its own input size)."""
    distiller = job.distiller
    if distiller is None:
        return None
    policy = data.BadImagePolicy(job.spec.data.on_bad_image)
    targets, paths = distiller.targets, job.train_set.paths[:distiller.n_unlabeled]
    if targets is None:  # the teacher labeled augmented views: one pass over the centre crops to compare
        unlabeled = data.ImageSet(root=job.train_set.root, paths=paths, labels=None, classes=None)
        targets, paths = distillation.teacher_probabilities(distiller.model, distiller.meta, distiller.info,
                                                            unlabeled, job.spec.distill.temperature, job.device,
                                                            policy)
    agree = distillation.agreement(job.model, job.info, paths, targets, job.device, policy)
    return {**distiller.summary, "agreement": agree}


def format_text(result: dict[str, Any]) -> str:
    base = result.get("baseline")
    reference = (f"  random init: val top-1 {100 * base['top1']:.2f}%  top-5 {100 * base['top5']:.2f}%" if base
                 else "")
    if result.get("aggregated_top1") is not None:
        reference += f"  (SLA joint head, aggregated: top-1 {100 * result['aggregated_top1']:.2f}%)"
    if result.get("distill"):
        reference += f"  (top class agrees with the teacher's on {100 * result['distill']['agreement']:.1f}% of --unlabeled)"
    return (f"classifier {result['classifier']}  val top-1 {100 * result['top1']:.2f}%  top-5 "
            f"{100 * result['top5']:.2f}%{reference}  (chance {100 * result['chance']:.2f} %: 1 / {result['num_classes']} "
            f"classes)  ({console.plural(result['n_train'], 'train image')}, "
            f"{console.plural(result['steps'], 'step')}, {result['wall_s']:.0f} s)")
