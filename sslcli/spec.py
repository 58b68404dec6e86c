"""Run specifications: pydantic models, presets, and the precedence rules that build them.

Precedence, lowest first: model defaults < TOML preset < typed CLI options < repeated `--set a.b=v`.
Every model forbids unknown keys, so a typo is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sslcli.encoder_args import MAX_CHANNELS, MAX_IMAGE_SIZE, encoder_kwargs_problem, split_init
from sslcli.errors import UsageError
from sslcli.methods import CONFIGS, DEFAULT_METHOD, MethodConfig
from sslcli.views import ViewConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


SpecT = TypeVar("SpecT", bound=BaseModel)

LABEL_FRACTION_HELP = "train on a seeded class-balanced subset of the labeled split (0.01, 0.1 protocols)"


class Strict(BaseModel):
    # Unknown keys are errors, and no number may be inf or NaN (a learning rate of Infinity validates otherwise).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise ValueError(f"unknown device '{value}'; use auto, cpu, cuda or cuda:N")
    return value


def _encoder_kwargs(value: dict[str, Any]) -> dict[str, Any]:
    problem = encoder_kwargs_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _init_ref(value: str) -> str:
    split_init(value)  # a ValueError names the accepted forms
    return value


# Values every command checks the same way: a device name, a seed the RNGs take (seeds are combined with epochs
# and ranks, so they stay below 2^32), a count of decoding processes.
Device = Annotated[str, AfterValidator(_device), Field(description="'auto', 'cpu', 'cuda', 'cuda:1', ...")]
Seed = Annotated[int, Field(ge=0, lt=2**32)]
Workers = Annotated[int, Field(ge=0, le=256)] | Literal["auto"]


class ScaledLr:
    """The learning-rate rule of every training spec: lr = optim.base_lr x train.batch_size / 256."""

    optim: Any
    train: Any

    def scaled_lr(self) -> float:
        return self.optim.base_lr * self.train.batch_size / 256


class DataConfig(Strict):
    path: Path | None = Field(None, description="folder of images, or a list file (.txt: one path per line; .csv: "
                              "path[,label]) (DATA); train/ is used when a folder holds splits")
    val: Path | None = Field(None, description="labeled eval split (folder or .csv list) for the online kNN "
                             "(default: DATA's val/ or test/)")
    channels: int = Field(3, ge=1, le=MAX_CHANNELS, description="image channels: 3 (RGB, every image converted), "
                          "1 (greyscale: X-ray, medical) or N (multi-band TIFF, PNG with alpha, .npy stacks); not 3 "
                          "turns off the RGB-only augmentations and normalises with 0.5/0.25 per channel")
    interpolation: Literal["auto", "bilinear", "bicubic", "nearest"] = Field(
        "auto", description="the resampling filter images are resized with when decoded, in training and in every "
        "command that reads the encoder ('auto': the --init weights' pretrained_cfg, else bilinear)")
    mean: list[Annotated[float, Field(allow_inf_nan=False)]] | None = Field(None, min_length=1, description="per-channel normalisation mean, one value per "
                                     "channel (default: the --init weights' pretrained_cfg, else ImageNet's for RGB "
                                     "and 0.5 for other channels)")
    std: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] | None = Field(
        None, min_length=1, description="per-channel normalisation std, > 0, one value per channel (default as "
        "data.mean; 0.25 for other channels)")
    image_size: Annotated[int, Field(gt=0, le=MAX_IMAGE_SIZE)] | Literal["auto"] = Field("auto", description="training crop side in px; also the encoder's "
                                              "input size ('auto': from the median shorter side of a sample of "
                                              "DATA's images: 32 for CIFAR-sized, 96 for 96 px, up to 224)")
    max_images: int | None = Field(None, gt=0, description="train on a seeded random subset of this many images")
    label_fraction: float | None = Field(None, gt=0, le=1, description="S4L semi-supervised pretraining: the "
                                         "labels of a seeded class-balanced fraction of DATA's images train a "
                                         "linear head on the encoder's features, its cross entropy added to the "
                                         "method's loss (DATA must be class folders)")
    num_workers: Workers = Field("auto", description="decoding processes ('auto': cores - 1, at most 8)")
    on_bad_image: Literal["skip", "fail"] = Field("skip", description="unreadable images: skip and report, or stop")
    fps: float | None = Field(None, gt=0, le=1000, description="video input: frames per second sampled from each "
                              "video file (unset: every frame, the clip's own rate); a frame folder gives every image")
    cache: Literal["auto", "on", "off"] = Field(
        "auto", description="decode every image once into a memory-mapped array ('auto': when it fits cache_max_gb)")
    cache_dir: Path | None = Field(None, description="decode cache folder (default $SSLCLI_CACHE_DIR or ~/.cache/sslcli)")
    cache_max_gb: float = Field(16.0, gt=0, description="'auto' caches only arrays up to this size")

    @model_validator(mode="after")
    def _one_statistic_per_channel(self) -> DataConfig:
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is not None and len(values) != self.channels:
                raise ValueError(f"data.{key} has {len(values)} value(s) but data.channels is {self.channels}: give "
                                 "one per channel")
        return self

    def resize_filter(self) -> str:
        """The resampling filter in use: data.interpolation, 'auto' left (no --init named one) being bilinear."""
        return "bilinear" if self.interpolation == "auto" else self.interpolation


class EncoderConfig(Strict):
    name: str = Field("resnet18", description="any timm model name")
    small_stem: bool | Literal["auto"] = Field("auto", description="ResNet 3x3 stride-1 stem, no max-pool ('auto': inputs <= 64 px)")
    kwargs: Annotated[dict[str, Any], AfterValidator(_encoder_kwargs)] = Field(
        default_factory=dict, description="extra timm.create_model architecture arguments (norm_layer, patch_size, ...)")
    init: Annotated[str, AfterValidator(_init_ref)] | None = Field(
        None, description="start from these weights: pretrained (timm's for encoder.name, from its Hugging Face Hub "
        "cache), pretrained:NAME, hf-hub:ORG/NAME, local-dir:DIR or a .safetensors FILE (timm or torchvision "
        "layout, or an sslcli encoder); their normalisation and input size become the run's unless set")
    pretrained: bool = Field(False, description="the same as init = 'pretrained'")
    init_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="the sha256 of the init weights "
                                    "file: recorded by the run; when given, other weights are refused")

    @model_validator(mode="after")
    def _pretrained_is_init(self) -> EncoderConfig:
        if self.pretrained and self.init not in (None, "pretrained"):
            raise ValueError(f"encoder.pretrained=true and encoder.init={self.init!r} name two different starts; "
                             "give one")
        if self.pretrained or self.init == "pretrained":
            self.init, self.pretrained = "pretrained", True
        return self


class OptimConfig(Strict):
    name: Literal["lars", "sgd", "adamw", "lamb"] = "lars"
    # The optimizers take these as float32 scalars: a value past 1e6 cannot be meant, and past float32's range
    # (1e300) it would stop the first step with an overflow instead of a spec error.
    base_lr: float = Field(0.3, gt=0, le=1e6, description="lr = base_lr * batch_size / 256")
    weight_decay: float = Field(1e-4, ge=0, le=1e6, description="not applied to biases and norm parameters")
    final_weight_decay: float | None = Field(None, ge=0, le=1e6, description="weight decay at the last step, "
                                             "reached by a cosine from weight_decay over the run (DINO: 0.04 -> "
                                             "0.4); unset: constant")
    momentum: float = Field(0.9, ge=0, lt=1)
    trust_coeff: float = Field(0.02, gt=0, description="LARS trust coefficient (eta)")
    warmup_epochs: float = Field(10, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="final lr as a fraction of the peak lr")
    clip_grad: float | None = Field(None, gt=0, description="clip the global gradient norm to this value")
    clip_grad_per_parameter: bool = Field(False, description="clip each parameter's gradient norm to clip_grad on "
                                          "its own, not the global norm (DINO's utils.clip_gradients)")
    betas: tuple[float, float] | None = Field(None, description="AdamW/LAMB betas (default: the optimizer's own)")


class TrainConfig(Strict):
    epochs: int = Field(100, gt=0, le=100_000)
    budget: float | None = Field(None, gt=0, description="wall-clock budget in seconds ('5m', '90s', '2h' are "
                                 "read too): a calibration sets the steps that fit it, replacing epochs")
    schedule_epochs: float | None = Field(None, gt=0, le=100_000, description="the run length, in epochs, that "
                                          "the lengths given in epochs (warm-up, freezes, temperature warm-ups) are "
                                          "shares of: --budget sets it to train.epochs before its plan replaces "
                                          "them, so a warm-up of 1 epoch in a 6-epoch recipe is a sixth of the "
                                          "planned steps whatever the machine's speed (unset: epochs are epochs)")
    max_steps: int | None = Field(None, gt=0, le=10_000_000, description="stop after this many steps, inside the last epoch "
                                  "(--budget sets it and epochs)")
    batch_size: int = Field(256, ge=2, le=65536)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="'auto': bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16, AMX), else fp32")
    channels_last: bool | Literal["auto"] = Field("auto", description="'auto': on for CUDA and oneDNN CPUs")
    compile: bool = Field(False, description="torch.compile the method")
    device: Device = "auto"
    seed: Seed = 0
    log_every: int = Field(50, gt=0, description="steps between logged lines")
    checkpoint_every: int = Field(10, ge=0, description="epochs between checkpoints (0: only at the end)")
    checkpoint_every_steps: int = Field(0, ge=0, description="also checkpoint every this many steps (0: off)")
    on_nan: Literal["stop", "skip"] = Field("stop", description="a non-finite loss stops the run before the "
                                            "update, or skips that step's update")
    max_nan_skips: int = Field(10, ge=0, description="with on_nan=skip: stop after this many skipped steps")
    supervised_weight: float = Field(1.0, gt=0, description="with data.label_fraction: weight of the supervised "
                                     "cross entropy added to the method's loss (S4L's L_sup + w L_self is this "
                                     "at 1 / w, up to the lr)")
    labeled_batch_size: int | None = Field(None, gt=0, description="with data.label_fraction: labeled images "
                                           "drawn from the labeled subset and added to every step's batch, the "
                                           "only images the supervised term sees (S4L's labeled minibatch; "
                                           "default: train.batch_size, the paper's equal sizes)")
    keep_checkpoints: int = Field(2, ge=1)
    sync_bn: bool | None = Field(None, description="under torchrun, batch norm over the global batch (default: "
                                 "as the method's paper: on, except MoCo v2)")
    @field_validator("budget", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        from sslcli.durations import parse_duration

        return None if value is None else parse_duration(value)

    sync_free: bool | Literal["auto"] = Field("auto", description="check each step for a non-finite loss on the "
                                              "device and read it every log_every steps instead of every step "
                                              "('auto': on for CUDA, off on CPU)")
    debug_sync: bool = Field(False, description="with sync_free on CUDA: fail on any host sync between two reads "
                             "(proves the loop is sync-free; for tests)")
    prefetch: bool = Field(False, description="on CUDA: copy and augment the next batch on a side stream while "
                           "this one trains (opt-in until a GPU run has shown it correct and faster)")


class MonitorConfig(Strict):
    knn_every: int = Field(1, ge=0, description="online kNN every this many epochs, and at the end (0: off)")
    knn_k: int = Field(20, gt=0, description="neighbours of the online weighted kNN (t = 0.07)")
    # 7,000 images per evaluation: 2 s for the quickstart's resnet10t at 32 px on 2 CPU cores (~6 % of its epoch).
    knn_bank_max: int = Field(5000, gt=0, description="labeled train images in the kNN bank (class-balanced)")
    knn_val_max: int = Field(2000, gt=0, description="eval images the online kNN classifies (class-balanced)")
    embeddings: bool = Field(True, description="label-free monitors (std, effective rank, alignment, "
                             "uniformity) on each logged step's batch, with a warning on collapse")
    report: bool = Field(True, description="write report/ (curves.png, neighbors.png, summary.json)")


TRACKERS = ("tensorboard", "mlflow", "wandb")


def _tracker_list(value: Any) -> Any:
    """--log-to tensorboard,mlflow (a comma list) or a TOML list; "" and "none" are no tracker."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    if isinstance(value, list):
        value = [v for v in value if v not in ("", "none")]
        return list(dict.fromkeys(value))  # each tracker once, in the order given
    return value


class LoggingConfig(Strict):
    to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list, description="experiment trackers that get the metrics, the spec, the report and the "
        "results (rank 0): tensorboard, mlflow, wandb (each an extra: pip install 'sslcli[mlflow]')")
    experiment: str = Field("sslcli", min_length=1, description="the MLflow experiment and the W&B project")

    _split = field_validator("to", mode="before")(_tracker_list)


class PretrainSpec(ScaledLr, Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    method: MethodConfig = Field(default_factory=lambda: CONFIGS[DEFAULT_METHOD]())
    augment: ViewConfig = Field(default_factory=ViewConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    out: Path | None = Field(None, description="run folder (default runs/<method>-<timestamp>)")
    init_from: Path | None = Field(None, description="start from this encoder.safetensors (same architecture)")

    @model_validator(mode="after")
    def _crop_size_is_image_size(self) -> PretrainSpec:
        # One source of truth for the input size: the views are cropped to data.image_size.
        if self.data.channels != 3 and CONFIGS[self.method.name].rgb_only:
            raise ValueError(f"method {self.method.name} works on the colour of RGB images (CIE Lab): it needs "
                             f"data.channels=3, not {self.data.channels}")
        if self.data.image_size == "auto":  # left only when DATA could not be looked at (resolve): no size yet
            return self
        if "size" in self.augment.model_fields_set and self.augment.size != self.data.image_size:
            raise ValueError("augment.size follows data.image_size; set data.image_size instead")
        self.augment = self.augment.model_copy(update={"size": self.data.image_size})
        return self


CacheMode = Literal["auto", "on", "off"]


def _cache_mode(value: Any) -> Any:
    """true/false (older specs and --set cache=false) read as auto/off."""
    return {True: "auto", False: "off"}.get(value, value) if isinstance(value, bool) else value


class ProbeData(Strict):
    path: Path = Field(description="labeled train split (class folders, a folder holding train/ and val/ or test/, "
                       "or a .csv list: path,label)")
    val: Path | None = Field(None, description="labeled eval split (class folders or a .csv list)")
    label_fraction: float | None = Field(None, gt=0, le=1, description=LABEL_FRACTION_HELP)
    num_workers: Workers = Field("auto", description="decoding processes ('auto': cores - 1, at most 8)")
    on_bad_image: Literal["skip", "fail"] = "skip"
    cache: CacheMode = Field("auto", description="decode the images once into the decode cache ('auto': when "
                             "they fit 16 GB; false or 'off' decodes on the fly)")

    _cache_from_bool = field_validator("cache", mode="before")(_cache_mode)


class ProbeConfig(Strict):
    knn_k: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [20, 200], min_length=1,
                                                     description="neighbours of the weighted kNN")
    knn_temperature: float = Field(0.07, gt=0, description="t of the kNN vote weights exp(sim / t)")
    linear_weight_decays: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1], min_length=1,
                                              description="the linear probe's weight decays, one picked on a "
                                              "held-out part of the train split")
    batch_size: int = Field(256, gt=0, le=65536, description="images per forward pass of the feature extraction")
    device: Device = "auto"
    seed: Seed = Field(0, description="of the label fraction, the held-out part and the random-init baseline")
    baseline: bool = Field(True, description="also score the same architecture at a seeded random init (the "
                           "reference the training is measured against; about as long as the probe itself)")
    start: Annotated[str, AfterValidator(_init_ref)] | None = Field(
        None, description="also score the starting backbone: 'pretrained' (the --init weights the encoder's "
        "metadata records) or weights given as FILE, local-dir:DIR, hf-hub:ORG/NAME or pretrained:NAME, loaded "
        "into the encoder's architecture: random init vs starting weights vs after pretraining, in one table")


class ProbeSpec(Strict):
    encoder: Path
    data: ProbeData
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    out: Path | None = Field(None, description="where the result is written as JSON (default: probe-<eval data>.json "
                             "beside the encoder)")


class FinetuneData(Strict):
    path: Path | None = Field(None, description="labeled train split (class folders, a folder holding train/ and "
                              "val/ or test/, or a .csv list: path,label)")
    val: Path | None = Field(None, description="labeled eval split (class folders or a .csv list), evaluated after "
                             "every epoch")
    label_fraction: float | None = Field(None, gt=0, le=1, description=LABEL_FRACTION_HELP)
    num_workers: Workers = "auto"
    on_bad_image: Literal["skip", "fail"] = "skip"


class FinetuneAugment(Strict):
    """Supervised fine-tuning augmentation: random resized crop + flip, then optional Mixup/CutMix."""

    scale: tuple[float, float] = Field((0.08, 1.0), description="random resized crop area fraction")
    ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="random resized crop aspect ratio")
    hflip_p: float = Field(0.5, ge=0, le=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    mixup_alpha: float = Field(0.0, ge=0, description="Mixup Beta(alpha, alpha); 0 turns it off")
    cutmix_alpha: float = Field(0.0, ge=0, description="CutMix Beta(alpha, alpha); 0 turns it off")
    mix_prob: float = Field(1.0, ge=0, le=1, description="probability a batch is mixed (when either alpha > 0)")


class FinetuneOptim(Strict):
    name: Literal["adamw", "sgd"] = "adamw"
    base_lr: float = Field(1e-3, gt=0, description="lr = base_lr * batch_size / 256")
    weight_decay: float = Field(0.05, ge=0, description="not applied to biases and norm parameters")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")
    layer_decay: float | None = Field(None, gt=0, le=1, description="layer-wise lr decay (ViTs: 0.65-0.75)")
    warmup_epochs: float = Field(1, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    clip_grad: float | None = Field(None, gt=0)


class FinetuneTrain(Strict):
    epochs: int = Field(30, gt=0, le=100_000)
    batch_size: int = Field(64, ge=2, le=65536)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool | Literal["auto"] = "auto"
    device: Device = "auto"
    seed: Seed = 0
    log_every: int = Field(50, gt=0)
    eval_every: int = Field(1, gt=0, description="epochs between val evaluations (the last epoch is always scored)")
    sync_free: bool | Literal["auto"] = Field("auto", description="as train.sync_free of pretrain")


class FinetuneSla(Strict):
    """Self-supervised label augmentation (Lee, Hwang & Shin, ICML 2020): joint (class, rotation) labels."""

    enabled: bool = Field(False, description="SLA: the classifier predicts 4 x C joint (class, rotation) labels, "
                          "each training image is seen at 0/90/180/270 degrees, and inference averages the four "
                          "rotations' class logits (aggregated inference; 4x the compute per image)")
    self_distill: bool = Field(False, description="SLA+SD: a second plain C-way head learns the aggregated "
                               "prediction (KL at sla.temperature) and the label; it alone is saved and used at "
                               "inference (one forward pass per image)")
    temperature: float = Field(1.0, gt=0, description="SLA+SD: temperature of the self-distillation KL")


class FinetuneDistill(Strict):
    """SimCLR v2's distillation (arXiv 2006.10029, section 2): a fine-tuned teacher labels unlabeled images."""

    teacher: Path | None = Field(None, description="a classifier.safetensors written by sslcli finetune: its "
                                 "temperature-scaled class probabilities on the unlabeled images are the student's "
                                 "targets (the student is ENCODER's architecture, which may be another one)")
    unlabeled: Path | None = Field(None, description="the unlabeled images the teacher labels (a folder, labeled "
                                   "or not, or a list file)")
    teacher_view: Literal["augmented", "center"] = Field(
        "augmented", description="what the teacher labels: augmented = the very view (random crop and flip) the "
        "student sees, every step (SimCLR v2; one more teacher forward per step); center = each unlabeled image's "
        "centre crop, once before training (one teacher pass in all, cheaper, but every crop of an image gets "
        "its centre crop's label)")
    temperature: float = Field(1.0, gt=0, description="softmax temperature of teacher and student in the "
                               "distillation loss (SimCLR v2: 1)")
    labeled_weight: float = Field(0.0, ge=0, description="weight of the labeled images' cross entropy added to the "
                                  "distillation loss (0: distillation alone, as SimCLR v2 on ImageNet)")


class FinetuneSpec(ScaledLr, Strict):
    encoder: Path | None = Field(None, description="an encoder.safetensors written by sslcli")
    keep_projection_layers: int = Field(0, ge=0, description="SimCLR v2's fine-tuning from a projection layer "
                                        "(arXiv 2006.10029; its paper: 1 of 3): keep this many layers of the "
                                        "pretrained projection head (each Linear + BN + ReLU) between the encoder "
                                        "and the classifier; needs the projector.safetensors simclr writes beside "
                                        "the encoder (0: the encoder alone)")
    data: FinetuneData = Field(default_factory=FinetuneData)
    augment: FinetuneAugment = Field(default_factory=FinetuneAugment)
    optim: FinetuneOptim = Field(default_factory=FinetuneOptim)
    train: FinetuneTrain = Field(default_factory=FinetuneTrain)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    out: Path | None = Field(None, description="output folder (default: finetune-<timestamp> beside the encoder)")
    baseline: bool = Field(False, description="then fine-tune the same architecture from a seeded random init with "
                           "the same recipe: the reference the pretraining is measured against (doubles the time)")
    sla: FinetuneSla = Field(default_factory=FinetuneSla)
    distill: FinetuneDistill = Field(default_factory=FinetuneDistill)

    @model_validator(mode="after")
    def _one_kind_of_target(self) -> FinetuneSpec:
        # Each of SLA, distillation and Mixup/CutMix rewrites the targets; their combinations are not defined here.
        mixing = self.augment.mixup_alpha > 0 or self.augment.cutmix_alpha > 0
        if self.sla.self_distill and not self.sla.enabled:
            raise ValueError("sla.self_distill is SLA's self-distillation head: it needs sla.enabled (--sla)")
        if (self.distill.teacher is None) != (self.distill.unlabeled is None):
            raise ValueError("distillation needs both a teacher and unlabeled images: --distill-from CLASSIFIER "
                             "--unlabeled DIR")
        distilling = self.distill.teacher is not None
        if self.sla.enabled and distilling:
            raise ValueError("--sla and --distill-from do not combine: SLA's joint labels are the labeled images', "
                             "distillation's targets the teacher's")
        if mixing and (self.sla.enabled or distilling):
            raise ValueError(f"{'--sla' if self.sla.enabled else '--distill-from'} does not combine with Mixup/CutMix "
                             "(augment.mixup_alpha, augment.cutmix_alpha)")
        return self


class EmbedSpec(Strict):
    encoder: Path = Field(description="an encoder.safetensors written by sslcli")
    data: Path = Field(description="folder of images (labeled or not) or a list file (.txt, .csv)")
    out: Path = Field(description="embeddings file: .safetensors (the CSV index goes beside it), .parquet or .csv")
    batch_size: int = Field(256, gt=0, le=65536)
    num_workers: Workers = "auto"
    device: Device = "auto"
    on_bad_image: Literal["skip", "fail"] = "skip"


class NeighborsSpec(Strict):
    embeddings: Path = Field(description="embeddings written by sslcli embed: a .safetensors (its CSV index beside "
                             "it), a .parquet or a .csv")
    query: str = Field(description="an image file, or a path in the embeddings' index")
    k: int = Field(10, gt=0, le=1000, description="how many neighbours")
    encoder: Path | None = Field(None, description="the encoder that embeds an image query (default: the one the "
                                 "embeddings record)")
    png: Path | None = Field(None, description="draw the query and its neighbours into this PNG")
    device: Device = "auto"  # for embedding an image query


class ExportSpec(Strict):
    encoder: Path = Field(description="an encoder.safetensors written by sslcli")
    to: Literal["timm", "hf", "torchvision", "onnx"] = Field(
        description="timm (a local-dir model folder), hf (the timm folder plus a model card, for the Hugging Face "
        "Hub), torchvision (ResNets) or onnx (one .onnx file)")
    out: Path = Field(description="folder for model.safetensors and config.json; with --to onnx the .onnx file")
    data: Path | None = Field(None, description="--to onnx: images to verify the export on (default: a seeded "
                              "batch of random images)")


class ReportSpec(Strict):
    run_dir: Path = Field(description="a run folder written by sslcli pretrain")
    val: Path | None = Field(None, description="labeled eval split for neighbors.png (default: the run's --val or "
                             "DATA's val/ or test/)")
    device: Device = "auto"  # for the neighbour features
    map: bool = Field(False, description="also draw report/map.png: a 2-D map of the eval features by class")


class InspectSpec(Strict):
    file: Path = Field(description="any sslcli artifact: encoder, classifier, training state, embeddings")


# ---------------------------------------------------------------- presets


def presets_dir() -> Path:
    """presets/ of a source checkout, or the copy a wheel carries inside the package."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "presets", here / "presets"):
        if candidate.is_dir():
            return candidate
    return here.parent / "presets"


def list_presets() -> list[tuple[str, str]]:
    """(name, one-line description) for every preset."""
    rows = []
    for path in sorted(presets_dir().glob("*.toml")):
        meta = _read_toml(path).get("preset", {})
        rows.append((path.stem, str(meta.get("description", ""))))
    return rows


def preset_expectations() -> dict[str, dict[str, Any]]:
    """{preset: its [preset.expected] table}: the kNN top-1 (%) its schedule reached, the tolerance (points),
    where and how it was measured. Only presets that were measured carry one (`make bench-presets` checks)."""
    found = {}
    for path in sorted(presets_dir().glob("*.toml")):
        expected = _read_toml(path).get("preset", {}).get("expected")
        if isinstance(expected, dict) and isinstance(expected.get("knn_top1"), (int, float)):
            found[path.stem] = {"tolerance": 2.0, **expected}
    return found


def find_preset(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml" or os.sep in name_or_path:
        if not path.is_file():
            raise UsageError(f"preset file {path} does not exist")
        return path
    path = presets_dir() / f"{name_or_path}.toml"
    if not path.is_file():
        names = ", ".join(name for name, _ in list_presets())
        raise UsageError(f"unknown preset '{name_or_path}'; available: {names} (or give a path to a .toml file)")
    return path


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read preset {path}: {exc}") from None


def load_preset(name_or_path: str) -> dict[str, Any]:
    """The preset's spec values; its [preset] table (description, sources, expected results) is metadata.

    A preset may name a base (`extends = "base/cpu"` or another preset's name, or a .toml path relative to
    the preset's own folder) and hold only what differs: its values are merged over the base's, section by
    section. The metadata is the preset's own (a base's expected figure is not its heir's)."""
    return _values_with_bases(find_preset(name_or_path), ())


def _values_with_bases(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    values = _read_toml(path)
    base = values.pop("preset", {}).get("extends")
    if base is None:
        return values
    if not isinstance(base, str) or not base:
        raise UsageError(f"preset {path}: extends must name a preset (e.g. extends = \"simclr-cpu\"), got {base!r}")
    base_path = (path.parent / base) if base.endswith(".toml") else presets_dir() / f"{base}.toml"
    if not base_path.is_file():
        raise UsageError(f"preset {path} extends '{base}', which does not exist (sslcli presets lists the names)")
    if base_path.resolve() in {p.resolve() for p in (*chain, path)}:
        raise UsageError(f"preset {path} extends '{base}', which extends it in turn: a preset cannot be its own base")
    return merge(_values_with_bases(base_path, (*chain, path)), values)


# ---------------------------------------------------------------- precedence


def parse_set(item: str) -> tuple[str, Any]:
    """`a.b=value`: the value is read as JSON when it parses (numbers, true/false, null, lists), else a string."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UsageError(f"--set expects KEY=VALUE with a dotted key such as train.epochs=10, got '{item}'")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UsageError(f"cannot set '{key}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


# Keys that moved when every command's spec took one shape (data.* for the images, a section for the run):
# the old spelling is refused with the new one.
MOVED: dict[str, dict[str, str]] = {
    "ProbeSpec": {**{key: f"data.{key}" for key in ("val", "label_fraction", "num_workers", "on_bad_image", "cache")},
                  **{key: f"probe.{key}" for key in ("knn_k", "knn_temperature", "linear_weight_decays", "batch_size",
                                                     "device", "seed", "baseline")}},
    "FinetuneSpec": {"data.train": "data.path"},
}


def _refuse_moved(model: type[BaseModel], tree: dict[str, Any]) -> None:
    for old, new in MOVED.get(model.__name__, {}).items():
        section, _, key = old.rpartition(".")
        node = tree.get(section) if section else tree
        if isinstance(node, dict) and key in node and not (not section and isinstance(node[key], dict)):
            raise UsageError(f"spec error: '{old}' is now '{new}' (every command: data.* for where the images come "
                             f"from, one section for the run's settings); e.g. --set {new}=...")


def resolve(model: type[SpecT], preset: str | None = None, options: dict[str, Any] | None = None,
            sets: list[str] | None = None) -> SpecT:
    """Build a spec from the layers, lowest first. `options` maps dotted keys to typed-option values."""
    tree: dict[str, Any] = load_preset(preset) if preset else {}
    typed: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if value is not None:
            set_dotted(typed, key, value)
    _check_method_switch(tree, typed, preset)
    replaced = _replaced_by_epochs(tree, typed, sets or [])
    tree = merge(tree, typed)
    for item in sets or []:
        key, value = parse_set(item)
        set_dotted(tree, key, value)
    for key in replaced:
        tree["train"].pop(key, None)
    _refuse_moved(model, tree)
    if model is PretrainSpec:
        resolve_image_size(tree)
        tree = merge(method_defaults(tree), tree)
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        raise UsageError("\n".join(format_errors(exc, model))) from None


def _replaced_by_epochs(preset: dict[str, Any], typed: dict[str, Any], sets: list[str]) -> list[str]:
    """How long the run is comes from one place: the train keys (budget, max_steps) that epochs given in a
    higher layer (preset < options < --set) replace. `--epochs 2` on the quickstart preset, which carries a
    budget, trains 2 epochs; on a CPU preset, whose max_steps end its own epochs where its expected figure
    was measured, it trains 2 whole epochs. A budget above the epochs wins (it sets them). Epochs and a budget
    both in one layer of the user's are a usage error: which was meant?"""
    layers: list[dict[str, Any]] = [preset, typed, {}]
    for item in sets:
        key, value = parse_set(item)
        set_dotted(layers[2], key, value)

    def layer_of(key: str) -> int | None:
        given = [i for i, layer in enumerate(layers)
                 if isinstance(layer.get("train"), dict) and layer["train"].get(key) is not None]
        return max(given, default=None)

    epochs_at, budget_at = layer_of("epochs"), layer_of("budget")
    if epochs_at is not None and epochs_at == budget_at and epochs_at > 0:
        raise UsageError("both epochs and a budget given: a budget sets the epochs itself; give --epochs or --budget")
    if epochs_at is None:
        return []
    return [key for key in ("budget", "max_steps") if (at := layer_of(key)) is not None and at < epochs_at]


def resolve_image_size(tree: dict[str, Any]) -> None:
    """data.image_size=auto (the default) becomes a size chosen from DATA's images, before the method's defaults
    that depend on it (MAE's patch size) are read; an explicit size is kept. Left 'auto' when DATA cannot be
    looked at: pretraining then says what is wrong with it."""
    data = tree.get("data") if isinstance(tree.get("data"), dict) else None
    if data is None or data.get("image_size", "auto") != "auto" or not isinstance(data.get("path"), str):
        return
    encoder = tree.get("encoder") if isinstance(tree.get("encoder"), dict) else {}
    if encoder.get("init") or encoder.get("pretrained"):
        return  # the starting weights' own input size (their pretrained_cfg), read when they are found
    from sslcli import console
    from sslcli.sizing import auto_image_size

    root = Path(data["path"])
    has_splits = (root / "train").is_dir() and ((root / "val").is_dir() or (root / "test").is_dir())
    chosen = auto_image_size(root / "train" if has_splits else root)  # the images that train (data.split_folders)
    if chosen is None:
        from sslcli import video  # a folder of videos: measured from the clips' headers

        chosen = video.auto_frame_size(root) if video.holds_videos(root) else None
    if chosen is None:
        return
    size, median, count = chosen
    data["image_size"] = size
    console.info(f"data.image_size auto: {size} px (median shorter side {median:g} px over {count} sampled "
                 "images; --set data.image_size=N to choose)")


def method_defaults(tree: dict[str, Any]) -> dict[str, Any]:
    """The chosen method's own defaults (its paper's optimizer, MAE's ViT), under every other layer.

    The encoder section is taken whole or not at all: kwargs meant for the method's default encoder
    (a ViT patch size) must not reach an encoder the user chose.
    """
    method = tree.get("method") if isinstance(tree.get("method"), dict) else {}
    name = method.get("name", DEFAULT_METHOD)
    if not isinstance(name, str) or name not in CONFIGS:
        return {}  # validation reports the bad name
    data = tree.get("data") if isinstance(tree.get("data"), dict) else {}
    image_size = data.get("image_size", DataConfig.model_fields["image_size"].default)
    defaults = CONFIGS[name].spec_defaults(image_size if isinstance(image_size, int) else 32)
    encoder = tree.get("encoder") if isinstance(tree.get("encoder"), dict) else {}
    if "name" in encoder:
        defaults.pop("encoder", None)
    return defaults


def _check_method_switch(tree: dict[str, Any], typed: dict[str, Any], preset: str | None) -> None:
    """A preset's method settings only fit its own method: switching method with --method drops none silently."""
    wanted = typed.get("method", {}).get("name")
    preset_method = tree.get("method", {})
    if wanted and isinstance(preset_method, dict) and preset_method:
        have = preset_method.get("name", "simclr")
        if have != wanted:
            raise UsageError(f"preset '{preset}' is for method '{have}', not '{wanted}': "
                             f"pick a {wanted} preset (sslcli presets) or drop --preset")
    if wanted and wanted not in CONFIGS:
        raise UsageError(f"unknown method '{wanted}'; available: {', '.join(CONFIGS)}")


# The names pydantic gives the branches of a union in an error's location (int | "auto", ...): not keys.
_UNION_BRANCH = re.compile(r"^(constrained-\w+|literal\[.*\]|int|float|str|bool|none|(list|tuple|dict)\[.*\])$")


def format_errors(exc: ValidationError, model: type[BaseModel]) -> list[str]:
    """One readable line per problem: the dotted key, what is wrong, what was given."""
    lines, seen = [], set()
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not (isinstance(p, str) and p in CONFIGS and err["loc"][0] == "method")
               and not _UNION_BRANCH.match(str(p))]
        key = ".".join(loc) or "spec"
        if key in seen:  # a value no branch of a union accepts: the first branch's reason is enough
            continue
        seen.add(key)
        if err["type"] == "extra_forbidden":
            valid = _valid_keys(model, loc[:-1])
            hint = f"; valid keys here: {', '.join(valid)}" if valid else ""
            lines.append(f"spec error: unknown key '{key}'{hint}")
        elif err["type"] == "union_tag_invalid":
            lines.append(f"spec error: {key}.name: unknown method {err['ctx']['tag']!r}; available: {', '.join(CONFIGS)}")
        elif err["type"] == "model_type" and err["input"] is not None:
            lines.append(f"spec error: '{key}' is a section; set its keys, e.g. {key}.<name>=value")
        else:
            given = err.get("input")
            shown = "" if isinstance(given, dict) else f" (got {given!r})"
            message = err["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's own words
            lines.append(f"spec error: {key}: {message}{shown}")
    return lines


def _valid_keys(model: type[BaseModel], loc: list[str]) -> list[str]:
    current: Any = model
    for part in loc:
        if part == "method" and current is PretrainSpec:
            return []  # the method section depends on the method; its error names the bad key already
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
    return sorted(getattr(current, "model_fields", {}))


def dump(spec: BaseModel) -> dict[str, Any]:
    """The resolved spec as JSON-able data (paths as strings)."""
    return spec.model_dump(mode="json")
