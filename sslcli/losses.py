"""Loss functions as pure functions of embeddings. Each is tested against a hand-written reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR's normalised temperature-scaled cross entropy (arXiv 2002.05709, eq. 1).

    z1[i] and z2[i] are two views of image i. Each of the 2N embeddings has its other view as the
    positive and the remaining 2N - 2 embeddings as negatives; the loss is the mean over all 2N anchors.
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.T / temperature
    # An anchor is never its own negative: mask the diagonal out of the softmax.
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    # The positive of anchor i is i + n (mod 2n); built on the device to avoid a host-to-device copy.
    targets = (torch.arange(2 * n, device=z.device) + n) % (2 * n)
    return F.cross_entropy(logits, targets)
