"""Projection and prediction heads shared by the methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, batch_norm: bool = True,
        last_batch_norm: bool = False, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear -> [BN] -> activation repeated, then a last Linear (optionally followed by an affine-free BN).

    With batch norm the hidden Linears carry no bias: BN's shift makes it redundant (SimCLR v2, BYOL).
    The last BN (SimCLR v2, MoCo v3, Barlow Twins, SimSiam) has no affine parameters, as in those papers.
    """
    if num_layers < 1:
        raise ValueError("an MLP needs at least one layer")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(activation())
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=not last_batch_norm))
    if last_batch_norm:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


class NormalizedLinear(nn.Module):
    """A bias-free Linear whose rows are L2-normalised in the forward pass: weight norm with g = 1.

    DINO's last layer (norm_last_layer=True) and SwAV's prototypes are this: the logits are cosine
    similarities scaled only by the temperature. With learn_scale the per-row norm g is learned instead
    (DINO's norm_last_layer=False).
    """

    def __init__(self, in_dim: int, out_dim: int, learn_scale: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.weight, std=0.02)
        self.scale = nn.Parameter(torch.ones(out_dim, 1)) if learn_scale else None

    def forward(self, x: Tensor) -> Tensor:
        weight = F.normalize(self.weight, dim=1)
        if self.scale is not None:
            weight = weight * self.scale
        return F.linear(x, weight)


class DINOHead(nn.Module):
    """DINO's projection head (arXiv 2104.14294, section 3.1 and the official dino_head):

    a 3-layer MLP with GELU (hidden 2048) to a bottleneck (256), L2 normalisation, then a weight-normalised
    Linear to K prototypes. No batch norm, as in the paper's ViT setting.
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 num_layers: int = 3, norm_last_layer: bool = True, batch_norm: bool = False):
        super().__init__()
        self.mlp = mlp(in_dim, hidden_dim, bottleneck_dim, num_layers=num_layers, batch_norm=batch_norm,
                       activation=nn.GELU)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.last_layer = NormalizedLinear(bottleneck_dim, out_dim, learn_scale=not norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))
