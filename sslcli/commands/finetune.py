"""`sslcli finetune`: a timm classifier on a pretrained encoder, trained by the same loop as pretraining.

The classifier is `timm.create_model(encoder, num_classes=C)` with the encoder's weights and a fresh
head; its loss (label smoothing or Mixup/CutMix soft targets) is the `Step` that train.fit calls, the val
split is scored every `train.eval_every` epochs (default 1, and always after the last) from fit's epoch-end
event, and the classifier is written by its checkpoint event: at the end, or at the step a SIGTERM/SIGINT
stopped the run.

With `baseline` (--baseline), the same recipe then fine-tunes the same architecture from a seeded random
init (same head init, data order and augmentation): the figure the pretrained encoder is measured against.

With `keep_projection_layers` N (--keep-projection-layers, SimCLR v2's fine-tuning from a projection layer), the
first N layers of the projection head saved beside the encoder (projector.safetensors) sit between the encoder's
pooled features and the fresh linear classifier, in the timm model's classifier slot (fc of a ResNet).

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

from sslcli import checkpoint, console, data, distributed
from sslcli.augment import Augmenter
from sslcli.encoders import EncoderInfo, apply_small_stem, rebuild_encoder
from sslcli.errors import Interrupted, RunError, UsageError
from sslcli.evaluate import topk_accuracy
from sslcli.features import eval_view
from sslcli.headers import checked_projector
from sslcli.heads import MLPLayout, classifier_on_projection, first_layers, replace_classifier
from sslcli.schedules import warmup_cosine
from sslcli.spec import FinetuneSpec, dump
from sslcli.splits import eval_splits, labeled_images, match_classes
from sslcli.train import (
    PRECISIONS,
    Events,
    FitResult,
    LoopConfig,
    Step,
    StepOut,
    fit,
    prepare_device,
    resolve_channels_last,
    resolve_device,
    resolve_precision,
    resolve_sync_free,
)
from sslcli.views import ViewConfig

CLASSIFIER_FORMAT = "sslcli.classifier.v1"
MEANINGFUL_STEPS = 100  # fewer steps than this and a fine-tune's score is mostly its fresh head's luck


def head_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the model's classifier head (fc for ResNets, head for ViTs, ...)."""
    head = model.get_classifier()
    prefix = next(name for name, module in model.named_modules() if module is head)
    return {f"{prefix}.{key}" for key in head.state_dict()}


def build_classifier(info: EncoderInfo, encoder: nn.Module, num_classes: int,
                     projection: tuple[nn.Sequential, int] | None = None) -> nn.Module:
    """The encoder's timm architecture with a fresh `num_classes` head, holding the encoder's weights. With
    `projection` (kept projection layers, their output width) the head is those layers + a fresh linear layer."""
    import timm

    model = timm.create_model(info.name, pretrained=False, num_classes=num_classes, **info.kwargs)
    if info.small_stem:
        apply_small_stem(model)
    problem = f"the encoder's weights do not fit a {info.name} classifier"
    try:
        missing, unexpected = model.load_state_dict(encoder.state_dict(), strict=False)
    except RuntimeError as exc:  # shape mismatches raise even when strict=False
        raise RunError(f"{problem} ({str(exc).strip().splitlines()[-1].strip()})") from None
    # Only the new head may be missing: anything else means the encoder did not really load.
    if unexpected or set(missing) != head_keys(model):
        raise RunError(f"{problem} (missing {sorted(set(missing) - head_keys(model))[:3]}, "
                       f"unexpected {unexpected[:3]})")
    if projection is not None:
        kept, width = projection
        replace_classifier(model, classifier_on_projection(kept, width, num_classes))
    return model


def _encoder_path(spec: FinetuneSpec) -> Path:
    path = Path(spec.encoder)
    return path / "encoder.safetensors" if path.is_dir() else path


def kept_projection(spec: FinetuneSpec) -> tuple[nn.Sequential, MLPLayout] | None:
    """The pretrained projection head saved beside the encoder and its layout, when spec.keep_projection_layers
    asks for some of its layers (None when 0)."""
    count = spec.keep_projection_layers
    if not count:
        return None
    head, layout = checkpoint.load_projector(_encoder_path(spec))
    if count > layout.num_layers:
        raise UsageError(f"--keep-projection-layers {count}: the projection head beside {spec.encoder} has "
                         f"{console.plural(layout.num_layers, 'layer')}")
    return head, layout


def labeled_splits(spec: FinetuneSpec) -> tuple[data.ImageSet, data.ImageSet, torch.Tensor]:
    """(train images, possibly a label-fraction subset; val images; val labels in train's class ids)."""
    if spec.data.train is None:
        raise UsageError("no labeled data given: sslcli finetune ENCODER --data DIR")
    train_dir, val_dir = eval_splits(spec.data.train, spec.data.val)
    train_set = labeled_images(train_dir, "train")
    val_set = labeled_images(val_dir, "eval", "--val" if spec.data.val is not None else "--data")
    if spec.data.label_fraction is not None:
        keep = data.label_fraction_subset(train_set.labels, spec.data.label_fraction, spec.train.seed)
        train_set = data.subset(train_set, keep)
    return train_set, val_set, torch.tensor(match_classes(train_set, val_set))


def make_criterion(spec: FinetuneSpec, num_classes: int) -> tuple[nn.Module, Any]:
    """(loss, mixup or None): soft-target CE after Mixup/CutMix (which applies the smoothing), else smoothed CE."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    aug = spec.augment
    if aug.mixup_alpha > 0 or aug.cutmix_alpha > 0:
        mixup = Mixup(mixup_alpha=aug.mixup_alpha, cutmix_alpha=aug.cutmix_alpha, prob=aug.mix_prob,
                      label_smoothing=aug.label_smoothing, num_classes=num_classes)
        return SoftTargetCrossEntropy(), mixup
    return LabelSmoothingCrossEntropy(smoothing=aug.label_smoothing), None


def make_optimizer(model: nn.Module, spec: FinetuneSpec) -> torch.optim.Optimizer:
    """timm's AdamW/SGD; with layer_decay its groups carry lr_scale, which fit multiplies into the lr."""
    from timm.optim import create_optimizer_v2

    opt = spec.optim
    extra = {"momentum": opt.momentum} if opt.name == "sgd" else {}
    return create_optimizer_v2(model, opt=opt.name, lr=spec.scaled_lr(), weight_decay=opt.weight_decay,
                               layer_decay=opt.layer_decay, filter_bias_and_bn=True, **extra)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, labels: torch.Tensor, paths: list[Path], info: EncoderInfo,
             device: torch.device, dtype: torch.dtype | None, policy: data.BadImagePolicy,
             offset: int = 0) -> dict[str, float]:
    """Top-1/top-5 on the eval split with the encoder's eval geometry; the model is left in train mode.

    Under torchrun the loader holds this rank's shard, starting at image `offset`; scores are gathered."""
    model.eval()
    logits, kept = [], []
    for x, idx in data.iter_batches(loader, policy, paths):
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits.append(model(eval_view(x.to(device, non_blocking=True), info)).float())
        kept.append(idx + offset)
    model.train()  # fit leaves modes to us: training resumes right after this event
    all_logits = distributed.gather_uneven(torch.cat(logits) if logits else torch.zeros(0, model.num_classes,
                                                                                        device=device))
    all_kept = distributed.gather_uneven(torch.cat(kept) if kept else torch.zeros(0, dtype=torch.long))
    if not len(all_kept):
        raise UsageError("no readable images in the eval split")
    acc = topk_accuracy(all_logits, labels[all_kept].to(device), ks=(1, 5))
    return {"top1": acc[1], "top5": acc[5]}


def output_dir(spec: FinetuneSpec) -> Path:
    out = Path(spec.out) if spec.out else Path(spec.encoder).parent / f"finetune-{time.strftime('%Y%m%d-%H%M%S')}"
    if (out / "classifier.safetensors").exists():
        raise UsageError(f"{out} already holds a fine-tuned classifier; choose another --out so nothing is overwritten")
    out.mkdir(parents=True, exist_ok=True)
    return out


def classifier_metadata(info: EncoderInfo, source: dict[str, str], *, encoder_path: Path, classes: list[str],
                        epoch: int, step: int, spec: dict[str, Any],
                        projection: tuple[int, MLPLayout] | None = None) -> dict[str, str]:
    """The encoder's metadata fields (so the classifier rebuilds the same way) plus classes and provenance; with
    kept projection layers, how many and the head's layout (heads.attach_projection rebuilds the classifier)."""
    meta = checkpoint.encoder_metadata(info, method="finetune", epoch=epoch, step=step, spec=spec)
    meta.update({
        "sslcli_format": CLASSIFIER_FORMAT,
        "num_classes": str(len(classes)),
        "classes": json.dumps(classes),
        "source_encoder": str(encoder_path),
        "source_method": source.get("method", ""),
        "source_epoch": source.get("epoch", ""),
        "source_spec": source.get("spec", ""),
    })
    if projection is not None:
        meta.update({"projection_layers": str(projection[0]), "projection_head": projection[1].to_json()})
    return meta


def _loop_config(spec: FinetuneSpec, steps_per_epoch: int, device: torch.device, name: str) -> LoopConfig:
    precision = resolve_precision(spec.train.precision, device)
    return LoopConfig(
        epochs=spec.train.epochs, steps_per_epoch=steps_per_epoch, precision=precision,
        sync_free=resolve_sync_free(spec.train.sync_free, device),
        channels_last=resolve_channels_last(spec.train.channels_last, device),
        clip_grad=spec.optim.clip_grad, log_every=spec.train.log_every,
        checkpoint_every=0,  # the classifier is written at the end (or when a signal stops the run)
        description=f"finetune {name}",
    )


def _train_loader(spec: FinetuneSpec, train_set: data.ImageSet, info: EncoderInfo, device: torch.device,
                  mixing: bool) -> tuple[Any, int]:
    """Shuffled uint8 batches; the batch shrinks to the subset's size (1 % splits can be tiny), even for Mixup.

    The batch is the global one: under torchrun each rank loads batch / world images per step."""
    world = distributed.world_size()
    batch = min(spec.train.batch_size, len(train_set))
    batch -= batch % (2 * world if mixing else world)
    if batch < 2 * world:
        raise UsageError(f"only {len(train_set)} training image(s): fine-tuning needs at least {2 * world}")
    if batch != spec.train.batch_size:
        console.info(f"batch size {batch} (the train split holds {len(train_set)} images)")
    sampler = None
    if distributed.is_distributed():
        sampler = torch.utils.data.DistributedSampler(train_set.paths, shuffle=True, seed=spec.train.seed,
                                                      drop_last=True)
    loader = data.make_loader(train_set.paths, data.storage_size_for(info.image_size), batch // world, shuffle=True,
                              drop_last=True, num_workers=data.default_workers(spec.data.num_workers),
                              seed=spec.train.seed, pin_memory=device.type == "cuda", sampler=sampler)
    return loader, batch


@dataclass
class Job:
    """Everything a fine-tuning run is built from, prepared by run() and consumed by _train()."""

    spec: FinetuneSpec
    info: EncoderInfo
    source: dict[str, str]  # the encoder's metadata, kept as provenance
    model: nn.Module
    classes: list[str]
    train_set: data.ImageSet
    val_set: data.ImageSet
    val_labels: torch.Tensor
    loader: Any
    val_loader: Any
    loop: LoopConfig
    optimizer: torch.optim.Optimizer
    lr_schedule: torch.Tensor
    criterion: nn.Module
    mixup: Any
    out: Path
    device: torch.device
    baseline: bool = False  # the random-init reference run: its own metrics file, no classifier written
    projection: MLPLayout | None = None  # the layout of the projection head whose first layers the model keeps


def run(spec: FinetuneSpec) -> dict[str, Any]:
    """Fine-tune as the spec says; writes classifier.safetensors, finetune.json and metrics.jsonl (and, with
    spec.baseline, fine-tunes a random init of the same architecture after it: baseline-metrics.jsonl)."""
    if spec.encoder is None:
        raise UsageError("no encoder given: sslcli finetune ENCODER --data DIR")
    if spec.keep_projection_layers:
        checked_projector(_encoder_path(spec))  # a missing or mismatched head: one line, before any work
    device = distributed.init(resolve_device(spec.train.device))  # joins torchrun's group when launched by it
    prepare_device(device)
    torch.manual_seed(spec.train.seed)  # the same fresh head on every rank
    encoder, info, source = checkpoint.load_encoder(spec.encoder)
    projection = kept_projection(spec)
    train_set, val_set, val_labels = labeled_splits(spec)
    classes = list(train_set.classes or [])
    layout = projection[1] if projection is not None else None
    model = build_classifier(info, encoder, len(classes), _kept(projection[0], layout, spec) if layout else None)
    criterion, mixup = make_criterion(spec, len(classes))
    loader, batch_size = _train_loader(spec, train_set, info, device, mixing=mixup is not None)
    val_part = distributed.shard(len(val_set))  # each rank scores its share of the val split
    val_loader = data.make_loader(val_set.paths[val_part.start:val_part.stop], data.storage_size_for(info.image_size),
                                  256, shuffle=False, drop_last=False, num_workers=0, seed=0)
    spec = spec.model_copy(update={"train": spec.train.model_copy(update={"batch_size": batch_size})})
    loop = _loop_config(spec, len(loader), device, info.name)
    lr = spec.scaled_lr()
    lr_schedule = warmup_cosine(lr, loop.total_steps, round(spec.optim.warmup_epochs * len(loader)),
                                final=lr * spec.optim.min_lr_ratio)
    out = output_dir(spec) if distributed.is_main() else Path(spec.out or ".")
    if distributed.is_main():
        checkpoint.atomic_write_json(out / "spec.json", dump(spec))
    kept = (f" + {console.plural(spec.keep_projection_layers, 'projection layer')} of {source.get('method')}"
            if layout else "")
    console.info(f"fine-tuning {info.name}{kept} on {len(train_set)} images, {len(classes)} classes "
                 f"({len(val_set)} eval), {console.plural(len(loader), 'step/epoch')} x "
                 f"{console.plural(spec.train.epochs, 'epoch')} on {device}; "
                 f"lr = {spec.optim.base_lr} x {batch_size} / 256 = {lr:.4g}")
    if loop.total_steps < MEANINGFUL_STEPS:
        console.warn(f"this fine-tune is only {console.plural(loop.total_steps, 'step')}: its score says little "
                     f"about the encoder; give it at least {MEANINGFUL_STEPS} steps "
                     f"(--epochs {-(-MEANINGFUL_STEPS // len(loader))} here)")
    job = Job(spec, info, source, model, classes, train_set, val_set, val_labels, loader, val_loader, loop,
              make_optimizer(model, spec), lr_schedule, criterion, mixup, out, device, projection=layout)
    result, history = _train(job)
    summary = _summary(job, result, history) if distributed.is_main() else {}
    distributed.barrier()  # the classifier is written before any rank returns (and before a baseline starts)
    if spec.baseline:
        baseline = _train_baseline(job)
        summary["baseline"] = baseline
    if distributed.is_main():
        checkpoint.atomic_write_json(out / "finetune.json", summary)
    return summary


def _kept(head: nn.Sequential, layout: MLPLayout, spec: FinetuneSpec) -> tuple[nn.Sequential, int]:
    """build_classifier's projection: the head's first keep_projection_layers layers and their output width."""
    count = spec.keep_projection_layers
    return first_layers(head, count), layout.width_after(count)


def _train_baseline(job: Job) -> dict[str, Any]:
    """The same recipe from a random init of the same architecture: the seed, head init, data order and
    augmentation of the run it is compared with (the encoder is drawn the way load_encoder builds one)."""
    spec, info = job.spec, job.info
    console.info(f"random-init baseline: fine-tuning the same {info.name} from seed {spec.train.seed} with the "
                 "same recipe")
    torch.manual_seed(spec.train.seed)
    encoder = rebuild_encoder(info)
    # The kept projection layers at a fresh init too, drawn as load_projector draws the head before loading it.
    fresh = _kept(job.projection.build(), job.projection, spec) if job.projection is not None else None
    model = build_classifier(info, encoder, len(job.classes), fresh)
    criterion, mixup = make_criterion(spec, len(job.classes))
    loader, _ = _train_loader(spec, job.train_set, info, job.device, mixing=mixup is not None)
    loop = replace(job.loop, description=f"baseline {info.name} (random init)")
    base = replace(job, model=model, loader=loader, loop=loop, optimizer=make_optimizer(model, spec),
                   criterion=criterion, mixup=mixup, baseline=True)
    result, history = _train(base)
    return {"top1": history[-1]["top1"], "top5": history[-1]["top5"],
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
    policy, mixup, criterion = data.BadImagePolicy(spec.data.on_bad_image), job.mixup, job.criterion
    # Scores are computed at full precision on CPU (as probe does), so the saved classifier re-scores to
    # exactly the reported top-1; CUDA evaluates under the training autocast, where fp32 would only cost time.
    dtype = PRECISIONS[job.loop.precision] if device.type == "cuda" else None
    history = []
    log_name = "baseline-metrics.jsonl" if job.baseline else "metrics.jsonl"
    metrics = console.MetricsLog(job.out / log_name) if distributed.is_main() else None
    who = "baseline " if job.baseline else ""
    model.to(device=device, memory_format=torch.channels_last if job.loop.channels_last else torch.contiguous_format)
    parallel = distributed.wrap(model, device)  # DDP under torchrun, the model itself otherwise
    val_part = distributed.shard(len(job.val_set))  # this rank's share of the val split (see run)

    def batches(epoch: int, skip: int = 0):  # fine-tuning never resumes mid-epoch: skip is always 0
        if isinstance(job.loader.sampler, torch.utils.data.DistributedSampler):
            job.loader.sampler.set_epoch(epoch)
        for x, idx in data.iter_batches(job.loader, policy, paths):
            yield x, labels[idx]

    def loss(batch: tuple[torch.Tensor, torch.Tensor], step: int) -> StepOut:
        x, y = augment(batch[0])[0], batch[1]
        if mixup is not None:
            even = x.shape[0] - x.shape[0] % 2  # timm's Mixup pairs samples; a skipped bad file can leave one over
            x, y = mixup(x[:even], y[:even])
        return StepOut(loss=criterion(parallel(x), y))

    def on_epoch_end(epoch: int, step: int) -> None:
        if epoch % spec.train.eval_every and epoch != spec.train.epochs:
            return
        scores = evaluate(model, job.val_loader, job.val_labels, job.val_set.paths[val_part.start:val_part.stop],
                          info, device, dtype, policy, offset=val_part.start)
        history.append({"epoch": epoch, "step": step, **scores})
        if metrics is not None:
            metrics.write({"epoch": epoch, "step": step, "val_top1": scores["top1"], "val_top5": scores["top5"]})
        console.info(f"{who}epoch {epoch}/{spec.train.epochs}: val top-1 {100 * scores['top1']:.2f}%  "
                     f"top-5 {100 * scores['top5']:.2f}%")

    def save(epoch: int, step: int) -> None:
        if distributed.is_main() and not job.baseline:
            _save_classifier(job, epoch, step)

    events = Events(metrics=metrics, on_epoch_end=on_epoch_end, on_checkpoint=save)
    try:
        result = fit(Step(model=model, loss=loss), batches, job.optimizer, job.lr_schedule, job.loop, device, events)
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
    projection = (job.spec.keep_projection_layers, job.projection) if job.projection is not None else None
    meta = classifier_metadata(job.info, job.source, encoder_path=Path(job.spec.encoder), classes=job.classes,
                               epoch=epoch, step=step, spec=dump(job.spec), projection=projection)
    checkpoint.save_encoder(job.out / "classifier.safetensors", job.model, meta)


def _summary(job: Job, result: FitResult, history: list[dict[str, Any]]) -> dict[str, Any]:
    spec, out = job.spec, job.out
    summary = {
        "classifier": str(out / "classifier.safetensors"),
        "encoder": str(spec.encoder),
        "encoder_name": job.info.name,
        "source_method": job.source.get("method"),
        "keep_projection_layers": spec.keep_projection_layers,
        "num_classes": len(job.classes),
        "chance": 1 / max(1, len(job.classes)),
        "label_fraction": spec.data.label_fraction,
        "n_train": len(job.train_set),
        "n_eval": len(job.val_set),
        "epochs": result.epochs,
        "steps": result.steps,
        "final_loss": result.last_loss,
        "top1": history[-1]["top1"],
        "top5": history[-1]["top5"],
        "best_top1": max(h["top1"] for h in history),
        "history": history,
        "images_per_s": round(result.images_per_s, 2),
        "wall_s": round(result.wall_s, 2),
        "device": str(job.device),
        "baseline": None,
    }
    checkpoint.atomic_write_json(out / "finetune.json", summary)  # written again with the baseline's figures
    return summary


def format_text(result: dict[str, Any]) -> str:
    base = result.get("baseline")
    reference = (f"  random init: val top-1 {100 * base['top1']:.2f}%  top-5 {100 * base['top5']:.2f}%" if base
                 else "")
    return (f"classifier {result['classifier']}  val top-1 {100 * result['top1']:.2f}%  top-5 "
            f"{100 * result['top5']:.2f}%{reference}  (chance {100 * result['chance']:.2f} %: 1 / {result['num_classes']} "
            f"classes)  ({console.plural(result['n_train'], 'train image')}, "
            f"{console.plural(result['steps'], 'step')}, {result['wall_s']:.0f} s)")
