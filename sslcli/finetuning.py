"""What a fine-tuning run is built from: a timm classifier on a pretrained encoder (optionally with the first
layers of its projection head, SimCLR v2), its loss (label smoothing or Mixup/CutMix), optimizer (with
layer-wise lr decay), training batches, scoring on the eval split, and the classifier file's metadata.
`sslcli finetune` (commands/finetune.py) puts them together with train.fit."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sslcli import checkpoint, console, data, distributed
from sslcli.encoders import EncoderInfo, apply_small_stem
from sslcli.errors import RunError, UsageError
from sslcli.evaluate import topk_accuracy
from sslcli.features import eval_view
from sslcli.headers import CLASSIFIER_FORMAT, checked_classifier
from sslcli.heads import (
    MLPLayout,
    attach_projection,
    classifier_on_projection,
    first_layers,
    replace_classifier,
)
from sslcli.spec import FinetuneSpec


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


def encoder_path(spec: FinetuneSpec) -> Path:
    path = Path(spec.encoder)
    return path / "encoder.safetensors" if path.is_dir() else path


def kept_projection(spec: FinetuneSpec) -> tuple[nn.Sequential, MLPLayout] | None:
    """The pretrained projection head saved beside the encoder and its layout, when spec.keep_projection_layers
    asks for some of its layers (None when 0)."""
    count = spec.keep_projection_layers
    if not count:
        return None
    head, layout = checkpoint.load_projector(encoder_path(spec))
    if count > layout.num_layers:
        raise UsageError(f"--keep-projection-layers {count}: the projection head beside {spec.encoder} has "
                         f"{console.plural(layout.num_layers, 'layer')}")
    return head, layout


def kept_layers(head: nn.Sequential, layout: MLPLayout, count: int) -> tuple[nn.Sequential, int]:
    """build_classifier's projection: the head's first `count` layers and their output width."""
    return first_layers(head, count), layout.width_after(count)


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


def train_loader(spec: FinetuneSpec, train_set: data.ImageSet, info: EncoderInfo, device: torch.device,
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
                              seed=spec.train.seed, pin_memory=device.type == "cuda", sampler=sampler,
                              channels=info.channels, interpolation=info.interpolation)
    return loader, batch


class Scorer:
    """Top-1/top-5 of a classifier on the eval split, with the encoder's eval geometry. Under torchrun each
    rank scores its shard of the split and the scores are gathered."""

    def __init__(self, val_set: data.ImageSet, val_labels: torch.Tensor, info: EncoderInfo, device: torch.device,
                 dtype: torch.dtype | None, predict: Predict | None = None):
        part = distributed.shard(len(val_set))  # this rank's share of the eval split
        self.paths, self.offset = val_set.paths[part.start:part.stop], part.start
        self.loader = data.make_loader(self.paths, data.storage_size_for(info.image_size), 256, shuffle=False,
                                       drop_last=False, num_workers=0, seed=0, channels=info.channels,
                                       interpolation=info.interpolation)
        self.labels, self.info, self.device, self.dtype = val_labels, info, device, dtype
        self.predict = predict or plain_prediction

    @torch.no_grad()
    def __call__(self, model: nn.Module, policy: data.BadImagePolicy) -> dict[str, float]:
        """The scores (top1, top5, and <name>_top1 of each further prediction `predict` gives); unreadable images
        follow `policy` (the run's); the model is left in train mode (training resumes right after)."""
        model.eval()
        logits: dict[str, list[torch.Tensor]] = {}
        kept = []
        device = self.device
        for x, idx in data.iter_batches(self.loader, policy, self.paths):
            with torch.autocast(device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
                for name, value in self.predict(model, eval_view(x.to(device, non_blocking=True), self.info)).items():
                    logits.setdefault(name, []).append(value.float())
            kept.append(idx + self.offset)
        model.train()
        all_kept = distributed.gather_uneven(torch.cat(kept) if kept else torch.zeros(0, dtype=torch.long))
        if not len(all_kept):
            raise UsageError("no readable images in the eval split")
        scores = {}
        for name, parts in logits.items():
            acc = topk_accuracy(distributed.gather_uneven(torch.cat(parts)), self.labels[all_kept].to(device),
                                ks=(1, 5))
            scores.update({"top1": acc[1], "top5": acc[5]} if not name else {f"{name}_top1": acc[1]})
        return scores


Predict = Callable[[nn.Module, torch.Tensor], dict[str, torch.Tensor]]


def plain_prediction(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """A classifier's own answer: its logits (the Scorer's default)."""
    return {"": model(x)}


def load_classifier(path: Path) -> tuple[nn.Module, EncoderInfo, dict[str, str]]:
    """A classifier.safetensors written by sslcli finetune, rebuilt from its metadata (its architecture, kept
    projection layers, SLA's joint head) and loaded strictly, in eval mode: UsageError, one line, for any
    other file."""
    import timm
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from sslcli.headers import ENCODER_FORMAT

    meta = checked_classifier(path)
    info = checkpoint.info_from_metadata({**meta, "sslcli_format": ENCODER_FORMAT}, path)
    try:
        sla = json.loads(meta["sla"]) if meta.get("sla") else {}
        # An SLA classifier with the joint head has rotations x C outputs (its self-distilled head: C).
        outputs = int(meta["num_classes"]) * (int(sla["rotations"]) if sla.get("head") == "joint" else 1)
        model = timm.create_model(info.name, pretrained=False, num_classes=outputs, **info.kwargs)
        if info.small_stem:
            apply_small_stem(model)
        if "projection_layers" in meta:
            attach_projection(model, MLPLayout.from_json(meta["projection_head"]), int(meta["projection_layers"]))
        model.load_state_dict(load_file(str(path)), strict=True)
    except (KeyError, ValueError, TypeError, SafetensorError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()
        raise UsageError(f"{path}: not a loadable sslcli classifier ({reason[-1].strip() if reason else exc!r})"
                         ) from None
    return model.eval(), info, meta


def classifier_metadata(info: EncoderInfo, source: dict[str, str], *, encoder_path: Path, classes: list[str],
                        epoch: int, step: int, spec: dict[str, Any],
                        projection: tuple[int, MLPLayout] | None = None,
                        sla: dict[str, Any] | None = None) -> dict[str, str]:
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
    if sla is not None:  # {"rotations": 4, "head": "joint" (4C outputs) or "self-distilled" (a plain C-way head)}
        meta["sla"] = json.dumps(sla, sort_keys=True)
    return meta
