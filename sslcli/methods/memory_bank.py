"""A memory bank of one embedding per training image, and the contrast against it (InstDisc, CMC).

Wu et al. 2018 (https://arxiv.org/abs/1805.01978, section 3.2) keep for every training image i a unit vector
f_i, the image's embedding from earlier steps, and contrast each new embedding v_i with its own entry (the
positive) and with entries drawn from the bank at random (the negatives), as the reference code does
(zhirongw/lemniscate.pytorch `lib/NCEAverage.py`, `lib/LinearAverage.py`; HobbitLong/CMC `NCE/NCEAverage.py`):

- negatives: K indices drawn uniformly from the N entries for every image of the batch (the references'
  AliasMethod over uniform weights), the positive not excluded; or one draw shared by the whole batch
  (`shared`, a cheaper deviation), or all N entries (K = 0: the full non-parametric softmax, eq. 2).
- NCE: P(i|v) = exp(v . f_i / tau) / Z, with Z estimated once, as N x the mean of exp(v . f / tau) over the
  first batch's scores, then held (lemniscate's `params[2]`); see losses.nce.
- proximal update (eq. 10 of Wu et al.'s section 3.3): after the step, f_i <- normalise(m f_i + (1 - m) v_i).

The bank and Z are registered buffers, so checkpoints hold them and a resume continues them bit for bit.
Both change only in `commit`, which the method calls from on_step_end: a skipped step leaves them as they were.
Under torchrun every rank's embeddings and indices are gathered before the update, and Z is estimated over
the global batch, so the bank is the same on every rank (and the same as one process with the global batch).
Negatives are drawn from torch's default generator of the device (checkpointed), so a resume draws the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslcli import distributed
from sslcli.errors import UsageError
from sslcli.losses import full_precision, nce, non_parametric_softmax


class MemoryBank(nn.Module):
    """N unit vectors of `dim`, one per training image, with the NCE normalisation constant Z of its scores."""

    def __init__(self, size: int, dim: int, momentum: float, method: str):
        super().__init__()
        if size <= 0:
            raise UsageError(f"{method} keeps one memory-bank entry per training image, but it was given no "
                             "training images (Budget.num_images = 0)")
        self.momentum = momentum
        # Random unit vectors; lemniscate draws uniform ones whose squared norm is 1 in expectation.
        self.register_buffer("memory", F.normalize(torch.randn(size, dim), dim=1))
        # Z of NCE (lemniscate's params[2]): -1 until the first applied step sets it.
        self.register_buffer("z", torch.full((), -1.0))
        self._pending: tuple[Tensor, Tensor] | None = None
        self._pending_z: Tensor | None = None

    @property
    def size(self) -> int:
        return self.memory.shape[0]

    def draw(self, n: int, k: int, shared: bool, device: torch.device) -> Tensor | None:
        """[n, k] negative indices, uniform over the bank (one row per image; `shared`: the same row for all,
        expanded without a copy); None for k = 0, where every entry is a negative."""
        if k == 0:
            return None
        if shared:
            return torch.randint(0, self.size, (k,), device=device).expand(n, k)
        return torch.randint(0, self.size, (n, k), device=device)

    @full_precision
    def scores(self, v: Tensor, indices: Tensor, negatives: Tensor | None) -> Tensor:
        """Cosine scores of v [B, D] (unit rows) with its own entry (column 0) and its negatives' [B, 1 + K];
        with negatives None, with every entry [B, N] (the positive is then column indices[i])."""
        v = v.float()
        memory = self.memory.detach()  # the bank is no parameter: the gradient reaches v only
        if negatives is None:
            return v @ memory.T
        positive = (v * memory[indices]).sum(dim=1, keepdim=True)
        if negatives.stride(0) == 0:  # shared: one [K, D] gather and a matmul instead of B x K gathered rows
            negative = v @ memory[negatives[0]].T
        else:
            negative = torch.bmm(memory[negatives], v.unsqueeze(2)).squeeze(2)
        return torch.cat([positive, negative], dim=1)

    @full_precision
    def nce_probabilities(self, scores: Tensor, temperature: float) -> Tensor:
        """exp(scores / tau) / Z. Until Z is set, this batch's estimate (the global batch's under torchrun)
        is used and staged, so the first applied step fixes it, as lemniscate's first forward does."""
        e = torch.exp(scores.float() / temperature)
        mean = distributed.all_reduce_(e.detach().mean()) / distributed.world_size()  # equal shares per rank
        z = torch.where(self.z > 0, self.z, mean * self.size)
        self._pending_z = z
        return e / z

    def stage(self, v: Tensor, indices: Tensor) -> None:
        """Keep this step's embeddings (every rank's) for the update after the optimizer step."""
        self._pending = (distributed.gather(v.detach().float()), distributed.gather(indices))

    @torch.no_grad()
    def commit(self) -> None:
        """The proximal update of the staged entries, and Z once it was estimated; nothing when none is staged."""
        if self._pending_z is not None:
            self.z.copy_(self._pending_z)
            self._pending_z = None
        if self._pending is None:
            return
        v, indices = self._pending
        self._pending = None
        updated = self.memory[indices] * self.momentum + v * (1 - self.momentum)
        self.memory.index_copy_(0, indices, F.normalize(updated, dim=1))


def bank_loss(bank: MemoryBank, v: Tensor, indices: Tensor, negatives: Tensor | None, temperature: float,
              loss: str) -> Tensor:
    """The contrast of the unit embeddings v [B, D] with `bank`: NCE over the positive and K drawn negatives,
    or the softmax cross entropy over them (CMC's NCESoftmaxLoss), or over every entry when negatives is None
    (Wu et al. eq. 2, lemniscate's LinearAverage)."""
    scores = bank.scores(v, indices, negatives)
    if loss == "softmax":
        target = indices if negatives is None else torch.zeros_like(indices)
        return non_parametric_softmax(scores, target, temperature)
    return nce(bank.nce_probabilities(scores, temperature), 1.0 / bank.size)
