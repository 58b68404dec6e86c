"""VICReg: its settings, paper and spec defaults (torch-free)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from sslcli.methods.config_base import AsymmetricViews, MethodConfigBase


class VICRegConfig(AsymmetricViews, MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/2105.04906"
    summary: ClassVar[str] = "regularised: variance, invariance, covariance terms (Bardes et al. 2022)"
    family: ClassVar[str] = "redundancy reduction"
    model: ClassVar[str] = "VICReg"
    tiny: ClassVar[dict[str, Any]] = {"proj_dim": 64}
    name: Literal["vicreg"] = "vicreg"
    proj_dim: int = Field(8192, gt=0, description="expander hidden and output width (paper: 8192; solo-learn "
                          "CIFAR: 2048)")
    proj_layers: int = Field(3, ge=1, description="expander depth (paper: 3)")
    sim_weight: float = Field(25.0, ge=0, description="lambda, invariance weight (paper: 25)")
    var_weight: float = Field(25.0, ge=0, description="mu, variance weight (paper: 25)")
    cov_weight: float = Field(1.0, ge=0, description="nu, covariance weight (paper: 1)")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper: LARS, lr 0.2 x batch / 256 (base 0.2), weight decay 1e-6, 10 warm-up epochs.
        return {"optim": {"name": "lars", "base_lr": 0.2, "weight_decay": 1e-6}}
