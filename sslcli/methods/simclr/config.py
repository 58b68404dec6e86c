"""SimCLR: its settings, paper and spec defaults (torch-free)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from sslcli.methods.config_base import MethodConfigBase, S4LRotation


class SimCLRConfig(S4LRotation, MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/2002.05709"
    summary: ClassVar[str] = "contrastive: two views, in-batch negatives, NT-Xent (Chen et al. 2020)"
    family: ClassVar[str] = "contrastive"
    model: ClassVar[str] = "SimCLR"
    recipes: ClassVar[dict[str, str]] = {
        "invariantspread": "InvariantSpread: a linear 128-d embedding, method.loss=invariant_spread",
        "simclrv2": "SimCLR v2: a 3-layer head; finetune --keep-projection-layers 1",
    }
    tiny: ClassVar[dict[str, Any]] = {"proj_hidden_dim": 64, "proj_out_dim": 32}
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
