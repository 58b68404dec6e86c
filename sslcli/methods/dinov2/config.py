"""DINOv2: its settings, paper and spec defaults (torch-free)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from sslcli.methods.config_base import (
    AsymmetricViews,
    MethodConfigBase,
    MultiCrop,
    default_patch_size,
)


class DINOv2Config(MultiCrop, AsymmetricViews, MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/2304.07193"
    summary: ClassVar[str] = ("self-distillation on a ViT: DINO class-token + iBOT masked-patch losses, Sinkhorn-Knopp "
                              "teacher, KoLeo (Oquab et al. 2023)")
    family: ClassVar[str] = "distillation"
    model: ClassVar[str] = "DINOv2"
    encoder_kind: ClassVar[str] = "vit"
    tiny: ClassVar[dict[str, Any]] = {"out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 16, "ibot_out_dim": 48, "ibot_hidden_dim": 64, "ibot_bottleneck_dim": 16, "num_local_crops": 2}
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
    local_crop_scale: tuple[float, float] = Field((0.05, 0.32), description="local crop area range "
                                                  "(crops.local_crops_scale: [0.05, 0.32])")
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
