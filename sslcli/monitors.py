"""Label-free representation health, computed on a training batch's embeddings.

Four numbers answer "is it learning, or collapsing?" without labels:
- std: the per-dimension standard deviation of the L2-normalised embeddings, averaged over dimensions and
  multiplied by sqrt(D). Embeddings spread over the sphere give about 1; a complete collapse (every image
  mapped to the same point) gives 0 (SimSiam, arXiv 2011.10566, section 4.1, which plots the unscaled std
  against 1/sqrt(D)).
- effective rank (RankMe, arXiv 2210.02885): exp of the entropy of the normalised singular values. It is
  1 for a collapsed batch, k for k equal directions, at most min(N, D); it falls under dimensional
  collapse, when the embeddings only use a few directions.
- alignment (Wang & Isola, arXiv 2005.10242): E ||f(x) - f(x+)||^2 over the two views of an image, on
  normalised embeddings: 0 is perfect invariance, 4 is opposite points.
- uniformity (same paper): log E exp(-2 ||f(x) - f(y)||^2) over the pairs of the batch: about -4 for
  points spread on a high-dimensional sphere, 0 when all points coincide.

A collapse is flagged when std < 0.1, effective rank < 2 or uniformity > -0.1 (see COLLAPSE for why).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sslcli import console
from sslcli.console import MetricsLog

# Thresholds for the collapse warning, and why these values:
# - std 0.1: a tenth of the spread of uniformly scattered embeddings (1.0). SimSiam without stop-gradient
#   collapses to 0 within an epoch while the healthy runs stay near 1; 0.1 leaves room for the slow
#   shrinking that non-contrastive methods show early on without crying wolf.
# - effective rank 2: below 2 the batch effectively spans one direction, whatever N and D; a healthy
#   batch uses tens of directions (measured on the quickstart, batch 256: 80-130 for the 512-d features,
#   20-65 for the 128-d projections).
# - uniformity -0.1: exp(-2 d^2) averages to 0.9 or more, i.e. the typical squared distance between two
#   different images is below 0.05 on the unit sphere, where spread points sit at 2.
COLLAPSE = {"std": 0.1, "effective_rank": 2.0, "uniformity": -0.1}


def normalised_std(z: Tensor) -> Tensor:
    """Mean per-dimension std of the L2-normalised rows of z [N, D], times sqrt(D) (about 1 when spread)."""
    z = F.normalize(z.float(), dim=1)
    return z.std(dim=0).mean() * math.sqrt(z.shape[1])


def effective_rank(z: Tensor, eps: float = 1e-7) -> Tensor:
    """RankMe: exp(entropy) of the singular values of z [N, D], each divided by their sum; NaN when z holds a
    non-finite value (the SVD of such a matrix fails to converge and raises; checked without a host sync)."""
    z = z.float()
    finite = torch.isfinite(z).all()
    s = torch.linalg.svdvals(torch.where(finite, z, torch.zeros_like(z)))
    p = s / s.sum().clamp_min(eps) + eps
    rank = torch.exp(-(p * p.log()).sum())
    return torch.where(finite, rank, torch.full_like(rank, float("nan")))


def alignment(z1: Tensor, z2: Tensor) -> Tensor:
    """Mean squared distance between the normalised embeddings of two views of the same images."""
    return (F.normalize(z1.float(), dim=1) - F.normalize(z2.float(), dim=1)).pow(2).sum(dim=1).mean()


def uniformity(z: Tensor, t: float = 2.0) -> Tensor:
    """log of the mean Gaussian potential exp(-t ||zi - zj||^2) over the distinct pairs of the batch."""
    z = F.normalize(z.float(), dim=1)
    return torch.pdist(z).pow(2).mul(-t).exp().mean().log()


@torch.no_grad()
def measure(views: tuple[Tensor, ...], prefix: str) -> dict[str, Tensor]:
    """The four monitors on one kind of embedding: views = (z1,) or (z1, z2) for two views of the same images.

    Returned as tensors (no host sync here); the loop reads them with the logged step."""
    z1 = views[0].detach()
    out = {f"{prefix}_std": normalised_std(z1), f"{prefix}_effective_rank": effective_rank(z1),
           f"{prefix}_uniformity": uniformity(z1)}
    if len(views) > 1:
        out[f"{prefix}_alignment"] = alignment(z1, views[1].detach())
    return out


def collapse_signs(values: dict[str, float]) -> list[str]:
    """Human-readable reasons a logged record shows collapse (empty when it looks healthy)."""
    signs = []
    for key, value in values.items():
        for name, limit in COLLAPSE.items():
            if not key.endswith("_" + name) or not math.isfinite(value):
                continue
            low_is_bad = name != "uniformity"
            if (value < limit) if low_is_bad else (value > limit):
                relation = "<" if low_is_bad else ">"
                signs.append(f"{key} {value:.3g} {relation} {limit}")
    return signs


class CollapseWatch:
    """on_log: a warning line (and a metrics event) when the label-free monitors show collapse."""

    def __init__(self, metrics: MetricsLog | None):
        self.metrics = metrics
        self.warnings = 0
        self._last: set[str] = set()

    def check(self, record: dict[str, Any]) -> None:
        signs = collapse_signs(record)
        flagged = {s.split()[0] for s in signs}
        if signs and flagged != self._last:  # once when it starts or changes, not at every logged step
            self.warnings += 1
            console.warn(f"step {record['step']}: the embeddings look collapsed ({'; '.join(signs)}); "
                         "lower optim.base_lr, check the augmentations, or see README 'Is it learning?'")
        if signs and self.metrics is not None:
            self.metrics.write({"step": record["step"], "event": "collapse", "collapse": signs})
        self._last = flagged
