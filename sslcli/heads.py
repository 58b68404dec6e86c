"""Projection and prediction heads shared by the methods."""

from __future__ import annotations

from torch import nn


def mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, batch_norm: bool = True,
        last_batch_norm: bool = False) -> nn.Sequential:
    """Linear -> [BN] -> ReLU repeated, then a last Linear (optionally followed by an affine-free BN).

    With batch norm the hidden Linears carry no bias: BN's shift makes it redundant (SimCLR v2, BYOL).
    The last BN (SimCLR v2, MoCo v3, Barlow Twins) has no affine parameters, as in those papers.
    """
    if num_layers < 1:
        raise ValueError("an MLP needs at least one layer")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=not last_batch_norm))
    if last_batch_norm:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)
