"""Every method's settings and what the rest of sslcli needs to know about it, without torch.

Each config names its method (`name`), cites its paper, gives a one-line summary for `sslcli methods`,
says whether the paper's batch norm sees the global batch under torchrun (`sync_bn`) and which spec values
suit the method better than the global defaults (`spec_defaults`, a layer under presets and options).
They live here, apart from the method modules, so that `sslcli presets`, `methods`, `--help` and
`--dry-run` validate a spec without importing torch: the method modules import it at once.
Every field's description gives the paper's value.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class MethodConfigBase(BaseModel):
    """A method's settings (the spec's `method` section) and its description."""

    model_config = ConfigDict(extra="forbid")

    paper: ClassVar[str]
    summary: ClassVar[str]
    sync_bn: ClassVar[bool] = True  # under torchrun, BN over the global batch (the paper's choice)
    # What the encoder saw in training when it was not the augmented RGB views (written into its metadata).
    encoder_input: ClassVar[str | None] = None
    # The method keeps one entry per training image (a memory bank): its forward also takes the batch's
    # dataset indices, and its Budget carries the number of training images.
    uses_indices: ClassVar[bool] = False
    # Epochs at the start that train nothing (DeepCluster v2 fills its memory first): a shorter run learns nothing.
    memory_pass_epochs: ClassVar[int] = 0

    def untrained_epochs(self) -> int:
        """The epochs at the start of a run that train nothing with these settings (memory_pass_epochs, or a
        setting's own count)."""
        return self.memory_pass_epochs

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        """Spec values the paper uses where they differ from the global defaults (optimizer, encoder, crops)."""
        return {}


class SimCLRConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/2002.05709"
    summary: ClassVar[str] = "contrastive: two views, in-batch negatives, NT-Xent (Chen et al. 2020)"
    name: Literal["simclr"] = "simclr"
    temperature: float = Field(0.2, gt=0, description="NT-Xent temperature (paper: 0.1-0.5; solo-learn CIFAR: 0.2)")
    proj_hidden_dim: int = Field(2048, gt=0, description="projector hidden width")
    proj_out_dim: int = Field(128, gt=0, description="projection size z (paper: 128)")
    proj_layers: int = Field(2, ge=1, description="projector depth (paper: 2; SimCLR v2: 3; InvariantSpread: 1, a "
                             "linear fc to proj_out_dim)")
    loss: Literal["nt_xent", "invariant_spread"] = Field("nt_xent", description="nt_xent (paper eq. 1) or "
                                                         "invariant_spread: NT-Xent plus a binary term per negative, "
                                                         "the other side of each similarity detached (Ye et al. 2019, "
                                                         "arXiv 1904.03436, eq. 7 as in its released code)")
    rotation_weight: float = Field(0.0, ge=0, description="S4L: weight of the rotation pretext loss added to this "
                                   "method's (4 rotated copies of view 1, a 4-way head; Zhai et al. 2019 use 1; 0 = off)")


class MoCoV2Config(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/2003.04297"
    summary: ClassVar[str] = "contrastive: momentum key encoder and a queue of negatives (Chen et al. 2020)"
    sync_bn: ClassVar[bool] = False
    name: Literal["mocov2"] = "mocov2"
    temperature: float = Field(0.2, gt=0, description="InfoNCE temperature (paper: 0.2)")
    queue_size: int = Field(65536, gt=0, description="K negatives kept from past batches (paper: 65536)")
    proj_hidden_dim: int = Field(2048, gt=0, description="MLP projector hidden width (paper: 2048)")
    proj_out_dim: int = Field(128, gt=0, description="key/query size (paper: 128)")
    proj_layers: int = Field(2, ge=1, description="projector depth: 2 = the MLP head of MoCo v2 (Linear, ReLU, "
                             "Linear), 1 = MoCo v1's linear fc to proj_out_dim (arXiv 1911.05722)")
    momentum: float = Field(0.999, ge=0, le=1, description="key encoder EMA momentum at the start (paper: 0.999)")
    final_momentum: float = Field(0.999, ge=0, le=1, description="momentum at the end, cosine schedule "
                                  "(paper: constant 0.999; solo-learn MoCo V2+: 0.99 -> 0.999)")
    symmetric: bool = Field(False, description="also contrast q2 with k1 (MoCo V2+ in solo-learn); costs 2x")
    rotation_weight: float = Field(0.0, ge=0, description="S4L: weight of the rotation pretext loss added to this "
                                   "method's (4 rotated copies of view 1, a 4-way head; Zhai et al. 2019 use 1; 0 = off)")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # MoCo v2: SGD lr 0.03 per 256 images, weight decay 1e-4, cosine, no warm-up.
        return {"optim": {"name": "sgd", "base_lr": 0.03, "weight_decay": 1e-4, "warmup_epochs": 0}}


class MoCoV3Config(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/2104.02057"
    summary: ClassVar[str] = "contrastive: momentum encoder, predictor, symmetric in-batch InfoNCE (Chen et al. 2021)"
    name: Literal["mocov3"] = "mocov3"
    temperature: float = Field(0.2, gt=0, description="InfoNCE temperature (paper: 0.2 for ResNet, 0.2 ViT)")
    proj_hidden_dim: int = Field(4096, gt=0, description="projector hidden width (paper: 4096)")
    proj_out_dim: int = Field(256, gt=0, description="output size (paper: 256)")
    proj_layers: int = Field(3, ge=2, description="projector depth (paper: 3; solo-learn CIFAR: 2)")
    pred_hidden_dim: int = Field(4096, gt=0, description="predictor hidden width (paper: 4096)")
    momentum: float = Field(0.99, ge=0, le=1, description="momentum encoder EMA at the start (paper: 0.99)")
    final_momentum: float = Field(1.0, ge=0, le=1, description="EMA at the end, cosine schedule (paper: 1.0)")
    view_blur_p: tuple[float, float] = Field((1.0, 0.1), description="blur odds of view 1 / view 2 (BYOL recipe)")
    view_solarize_p: tuple[float, float] = Field((0.0, 0.2), description="solarize odds of view 1 / view 2")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # The ResNet-50 recipe of the official code (CONFIG.md): LARS, lr 0.6 x batch / 256, weight decay 1e-6.
        return {"optim": {"name": "lars", "base_lr": 0.6, "weight_decay": 1e-6}}


class BYOLConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/2006.07733"
    summary: ClassVar[str] = "non-contrastive: online predictor regresses an EMA target network (Grill et al. 2020)"
    name: Literal["byol"] = "byol"
    proj_hidden_dim: int = Field(4096, gt=0, description="projector hidden width (paper: 4096)")
    proj_out_dim: int = Field(256, gt=0, description="projection size (paper: 256)")
    pred_hidden_dim: int = Field(4096, gt=0, description="predictor hidden width (paper: 4096)")
    momentum: float = Field(0.99, ge=0, le=1, description="target EMA at the start (paper: 0.996 at batch 4096; "
                            "0.99 suits smaller batches, solo-learn)")
    final_momentum: float = Field(1.0, ge=0, le=1, description="target EMA at the end, cosine schedule (paper: 1)")
    view_blur_p: tuple[float, float] = Field((1.0, 0.1), description="blur odds of view 1 / view 2 (paper table 6)")
    view_solarize_p: tuple[float, float] = Field((0.0, 0.2), description="solarize odds of view 1 / view 2")
    rotation_weight: float = Field(0.0, ge=0, description="S4L: weight of the rotation pretext loss added to this "
                                   "method's (4 rotated copies of view 1, a 4-way head; Zhai et al. 2019 use 1; 0 = off)")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper: LARS, lr 0.2 x batch / 256, weight decay 1.5e-6, 10 warm-up epochs.
        return {"optim": {"name": "lars", "base_lr": 0.2, "weight_decay": 1.5e-6}}


class SimSiamConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/2011.10566"
    summary: ClassVar[str] = "non-contrastive: stop-gradient and a predictor, no EMA (Chen & He 2021)"
    name: Literal["simsiam"] = "simsiam"
    proj_dim: int = Field(2048, gt=0, description="projector hidden and output width (paper: 2048)")
    proj_layers: int = Field(3, ge=2, description="projector depth (paper: 3; CIFAR variant: 2)")
    pred_hidden_dim: int = Field(512, gt=0, description="predictor bottleneck width (paper: 512)")
    fixed_predictor_lr: bool = Field(True, description="keep the predictor's lr at the peak instead of decaying "
                                     "it (paper section 4.4: 'fix lr for predictor')")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper: SGD lr 0.05 x batch / 256, momentum 0.9, weight decay 1e-4, cosine, no warm-up.
        return {"optim": {"name": "sgd", "base_lr": 0.05, "weight_decay": 1e-4, "warmup_epochs": 0}}


class SwAVConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/2006.09882"
    summary: ClassVar[str] = "clustering: Sinkhorn codes, swapped prediction, multi-crop (Caron et al. 2020)"
    name: Literal["swav"] = "swav"
    temperature: float = Field(0.1, gt=0, description="softmax temperature of the predictions (paper: 0.1)")
    proj_hidden_dim: int = Field(2048, gt=0, description="projector hidden width (paper: 2048)")
    proj_out_dim: int = Field(128, gt=0, description="feature size compared with the prototypes (paper: 128)")
    num_prototypes: int = Field(3000, gt=0, description="K prototypes (paper: 3000 on ImageNet)")
    sinkhorn_iterations: int = Field(3, gt=0, description="Sinkhorn-Knopp iterations (paper: 3)")
    epsilon: float = Field(0.05, gt=0, description="entropy regularisation of the codes (paper: 0.05)")
    freeze_prototypes_epochs: float = Field(1, ge=0, description="prototypes get no update this long (paper: 1)")
    num_local_crops: int = Field(6, ge=0, description="small crops besides the 2 global ones (paper: 6)")
    local_crop_size: int | None = Field(None, gt=0, description="side of a local crop (default: 3/7 of the image, "
                                        "as 96/224 in the paper)")
    local_crop_scale: tuple[float, float] = Field((0.05, 0.14), description="local crop area range (paper)")
    queue_length: int = Field(0, ge=0, description="past features added to Sinkhorn for small batches "
                              "(paper: 3840 below batch 256; 0 = off)")
    queue_start_epoch: float = Field(15, ge=0, description="epoch from which the queue is filled (paper: 15)")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper: LARS, lr 4.8 at batch 4096 (0.3 per 256 images), weight decay 1e-6; global crops (0.14, 1).
        return {"optim": {"name": "lars", "base_lr": 0.3, "weight_decay": 1e-6},
                "augment": {"scale": [0.14, 1.0]}}


class DeepClusterConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/2006.09882"
    summary: ClassVar[str] = ("clustering: k-means of a memory of projections each epoch, prototypes = centroids, "
                              "multi-crop (DeepCluster v2, Caron et al. 2020)")
    uses_indices: ClassVar[bool] = True
    memory_pass_epochs: ClassVar[int] = 1
    name: Literal["deepcluster"] = "deepcluster"
    temperature: float = Field(0.1, gt=0, description="softmax temperature of the prototype scores (paper: 0.1)")
    proj_hidden_dim: int = Field(2048, gt=0, description="projector hidden width (paper: 2048)")
    proj_out_dim: int = Field(128, gt=0, description="size of the projections kept in memory and clustered "
                              "(paper: 128)")
    num_prototypes: tuple[int, ...] = Field((3000, 3000, 3000), min_length=1, description="K of each k-means "
                                            "head, one clustering per head each epoch (paper: 3 x 3000 on ImageNet)")
    kmeans_iterations: int = Field(10, gt=0, description="k-means rounds per clustering (paper's code: 10)")
    num_local_crops: int = Field(6, ge=0, description="small crops besides the 2 global ones (paper: 6)")
    local_crop_size: int | None = Field(None, gt=0, description="side of a local crop (default: 3/7 of the image, "
                                        "as 96/224 in the paper)")
    local_crop_scale: tuple[float, float] = Field((0.05, 0.14), description="local crop area range (paper)")

    @field_validator("num_prototypes")
    @classmethod
    def _positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(k < 1 for k in value):
            raise ValueError(f"every head needs at least one prototype, got {list(value)}")
        return value

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper's code (scripts/deepclusterv2_800ep_pretrain.sh): LARS, lr 4.8 at batch 4096 (0.3 per 256
        # images) down to 4.8e-3, weight decay 1e-6, 10 warm-up epochs; global crops (0.14, 1).
        return {"optim": {"name": "lars", "base_lr": 0.3, "weight_decay": 1e-6, "min_lr_ratio": 0.001},
                "augment": {"scale": [0.14, 1.0]}}


class BarlowConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/2103.03230"
    summary: ClassVar[str] = "redundancy reduction: cross-correlation towards identity (Zbontar et al. 2021)"
    name: Literal["barlow"] = "barlow"
    proj_dim: int = Field(8192, gt=0, description="projector hidden and output width (paper: 8192; solo-learn "
                          "CIFAR: 2048)")
    proj_layers: int = Field(3, ge=1, description="projector depth (paper: 3)")
    lambd: float = Field(0.0051, ge=0, description="weight of the off-diagonal terms (paper: 0.0051)")
    scale_loss: float = Field(1.0, gt=0, description="multiplies the loss (solo-learn CIFAR: 0.1)")
    view_blur_p: tuple[float, float] = Field((1.0, 0.1), description="blur odds of view 1 / view 2 (BYOL recipe)")
    view_solarize_p: tuple[float, float] = Field((0.0, 0.2), description="solarize odds of view 1 / view 2")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper: LARS, lr 0.2 x batch / 256 for the weights, weight decay 1.5e-6, 10 warm-up epochs.
        return {"optim": {"name": "lars", "base_lr": 0.2, "weight_decay": 1.5e-6}}


class VICRegConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/2105.04906"
    summary: ClassVar[str] = "regularised: variance, invariance, covariance terms (Bardes et al. 2022)"
    name: Literal["vicreg"] = "vicreg"
    proj_dim: int = Field(8192, gt=0, description="expander hidden and output width (paper: 8192; solo-learn "
                          "CIFAR: 2048)")
    proj_layers: int = Field(3, ge=1, description="expander depth (paper: 3)")
    sim_weight: float = Field(25.0, ge=0, description="lambda, invariance weight (paper: 25)")
    var_weight: float = Field(25.0, ge=0, description="mu, variance weight (paper: 25)")
    cov_weight: float = Field(1.0, ge=0, description="nu, covariance weight (paper: 1)")
    view_blur_p: tuple[float, float] = Field((1.0, 0.1), description="blur odds of view 1 / view 2 (paper: BYOL's)")
    view_solarize_p: tuple[float, float] = Field((0.0, 0.2), description="solarize odds of view 1 / view 2")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper: LARS, lr 0.2 x batch / 256 (base 0.2), weight decay 1e-6, 10 warm-up epochs.
        return {"optim": {"name": "lars", "base_lr": 0.2, "weight_decay": 1e-6}}


class DINOConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/2104.14294"
    summary: ClassVar[str] = "self-distillation: EMA teacher, centering, sharpening, multi-crop (Caron et al. 2021)"
    name: Literal["dino"] = "dino"
    out_dim: int = Field(65536, gt=0, description="K, the head's output size (paper: 65536)")
    hidden_dim: int = Field(2048, gt=0, description="head MLP hidden width (paper: 2048)")
    bottleneck_dim: int = Field(256, gt=0, description="head bottleneck before the last layer (paper: 256)")
    head_batch_norm: bool = Field(False, description="BN in the head MLP (the paper's ResNet-50 setting)")
    norm_last_layer: bool = Field(True, description="weight-normalised last layer with its norm fixed at 1")
    freeze_last_layer_epochs: float = Field(1, ge=0, description="last layer gets no update this long (paper: 1)")
    student_temperature: float = Field(0.1, gt=0, description="tau_s (paper: 0.1)")
    teacher_temperature: float = Field(0.07, gt=0, description="tau_t after the warm-up (paper ViT-S/16: 0.07)")
    warmup_teacher_temperature: float = Field(0.04, gt=0, description="tau_t at the start (paper: 0.04)")
    warmup_teacher_temperature_epochs: float = Field(30, ge=0, description="tau_t warm-up length (paper: 30)")
    center_momentum: float = Field(0.9, ge=0, lt=1, description="m of the center's EMA (paper: 0.9)")
    momentum: float = Field(0.996, ge=0, le=1, description="teacher EMA at the start (paper: 0.996)")
    final_momentum: float = Field(1.0, ge=0, le=1, description="teacher EMA at the end, cosine (paper: 1)")
    num_local_crops: int = Field(8, ge=0, description="small crops for the student only (official default: 8)")
    local_crop_size: int | None = Field(None, gt=0, description="side of a local crop (default: 3/7 of the "
                                        "image, as 96/224 in the paper)")
    local_crop_scale: tuple[float, float] = Field((0.05, 0.4), description="local crop area range (paper)")
    view_blur_p: tuple[float, float] = Field((1.0, 0.1), description="blur odds of global view 1 / 2 (paper)")
    view_solarize_p: tuple[float, float] = Field((0.0, 0.2), description="solarize odds of global view 1 / 2")
    local_blur_p: float = Field(0.5, ge=0, le=1, description="blur odds of the local views (paper: 0.5)")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper (ViT-S/16): AdamW, lr 5e-4 x batch / 256, weight decay 0.04, 10 warm-up epochs; global crops (0.4, 1).
        return {"optim": {"name": "adamw", "base_lr": 5e-4, "weight_decay": 0.04},
                "augment": {"scale": [0.4, 1.0]}}


def default_patch_size(image_size: int) -> int:
    """A ViT patch giving 8x8 patches at CIFAR and Imagenette sizes, 14x14 at 224 px (ViT-*/16)."""
    return 4 if image_size <= 64 else 12 if image_size <= 128 else 16


class MAEConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/2111.06377"
    summary: ClassVar[str] = "masked image modelling: ViT encodes 25 % of patches, decoder rebuilds pixels (He et al. 2021)"
    name: Literal["mae"] = "mae"
    mask_ratio: float = Field(0.75, gt=0, lt=1, description="fraction of patches removed per image (paper: 0.75)")
    decoder_dim: int = Field(512, gt=0, description="decoder width (paper: 512)")
    decoder_depth: int = Field(8, gt=0, description="decoder blocks (paper: 8)")
    decoder_heads: int = Field(16, gt=0, description="decoder attention heads (paper: 16)")
    norm_pix_loss: bool = Field(True, description="normalise each target patch by its mean and std (paper)")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper: AdamW (betas 0.9, 0.95), lr 1.5e-4 x batch / 256, weight decay 0.05, 40 warm-up epochs;
        # augmentation is only a random resized crop (0.2, 1) and a flip.
        return {
            "encoder": {"name": "vit_tiny_patch16_224", "kwargs": {"patch_size": default_patch_size(image_size)}},
            "optim": {"name": "adamw", "base_lr": 1.5e-4, "weight_decay": 0.05, "betas": [0.9, 0.95],
                      "warmup_epochs": 40},
            "augment": {"scale": [0.2, 1.0], "jitter_p": 0.0, "gray_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0},
        }


class DINOv2Config(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/2304.07193"
    summary: ClassVar[str] = ("self-distillation on a ViT: DINO class-token + iBOT masked-patch losses, Sinkhorn-Knopp "
                              "teacher, KoLeo (Oquab et al. 2023)")
    name: Literal["dinov2"] = "dinov2"
    out_dim: int = Field(65536, gt=0, description="K of the DINO head (dinov2 ssl_default_config dino.head_n_prototypes: "
                         "65536; 131072 for ViT-L/g)")
    hidden_dim: int = Field(2048, gt=0, description="DINO head MLP hidden width (dino.head_hidden_dim: 2048)")
    bottleneck_dim: int = Field(256, gt=0, description="DINO head bottleneck (dino.head_bottleneck_dim: 256)")
    ibot_separate_head: bool = Field(True, description="a separate iBOT head for the patch tokens, else the DINO head "
                                     "(ibot.separate_head: false in ssl_default_config, true in the ViT-L/g training "
                                     "configs vitl14/vitg14 and the paper's 'untying head weights')")
    ibot_out_dim: int = Field(65536, gt=0, description="K of the separate iBOT head (ibot.head_n_prototypes: 65536)")
    ibot_hidden_dim: int = Field(2048, gt=0, description="iBOT head hidden width (ibot.head_hidden_dim: 2048)")
    ibot_bottleneck_dim: int = Field(256, gt=0, description="iBOT head bottleneck (ibot.head_bottleneck_dim: 256)")
    norm_last_layer: bool = Field(False, description="fix the norm of the heads' weight-normalised last layer at 1; "
                                  "DINOv2's DINOHead learns it (weight_g filled with 1, trained): false")
    freeze_last_layer_epochs: float = Field(1, ge=0, description="the heads' last layers get no update this long "
                                            "(optim.freeze_last_layer_epochs: 1)")
    ibot_weight: float = Field(1.0, ge=0, description="weight of the iBOT masked-patch loss (ibot.loss_weight: 1; "
                               "0 = DINO and KoLeo only)")
    koleo_weight: float = Field(0.1, ge=0, description="weight of the KoLeo regulariser on the student's class tokens "
                                "(dino.koleo_loss_weight: 0.1)")
    masking: Literal["block", "random"] = Field("block", description="block-wise masks (dinov2's MaskingGenerator, "
                                                "BEiT's) or uniformly random patches (iBOT's 'rand')")
    mask_probability: float = Field(0.5, ge=0, le=1, description="fraction of the global crops that are masked "
                                    "(ibot.mask_sample_probability: 0.5)")
    mask_ratio: tuple[float, float] = Field((0.1, 0.5), description="range of the masked fraction of a masked crop's "
                                            "patches, stratified over the crops (ibot.mask_ratio_min_max: [0.1, 0.5])")
    sinkhorn_iterations: int = Field(3, gt=0, description="Sinkhorn-Knopp iterations of the teacher centering "
                                     "(sinkhorn_knopp_teacher: 3)")
    student_temperature: float = Field(0.1, gt=0, description="tau_s of both losses (DINOLoss, iBOTPatchLoss: 0.1)")
    teacher_temperature: float = Field(0.07, gt=0, description="tau_t after the warm-up (teacher.teacher_temp: 0.07)")
    warmup_teacher_temperature: float = Field(0.04, gt=0, description="tau_t at the start "
                                              "(teacher.warmup_teacher_temp: 0.04)")
    warmup_teacher_temperature_epochs: float = Field(30, ge=0, description="tau_t warm-up length "
                                                     "(teacher.warmup_teacher_temp_epochs: 30)")
    momentum: float = Field(0.992, ge=0, le=1, description="teacher EMA at the start (teacher.momentum_teacher: 0.992; "
                            "0.994 for ViT-L/g)")
    final_momentum: float = Field(1.0, ge=0, le=1, description="teacher EMA at the end, cosine "
                                  "(teacher.final_momentum_teacher: 1)")
    num_local_crops: int = Field(8, ge=0, description="small crops for the student only (crops.local_crops_number: 8)")
    local_crop_size: int | None = Field(None, gt=0, description="side of a local crop, a multiple of the ViT's patch "
                                        "(default: 3/7 of the image rounded to a multiple of the patch, as 96/224 in "
                                        "crops.local_crops_size)")
    local_crop_scale: tuple[float, float] = Field((0.05, 0.32), description="local crop area range "
                                                  "(crops.local_crops_scale: [0.05, 0.32])")
    view_blur_p: tuple[float, float] = Field((1.0, 0.1), description="blur odds of global view 1 / 2 "
                                             "(DataAugmentationDINO: 1.0 / 0.1)")
    view_solarize_p: tuple[float, float] = Field((0.0, 0.2), description="solarize odds of global view 1 / 2 "
                                                 "(DataAugmentationDINO: 0 / 0.2)")
    local_blur_p: float = Field(0.5, ge=0, le=1, description="blur odds of the local views (DataAugmentationDINO: 0.5)")

    @model_validator(mode="after")
    def _check_ratio(self) -> DINOv2Config:
        low, high = self.mask_ratio
        if not 0 <= low <= high < 1:
            raise ValueError(f"mask_ratio must satisfy 0 <= low <= high < 1, got ({low}, {high})")
        return self

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # dinov2 ssl_default_config.yaml: AdamW (betas 0.9, 0.999), base_lr 0.004 at batch 1024, i.e. 0.001 per 256
        # images at that batch (dinov2 scales it by the square root of batch / 1024, sslcli linearly), weight decay
        # 0.04 (its cosine to 0.4 is not modelled), 10 warm-up epochs, gradients clipped at 3.0; global crops
        # (0.32, 1) and DINO's colour jitter (0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale 0.2. The encoder is MAE's
        # default, a ViT-Tiny with patches giving an 8 x 8 grid at CIFAR and Imagenette sizes, small enough for a CPU
        # (the paper's smallest model is a ViT-S/14, which the GPU presets take).
        return {
            "encoder": {"name": "vit_tiny_patch16_224", "kwargs": {"patch_size": default_patch_size(image_size)}},
            "optim": {"name": "adamw", "base_lr": 1e-3, "weight_decay": 0.04, "betas": [0.9, 0.999],
                      "warmup_epochs": 10, "clip_grad": 3.0},
            "augment": {"scale": [0.32, 1.0], "brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1,
                        "jitter_p": 0.8, "gray_p": 0.2},
        }


# ---------------------------------------------------------------- context-based pretext tasks (issue 15)

# The pretext tasks learn from the image's own geometry and read colour as a shortcut: their views are a
# crop and a flip, no colour jitter, grayscale, blur or solarize (spec defaults, so a preset can change them).
_GEOMETRIC_VIEW = {"jitter_p": 0.0, "gray_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0}


class RotationConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/1803.07728"
    summary: ClassVar[str] = "pretext: predict which of 0/90/180/270 degrees each image was rotated by (Gidaris et al. 2018)"
    name: Literal["rotation"] = "rotation"
    head_hidden_dim: int = Field(0, ge=0, description="hidden width of the 4-way head; 0 = a linear head on the "
                                 "pooled features (paper: the NIN's last blocks + global pooling + linear; a linear "
                                 "head on ResNet pre-logits in Kolesnikov et al. 2019 and S4L)")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper (CIFAR-10, NIN): SGD momentum 0.9, lr 0.1 at batch 128 (x4 rotations), weight decay 5e-4, no
        # warm-up; augmentation is a random crop and a horizontal flip only (gidariss/FeatureLearningRotNet).
        return {"optim": {"name": "sgd", "base_lr": 0.2, "weight_decay": 5e-4, "warmup_epochs": 0},
                "augment": {"scale": [0.35, 1.0], **_GEOMETRIC_VIEW}}


class JigsawConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/1603.09246"
    summary: ClassVar[str] = "pretext: reorder 9 shuffled tiles, classify which of N permutations (Noroozi & Favaro 2016)"
    name: Literal["jigsaw"] = "jigsaw"
    num_permutations: int = Field(100, ge=2, le=5000, description="size of the permutation set, the classes "
                                  "(paper: 1000, its best; 100 learns faster on small data)")
    permutation_seed: int = Field(0, ge=0, description="seed of the permutation set's first, random member; the "
                                  "set is a buffer of the model, so it is in every checkpoint (paper: one fixed set)")
    tile_fraction: float = Field(64 / 75, gt=0, le=1, description="tile side / grid cell side: each tile is a "
                                 "random crop inside its cell, the rest a random gap (paper: 64 px tiles in 75 px "
                                 "cells of a 225 px crop). Tiles are fed at their own size, not resized: "
                                 "floor(image_size // 3 * tile_fraction) px, e.g. 17 px at 64 px, 27 px at 96 px "
                                 "(rounded down to the patch size for a ViT)")
    tile_dim: int = Field(512, gt=0, description="per-tile layer after the shared encoder (paper: fc6, 512)")
    hidden_dim: int = Field(4096, gt=0, description="hidden layer over the 9 concatenated tiles (paper: fc7, 4096)")
    normalize_tiles: bool = Field(True, description="normalise each tile by its own per-channel mean and std, "
                                  "against low-level shortcuts (paper section 3.3)")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper: SGD, lr 0.01, batch 256, AlexNet without batch norm; with BN in the ResNet sslcli takes the
        # lr of the SGD recipes above (0.1) and the era's weight decay 5e-4. Crop (paper: 225 of 256) + flip.
        return {"optim": {"name": "sgd", "base_lr": 0.1, "weight_decay": 5e-4, "warmup_epochs": 0},
                "augment": {"scale": [0.5, 1.0], **_GEOMETRIC_VIEW}}


class RelPosConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/1505.05192"
    summary: ClassVar[str] = "pretext: where is the second patch, which of the centre's 8 neighbours (Doersch et al. 2015)"
    name: Literal["relpos"] = "relpos"
    patch_fraction: float = Field(2 / 3, gt=0, le=1, description="patch side / grid pitch, the rest is the gap "
                                  "(paper: 96 px patches, 48 px gap, pitch 144). Patches are fed at their own size: "
                                  "floor(image_size // 3 * patch_fraction) px, e.g. 14 px at 64 px, 21 px at 96 px "
                                  "(rounded down to the patch size for a ViT)")
    jitter_fraction: float = Field(0.05, ge=0, lt=0.5, description="largest shift of each patch in each axis, "
                                   "as a fraction of the pitch (paper: up to 7 px of 144)")
    color_drop: bool = Field(True, description="per patch, keep one random colour channel and replace the other "
                             "two by Gaussian noise of 1/100 its std, against chromatic aberration (paper: 'color "
                             "dropping'; its alternative, projection, is not implemented)")
    downsample_p: float = Field(0.0, ge=0, le=1, description="probability that a patch is shrunk (area) to a "
                                "random side and enlarged back (bilinear), for robustness to pixelation (paper: "
                                "'some patches', fraction not given; 0 = off)")
    downsample_min_side: float = Field(10 / 96, gt=0, le=1, description="smallest side a shrunk patch gets, as a "
                                       "fraction of the patch side (paper: as little as 100 pixels of 96 x 96)")
    patch_dim: int = Field(4096, gt=0, description="per-patch layer after the shared encoder (paper: fc6, 4096)")
    hidden_dim: int = Field(4096, gt=0, description="hidden layer over the 2 concatenated patches (paper: fc7, 4096)")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper: SGD with batch norm (Caffe, batch 128 pairs, weight decay 5e-4); the image is only resized
        # (150k-450k pixels) before sampling patches, so the view is a mild crop and a flip.
        return {"optim": {"name": "sgd", "base_lr": 0.1, "weight_decay": 5e-4, "warmup_epochs": 0},
                "augment": {"scale": [0.5, 1.0], **_GEOMETRIC_VIEW}}
# Context-based pretext tasks (issue 15): dense predictions from the encoder's spatial feature map.

_COLOUR_PRESERVING = {"jitter_p": 0.0, "gray_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0}


class ColorizationConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/1603.08511"
    summary: ClassVar[str] = ("pretext: predict the ab colours of the L channel as a distribution over 313 ab bins, "
                              "class-rebalanced (Zhang et al. 2016)")
    encoder_input: ClassVar[str] = ("trained on grey images (the neutral grey of each pixel's Lab lightness, the same in "
                                    "all 3 channels); takes RGB normalised with mean/std like every encoder")
    name: Literal["colorization"] = "colorization"
    bins: Literal["paper", "gamut"] = Field("paper", description="the quantised ab space (grid 10): 'paper', "
                                            "Zhang et al.'s 313 bins; 'gamut', the 261 of them that sRGB "
                                            "colours fall in (the other 52 are rim bins no pixel is nearest to)")
    neighbours: int = Field(5, gt=0, description="nearest ab bins of a soft-encoded target (paper: 5)")
    sigma: float = Field(5.0, gt=0, description="Gaussian kernel of the soft encoding and of the prior's smoothing, "
                         "in ab units (paper: 5)")
    rebalance_lambda: float = Field(0.5, ge=0, le=1, description="lambda mixing the prior with the uniform "
                                    "distribution in the rebalancing weights (paper: 0.5; 1 = no rebalancing)")
    target_stride: int = Field(4, gt=0, description="predict ab at 1/this resolution (paper: 4, 56 x 56 at 224 px)")
    decoder_dim: int = Field(256, gt=0, description="width of the decoder's first conv (paper: 256 in its last "
                             "blocks before the 313-way 1x1 conv)")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper: Adam (betas 0.9, 0.99), lr 3e-5 at batch 40 (1.9e-4 x batch / 256), weight decay 1e-3 (as AdamW's
        # decoupled decay here). Colour augmentation would change the targets: crops and flips only.
        return {"optim": {"name": "adamw", "base_lr": 1.9e-4, "weight_decay": 1e-3, "betas": [0.9, 0.99],
                          "warmup_epochs": 0},
                "augment": {"scale": [0.2, 1.0], **_COLOUR_PRESERVING}}


class InpaintingConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/1604.07379"
    summary: ClassVar[str] = ("pretext: rebuild a masked region from its context, weighted L2 (+ optional "
                              "adversarial term) (Pathak et al. 2016)")
    name: Literal["inpainting"] = "inpainting"
    region: Literal["center", "blocks", "shapes"] = Field("center", description="the hole: a central square "
                                                          "(paper's main setting), random blocks (paper section "
                                                          "3.3), or random smooth shapes covering hole_fraction^2 "
                                                          "of the image (a stand-in for the paper's random "
                                                          "regions, PASCAL VOC object outlines)")
    hole_fraction: float = Field(0.5, gt=0, lt=1, description="side of the central square / image side (paper: "
                                 "0.5, a quarter of the area)")
    num_blocks: int = Field(4, gt=0, description="random blocks, each a square of side hole_fraction / 2, so 4 "
                            "cover at most 1/4 of the image (paper: 'up to 1/4')")
    shape_cells: int = Field(4, ge=2, description="region=shapes: the side of the noise grid the shapes come from "
                             "(larger: more, smaller blobs)")
    overlap: int | None = Field(None, ge=0, description="px of context around the hole the decoder also predicts "
                                "(paper: 7 at 128 px; default 7/128 of the side, at least 1)")
    overlap_weight: float = Field(10.0, ge=0, description="loss weight of that overlap band over the hole's (paper: 10)")
    decoder_dim: int = Field(256, gt=0, description="width of the decoder's first conv, halving per x2 stage "
                             "(paper: 512 -> 64 up-convolutions)")
    adversarial_weight: float = Field(0.0, ge=0, description="weight of the adversarial term, the L2 term weighing "
                                      "1 - this (paper: 0.001; 0 = off, no discriminator)")
    discriminator_dim: int = Field(64, gt=0, description="width of the discriminator's first conv (paper: 64)")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper (released code): Adam lr 2e-4 at batch 64 (8e-4 x batch / 256), beta1 0.5, no weight decay.
        return {"optim": {"name": "adamw", "base_lr": 8e-4, "weight_decay": 0.0, "betas": [0.5, 0.999],
                          "warmup_epochs": 0},
                "augment": {"scale": [0.2, 1.0], **_COLOUR_PRESERVING}}


# ---------------------------------------------------------------- the rest of the contrastive family (issue 14)


class CPCConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/1905.09272"
    summary: ClassVar[str] = ("contrastive predictive coding: a masked context network over a grid of patch features "
                              "predicts the patches further down, InfoNCE against every patch of the batch "
                              "(CPC v2, Henaff et al. 2019)")
    encoder_input: ClassVar[str] = ("trained on patches: a grid_size x grid_size grid of half-overlapping patches of "
                                    "side 2 x image_size // (grid_size + 1), each augmented and pooled alone; a whole "
                                    "image is embedded by this encoder applied to the whole image (its pooled "
                                    "features), not by the paper's mean of the patch grid's features")
    name: Literal["cpc"] = "cpc"
    grid_size: int = Field(7, ge=2, description="patches per side of the grid cut from each view (paper: 7 x 7). "
                           "Patches overlap by half, as the paper's 64 px patches at a 32 px stride: stride = "
                           "image_size // (grid_size + 1), side = 2 x stride, the grid centred in the view "
                           "(8 px patches at 32 px, 16 at 64, 56 at 224)")
    min_offset: int = Field(2, ge=1, description="the nearest row predicted below the context's row (the paper "
                            "predicts rows below the context; sslcli starts at 2 because the next row's patches share "
                            "half their pixels with the context's, a shortcut; 1 adds it)")
    max_offset: int = Field(5, ge=1, description="the farthest row predicted below the context's row, k = "
                            "min_offset..max_offset, one linear prediction W_k per k (CPC v1, arXiv 1807.03748: up "
                            "to 5 rows on the 7 x 7 grid); rows beyond the grid are not predicted")
    directions: Literal[1, 2, 4] = Field(4, description="prediction directions, each with its own context network "
                                         "and predictions over the grid rotated: 1 top-down (CPC v1), 2 adds "
                                         "bottom-up, 4 adds left-to-right and right-to-left (CPC v2's bottom-up and "
                                         "horizontal predictions, its final model)")
    context_blocks: int = Field(5, ge=1, description="residual blocks of the context network, each a 1x1 conv, a "
                                "masked 3x3 conv (rows above and the row itself) and a 1x1 conv (PixelCNN-style; "
                                "pl_bolts' CPC v2 PixelCNN: 5)")
    context_dim: int = Field(256, gt=0, description="hidden width of the context blocks (pl_bolts: 256)")
    target_dim: int = Field(0, ge=0, description="0: scores are W_k c . z on the encoder's pooled patch features "
                            "(paper); N > 0: targets and predictions in a shared linear projection of size N "
                            "(pl_bolts CPCTask: 64), a cheaper score")
    patch_flip_p: float = Field(0.5, ge=0, le=1, description="probability each patch is flipped left-right on its own "
                                "(paper: random horizontal flips of each patch)")
    color_drop_p: float = Field(0.5, ge=0, le=1, description="probability each patch keeps only one random colour "
                                "channel, the other two replaced by noise of 1/100 its std (paper: 'colour dropping' "
                                "of two of the three channels per patch; below 1 the encoder also sees colour, which "
                                "the probe's whole images have)")
    patch_jitter_p: float = Field(0.8, ge=0, le=1, description="probability of colour jitter per patch (the paper's "
                                  "further patch augmentations include colour transforms; pl_bolts: 0.8 per image)")
    patch_jitter: tuple[float, float, float, float] = Field((0.4, 0.4, 0.4, 0.1), description="brightness, "
                                                            "contrast, saturation, hue strengths of that jitter "
                                                            "(pl_bolts: 0.4, 0.4, 0.4, 0.1)")
    patch_affine_p: float = Field(0.0, ge=0, le=1, description="probability of a random rotation and shear per patch "
                                  "(the paper's further patch augmentations take rotation and shearing from "
                                  "AutoAugment; 0 = off)")
    patch_rotation: float = Field(30.0, ge=0, le=180, description="largest rotation in degrees (AutoAugment: 30)")
    patch_shear: float = Field(0.3, ge=0, le=1, description="largest horizontal shear factor (AutoAugment: 0.3)")

    @model_validator(mode="after")
    def _check_offsets(self) -> CPCConfig:
        if self.min_offset > self.max_offset:
            raise ValueError(f"min_offset {self.min_offset} is above max_offset {self.max_offset}")
        if self.min_offset >= self.grid_size:
            raise ValueError(f"min_offset {self.min_offset} leaves nothing to predict on a grid of {self.grid_size} "
                             "rows: lower it or raise grid_size")
        if any(s < 0 for s in self.patch_jitter) or self.patch_jitter[3] > 0.5:
            raise ValueError(f"patch_jitter strengths must be >= 0 and the hue's <= 0.5, got {self.patch_jitter}")
        return self

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper: layer norm instead of batch norm in the encoder (batch statistics leak between the patches of
        # an image); timm's groupnorm1 normalises each sample over channels and space, as pl_bolts' CPC-ResNet's
        # LayerNorm([C, H, W]) does (per-channel affine instead of per-element). Optimizer: pl_bolts' Adam 2e-4 at
        # batch 128 (4e-4 per 256 images), weight decay 1e-6. The view is a crop and a flip: colour is augmented
        # per patch in forward.
        return {"encoder": {"kwargs": {"norm_layer": "groupnorm1"}},
                "optim": {"name": "adamw", "base_lr": 4e-4, "weight_decay": 1e-6},
                "augment": {"scale": [0.3, 1.0], "jitter_p": 0.0, "gray_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0}}


# ---------------------------------------------------------------- memory banks (issue 14)


class _MemoryBankContrast(MethodConfigBase):
    """What InstDisc and CMC share: a memory bank of one embedding per training image, contrasted with NCE."""

    uses_indices: ClassVar[bool] = True
    embedding_dim: int = Field(128, gt=0, description="size of the L2-normalised embedding a linear head gives "
                               "the encoder's features, and of each bank entry (paper: 128)")
    temperature: float = Field(0.07, gt=0, description="tau of exp(v . f / tau) (paper: 0.07)")
    bank_momentum: float = Field(0.5, ge=0, lt=1, description="m of the proximal update of an image's entry "
                                 "after each step, f <- normalise(m f + (1 - m) v) (paper: 0.5)")
    loss: Literal["nce", "softmax"] = Field("nce", description="nce: noise-contrastive estimation with the "
                                            "normalisation constant Z estimated on the first batch (paper); "
                                            "softmax: cross entropy over the positive and the drawn negatives, "
                                            "or over every entry when num_negatives = 0")

    @model_validator(mode="after")
    def _full_softmax_needs_softmax(self) -> _MemoryBankContrast:
        if self.num_negatives == 0 and self.loss == "nce":  # type: ignore[attr-defined]
            raise ValueError("num_negatives = 0 contrasts with every bank entry: it needs loss = 'softmax' "
                             "(NCE needs sampled negatives)")
        return self


class InstDiscConfig(_MemoryBankContrast):
    paper: ClassVar[str] = "https://arxiv.org/abs/1805.01978"
    summary: ClassVar[str] = ("contrastive: each image its own class, a memory bank of 128-d embeddings, NCE "
                              "against 4096 drawn entries (Wu et al. 2018)")
    sync_bn: ClassVar[bool] = False  # lemniscate trains with DataParallel: BN statistics per GPU
    name: Literal["instdisc"] = "instdisc"
    num_negatives: int = Field(4096, ge=0, description="K entries drawn per image as negatives, uniformly from "
                               "the other images' (paper: 4096, from all N); 0 = every entry, the full "
                               "non-parametric softmax (paper eq. 2, needs loss = softmax)")
    bank_fill_epochs: int = Field(0, ge=0, description="epochs at the start that train nothing and write the "
                                  "untrained network's embeddings into the bank in place of its random initial "
                                  "vectors, so that the first positives are images' embeddings, not noise (paper: "
                                  "0; ours, for runs of a few epochs)")

    def untrained_epochs(self) -> int:
        return self.bank_fill_epochs

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper / lemniscate main.py: SGD momentum 0.9, lr 0.03 at batch 256, weight decay 5e-4 in the paper
        # (1e-4 in main.py), no warm-up. Augmentation: crop (0.2, 1), grayscale 0.2, colour jitter 0.4 on
        # brightness, contrast, saturation and hue always applied, flip; no blur.
        return {"optim": {"name": "sgd", "base_lr": 0.03, "weight_decay": 5e-4, "warmup_epochs": 0},
                "augment": {"scale": [0.2, 1.0], "brightness": 0.4, "contrast": 0.4, "saturation": 0.4,
                            "hue": 0.4, "jitter_p": 1.0, "gray_p": 0.2, "blur_p": 0.0, "solarize_p": 0.0}}


class CMCConfig(_MemoryBankContrast):
    paper: ClassVar[str] = "https://arxiv.org/abs/1906.05849"
    summary: ClassVar[str] = ("contrastive multiview: an L encoder and an ab encoder of Lab colour contrasted, "
                              "memory banks and NCE or in-batch negatives (Tian et al. 2019)")
    encoder_input: ClassVar[str] = ("CMC's L encoder: trained on grey images (the neutral grey of each pixel's Lab "
                                    "lightness, the same in all 3 channels); takes RGB normalised with mean/std "
                                    "like every encoder. The ab encoder is not exported")
    sync_bn: ClassVar[bool] = False  # the official code trains with DataParallel: BN statistics per GPU
    name: Literal["cmc"] = "cmc"
    negatives: Literal["bank", "batch"] = Field("bank", description="bank: each view's embedding against the "
                                                "other view's memory bank, K drawn entries (paper); batch: "
                                                "symmetric InfoNCE against the other view's embeddings of the "
                                                "(global) batch, no bank")
    num_negatives: int = Field(16384, ge=0, description="K entries drawn per image as negatives, uniformly from "
                               "the other images' (paper: 16384, from all N); 0 = every entry, needs "
                               "loss = softmax")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Official train_CMC.py: SGD momentum 0.9, lr 0.03, weight decay 1e-4, no warm-up; the views are a crop
        # (0.2, 1) and a flip, then Lab: no colour augmentation (it would change the ab view's content).
        return {"optim": {"name": "sgd", "base_lr": 0.03, "weight_decay": 1e-4, "warmup_epochs": 0},
                "augment": {"scale": [0.2, 1.0], "jitter_p": 0.0, "gray_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0}}
