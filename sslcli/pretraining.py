"""What a pretraining run is built from: its data, its model (encoder + method + augmentation), its optimizer
and lr schedule, and the step function train.fit calls. `sslcli pretrain` (commands/pretrain.py) puts them
together with a run folder, checkpoints and the online evaluations; budget.py builds them for its calibration.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sslcli import clip_training, console, data, distributed, monitors, semi_supervised, weights
from sslcli.augment import Augmenter
from sslcli.encoders import EncoderInfo, build_encoder
from sslcli.errors import UsageError
from sslcli.methods import CONFIGS, method_class
from sslcli.methods.base import Budget, Method
from sslcli.resume import init_from
from sslcli.schedules import warmup_cosine
from sslcli.spec import OptimConfig, PretrainSpec, dump, resolve_image_size
from sslcli.step import StepOut
from sslcli.train import Batches, LoopConfig, Step
from sslcli.training_data import semi_supervised_labels, training_batches, training_images


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

    @property
    def trained_images(self) -> int:
        """The images that train: those found less the unreadable ones skipped so far (all of them once decoded)."""
        return len(self.images) - self.policy.count


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


def load_data(spec: PretrainSpec, device: torch.device) -> TrainingData:
    policy = data.BadImagePolicy(spec.data.on_bad_image)
    policy.hold()  # bad-image warnings wait until the run goes ahead (announce): a refused run prints none
    if clip_training.is_video_input(spec):  # video files, or a temporal method: the frame cache
        if spec.data.label_fraction is not None:
            raise UsageError("--label-fraction needs labeled images; it is not available for video input")
        if spec.data.channels != 3:
            raise UsageError(f"video frames are decoded as RGB: video input needs data.channels=3, not "
                             f"{spec.data.channels}")
        if spec.data.resize_filter() != "bilinear":
            raise UsageError(f"video frames are resized bilinearly: video input takes data.interpolation=bilinear "
                             f"(or auto), not {spec.data.interpolation}")
        frames, batches, steps = clip_training.training_clips(spec, policy, CONFIGS[spec.method.name].uses_indices)
        return TrainingData(frames, batches, steps, policy)
    images = training_images(spec)
    labels = semi_supervised_labels(spec, images)
    batches, steps_per_epoch = training_batches(spec, images, policy, device, labels,
                                                with_indices=CONFIGS[spec.method.name].uses_indices)
    return TrainingData(images, batches, steps_per_epoch, policy, labels)


def resolve_init(spec: PretrainSpec) -> PretrainSpec:
    """With encoder.init: find the weights (the Hub only when they are not cached) and let them settle what
    they fix: the architecture (a config.json's, a timm tag's, an sslcli encoder's), the input size when
    data.image_size is auto (their pretrained_cfg's), and the sha256 the run records (a given one must match)."""
    if spec.encoder.init is None:
        return spec
    if spec.init_from is not None:
        raise UsageError("--init and --init-from both name starting weights; give one")
    source = weights.locate(spec.encoder.init, spec.encoder.name)
    if spec.encoder.init_sha256 and spec.encoder.init_sha256 != source.sha256:
        raise UsageError(f"encoder.init {spec.encoder.init}: {source.file} has sha256 {source.sha256}, not the "
                         f"encoder.init_sha256 {spec.encoder.init_sha256} the spec pins")
    tree = dump(spec)
    tree["encoder"]["init_sha256"] = source.sha256
    if source.architecture and source.architecture != spec.encoder.name:
        console.info(f"encoder.name {spec.encoder.name} -> {source.architecture}: the architecture of "
                     f"{spec.encoder.init}")
        tree["encoder"]["name"] = source.architecture
    if spec.data.image_size == "auto":
        if source.image_size is not None:
            console.info(f"data.image_size auto: {source.image_size} px, the input size of {spec.encoder.init} "
                         "(--set data.image_size=N to choose)")
            tree["data"]["image_size"] = source.image_size
        else:  # a plain state dict says nothing of its input size: DATA's images choose, as without --init
            resolve_image_size({"data": tree["data"]})
        tree["augment"].pop("size", None)  # follows data.image_size
    if spec.data.interpolation == "auto" and source.interpolation and not clip_training.is_video_input(spec):
        console.info(f"data.interpolation auto: {source.interpolation}, the resampling filter of {spec.encoder.init} "
                     "(--set data.interpolation=bilinear|bicubic|nearest to choose)")
        tree["data"]["interpolation"] = source.interpolation
    if isinstance(tree["data"]["image_size"], int):  # a file that does not fit is refused before DATA is read
        with console.hushed():  # build_model says it again
            weights.build_from(source, tree["encoder"]["name"], tree["data"]["image_size"],
                               spec.encoder.small_stem, spec.encoder.kwargs, spec.data.channels)
    console.info(f"starting weights: {spec.encoder.init} ({source.file}, sha256 {source.sha256[:12]}...)")
    return PretrainSpec.model_validate(tree)


def loop_config(spec: PretrainSpec, steps_per_epoch: int, device: torch.device) -> LoopConfig:
    return LoopConfig.from_spec(spec.train, spec.optim.clip_grad, steps_per_epoch, device,
                                f"{spec.method.name} {spec.encoder.name}",
                                clip_per_parameter=spec.optim.clip_grad_per_parameter)


def set_input_statistics(encoder: torch.nn.Module, info: EncoderInfo, spec: PretrainSpec) -> None:
    """What the user's spec sets over the weights' and the defaults: the resampling filter (data.interpolation,
    resolved by resolve_init) and the normalisation (data.mean, data.std). The encoder's pretrained_cfg gets
    them too: methods that need the pixels back read them there (encoders.normalisation)."""
    info.interpolation = spec.data.resize_filter()
    if spec.data.mean is not None:
        info.mean = tuple(float(v) for v in spec.data.mean)
    if spec.data.std is not None:
        info.std = tuple(float(v) for v in spec.data.std)
    encoder.pretrained_cfg = {**(getattr(encoder, "pretrained_cfg", None) or {}), "mean": info.mean, "std": info.std}


def with_resolved_settings(spec: PretrainSpec, method: torch.nn.Module) -> PretrainSpec:
    """The spec with the method settings it left unset (None) filled in as the method resolved them for its
    encoder (MoCo v3's temperature and projector depth follow the encoder family), so that spec.json, the
    encoder's metadata and the resume fingerprint say what ran."""
    unset = {key: value for key, value in getattr(method, "resolved_settings", {}).items()
             if getattr(spec.method, key) is None}
    if not unset:
        return spec
    return spec.model_copy(update={"method": spec.method.model_copy(update=unset)})


def build_model(spec: PretrainSpec, loop: LoopConfig, device: torch.device, num_classes: int | None = None,
                num_images: int = 0) -> Model:
    """The encoder (optionally --init-from), the method around it, and the augmentation drawing its views;
    with num_classes (data.label_fraction) the method also holds S4L's supervised head. num_images sizes
    the memory bank of a method that keeps one (uses_indices)."""
    if spec.encoder.init is not None:  # weights sslcli did not train (resolve_init found them)
        source = weights.locate(spec.encoder.init, spec.encoder.name)
        encoder, info = weights.build_from(source, spec.encoder.name, spec.data.image_size, spec.encoder.small_stem,
                                           spec.encoder.kwargs, spec.data.channels)
    else:
        encoder, info = build_encoder(spec.encoder.name, spec.data.image_size, spec.encoder.small_stem,
                                      spec.encoder.kwargs, spec.data.channels)
    set_input_statistics(encoder, info, spec)
    if spec.init_from is not None:
        init_from(encoder, info, spec.init_from)
    method = method_class(spec.method.name)(spec.method, encoder, info.feature_dim,
                                            Budget(loop.total_steps, loop.steps_per_epoch, num_images,
                                                   schedule_epoch_steps(spec, loop)))
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


def param_groups(model: nn.Module, weight_decay: float, fixed_lr_modules: tuple[str, ...] = ()) -> list[dict]:
    """timm's weight-decay split, done here so it sees the whole method: biases, norm parameters and the
    names any submodule lists in no_weight_decay() (a ViT's pos_embed and cls_token) get no decay, and so
    no LARS adaptation. Parameters under fixed_lr_modules are tagged to keep the peak lr (SimSiam)."""
    exempt: set[str] = set()
    for prefix, module in model.named_modules():
        names = getattr(module, "no_weight_decay", None)
        if callable(names):
            exempt |= {f"{prefix}.{n}" if prefix else n for n in names()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = not (param.ndim <= 1 or name.endswith(".bias") or name in exempt)
        fixed = any(name.startswith(m + ".") for m in fixed_lr_modules)
        groups.setdefault((decay, fixed), []).append(param)
    # "decayed" marks the groups a weight-decay schedule (optim.final_weight_decay) moves.
    return [{"params": params, "weight_decay": weight_decay if decay else 0.0, "fixed_lr": fixed, "decayed": decay}
            for (decay, fixed), params in groups.items()]


def build_optimizer(model: nn.Module, optim: OptimConfig, lr: float,
                    fixed_lr_modules: tuple[str, ...] = ()) -> torch.optim.Optimizer:
    """timm's optimizers (LARS, SGD, AdamW, LAMB) over param_groups(model), as the spec's optim section says."""
    from timm.optim import create_optimizer_v2

    kwargs: dict[str, Any] = {}
    if optim.name == "lars":
        kwargs["trust_coeff"] = optim.trust_coeff
    if optim.name in ("lars", "sgd"):
        kwargs["momentum"] = optim.momentum
    if optim.name in ("adamw", "lamb") and optim.betas is not None:
        kwargs["betas"] = tuple(optim.betas)
    groups = param_groups(model, optim.weight_decay, fixed_lr_modules)
    return create_optimizer_v2(groups, opt=optim.name, lr=lr, weight_decay=optim.weight_decay, **kwargs)


def schedule_epoch_steps(spec: PretrainSpec, loop: LoopConfig) -> float:
    """The steps an epoch of the schedule's lengths (warm-up, freezes, temperature warm-ups) takes: an epoch of
    data, except in a --budget run, where train.schedule_epochs epochs span the planned steps."""
    if spec.train.schedule_epochs is None:
        return float(loop.steps_per_epoch)
    return loop.total_steps / spec.train.schedule_epochs


def warmup_steps(spec: PretrainSpec, loop: LoopConfig) -> int:
    return min(loop.total_steps, round(spec.optim.warmup_epochs * schedule_epoch_steps(spec, loop)))


def optimizer_and_schedule(spec: PretrainSpec, method: Method,
                           loop: LoopConfig) -> tuple[torch.optim.Optimizer, torch.Tensor]:
    """The optimizer at lr = base_lr x batch / 256 and its per-step warm-up + cosine schedule."""
    lr = spec.scaled_lr()
    optimizer = build_optimizer(method, spec.optim, lr, method.fixed_lr_modules)
    return optimizer, warmup_cosine(lr, loop.total_steps, warmup_steps(spec, loop), final=lr * spec.optim.min_lr_ratio)


def weight_decay_schedule(spec: PretrainSpec, loop: LoopConfig) -> torch.Tensor | None:
    """The per-step weight decay of the decayed parameters when optim.final_weight_decay is set: a cosine from
    weight_decay at the first step to final_weight_decay at the last, no warm-up (DINO's wd_schedule,
    utils.cosine_scheduler(weight_decay, weight_decay_end, ...)); None keeps weight_decay throughout."""
    optim = spec.optim
    if optim.final_weight_decay is None:
        return None
    return warmup_cosine(optim.weight_decay, loop.total_steps, 0, final=optim.final_weight_decay)


def augment_states(model: Model) -> dict[str, torch.Tensor]:
    return {"augment": model.generator.get_state(), "augment_order": model.augment.order_generator.get_state()}


def rng_states(model: Model, device: torch.device) -> dict[str, torch.Tensor]:
    """The generators a checkpoint must hold for an exact resume: the augmentation's as they were before the
    next batch to train was augmented (with train.prefetch on CUDA that batch is already augmented)."""
    rng = dict(model.ahead[0]) if model.ahead else augment_states(model)
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def step_function(spec: PretrainSpec, loop: LoopConfig, model: Model, device: torch.device,
                  optimizer: torch.optim.Optimizer, lr_schedule: torch.Tensor,
                  wd_schedule: torch.Tensor | None = None) -> Step:
    """views (prepared ahead of the step with train.prefetch on CUDA) -> method forward, plus the label-free
    monitors on the steps that are logged."""
    method = model.method
    memory_format = torch.channels_last if loop.channels_last else torch.contiguous_format
    parallel = distributed.wrap(method, device)  # DDP under torchrun, the method itself otherwise
    forward = torch.compile(parallel) if spec.train.compile else parallel

    def prepare(batch: torch.Tensor | tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]):
        x, labels, indices = batch if isinstance(batch, tuple) else (batch, None, None)
        model.ahead.append(augment_states(model))  # what a checkpoint taken before this batch trains holds
        # Frame tuples [B,K,3,H,W] stay as they are: channels_last is a 4-D layout (the method flattens them).
        views = [v.contiguous(memory_format=memory_format) if v.ndim == 4 else v for v in model.augment(x)]
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

    return Step(model=method, loss=loss, optimizer=optimizer, lr_schedule=lr_schedule, wd_schedule=wd_schedule,
                cancel_gradients=method.cancel_gradients, prepare=prepare)


def short_run_warnings(spec: PretrainSpec, loop: LoopConfig) -> list[str]:
    """What a run too short for its own settings should know before it starts."""
    total, warmup = loop.total_steps, round(spec.optim.warmup_epochs * schedule_epoch_steps(spec, loop))
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
