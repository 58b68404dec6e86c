"""A memory bank of one embedding per training image, and the contrast against it (InstDisc, CMC).

Wu et al. 2018 (https://arxiv.org/abs/1805.01978, section 3) keep for every training image i a unit vector
f_i, the image's embedding from earlier steps, and contrast each new embedding v_i with its own entry (the
positive) and with entries drawn from the bank at random (the negatives), as the reference code does
(zhirongw/lemniscate.pytorch `lib/NCEAverage.py`, `lib/LinearAverage.py`; HobbitLong/CMC `NCE/NCEAverage.py`):

- negatives: K indices drawn uniformly for every image of the batch (the references' AliasMethod over uniform
  weights), or all N entries (K = 0: the full non-parametric softmax, eq. 2). Deviation: they are drawn from
  the other N - 1 entries; the references draw from all N, the image's own among them, harmless on ImageNet
  (K / N = 0.3 %) but not on small data: with Imagenette's 5,500 images and K = 4096 an image's own entry
  would be among its negatives 0.74 times a step, and once its positive term saturates NCE pushes v away
  from its own entry (a 512-image run with K = 4096 collapsed that way).
- NCE: P(i|v) = exp(v . f_i / tau) / Z, with Z estimated once, as N x the mean of exp(v . f / tau) over the
  first batch's scores, then held (lemniscate's `params[2]`); see losses.nce.
- the update of an image's entry after the step, f_i <- normalise(m f_i + (1 - m) v_i): the references' form
  of the paper's proximal regularisation (section 3.3), m = 0.5.

The bank and Z are registered buffers, so checkpoints hold them and a resume continues them bit for bit.
Both change only in staged updates (staging.py), which the method's on_step_end commits after an applied step:
a skipped step leaves them as they were.
Under torchrun every rank's embeddings and indices are gathered before the update, and Z is estimated over
the global batch, so the bank is the same on every rank (and the same as one process with the global batch).
Negatives are drawn from torch's default generator of the device (checkpointed), so a resume draws the same.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslcli import distributed
from sslcli.errors import UsageError
from sslcli.losses import full_precision, nce, non_parametric_softmax
from sslcli.methods.staging import Staging


def score_every_entry(size: int, dim: int, batch: int, columns: int) -> bool:
    """Whether to score v against every entry (one matmul that reads the bank once) and pick the drawn columns,
    rather than gather batch x columns rows (the references' way): the first moves less memory up to ~350k
    entries at batch 256 and K 4096, and is 15x faster on a CPU core for 20k entries. Same scores."""
    return size * (dim + batch) <= batch * columns * dim


class MemoryBank(Staging, nn.Module):
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

    @property
    def size(self) -> int:
        return self.memory.shape[0]

    def draw(self, n: int, k: int, device: torch.device) -> Tensor | None:
        """[n, k] draws uniform in [0, N - 1) (scores() moves each past its image's own index, so a row is
        uniform over the other entries); None for k = 0, where every entry is scored."""
        if k == 0:
            return None
        if self.size < 2:
            raise UsageError("a memory bank of one image has no other image to draw negatives from; train on "
                             "more images or set method.num_negatives=0")
        return torch.randint(0, self.size - 1, (n, k), device=device)

    @full_precision
    def scores(self, v: Tensor, indices: Tensor, draws: Tensor | None) -> Tensor:
        """Cosine scores of v [B, D] (unit rows) with its own entry (column 0) and the K negatives drawn for it
        [B, 1 + K]; with draws None, with every entry [B, N] (the positive is then column indices[i])."""
        v = v.float()
        memory = self.memory.detach()  # the bank is no parameter: the gradient reaches v only
        if draws is None:
            return v @ memory.T
        negatives = draws + (draws >= indices[:, None]).long()  # skip the image's own entry
        columns = torch.cat([indices[:, None], negatives], dim=1)
        if score_every_entry(self.size, memory.shape[1], *columns.shape):
            return (v @ memory.T).gather(1, columns)
        return torch.bmm(memory[columns], v.unsqueeze(2)).squeeze(2)

    @full_precision
    def nce_probabilities(self, scores: Tensor, temperature: float) -> Tensor:
        """exp(scores / tau) / Z. Until Z is set, this batch's estimate (the global batch's under torchrun)
        is used and staged, so the first applied step fixes it, as lemniscate's first forward does."""
        e = torch.exp(scores.float() / temperature)
        mean = distributed.all_reduce_(e.detach().mean()) / distributed.world_size()  # equal shares per rank
        z = torch.where(self.z > 0, self.z, mean * self.size)
        self.stage("z", partial(self.z.copy_, z))
        return e / z

    def write(self, v: Tensor, indices: Tensor, replace: bool = False) -> None:
        """Keep this step's embeddings (every rank's) for the update after the optimizer step; with `replace`,
        they replace their entries outright (momentum 0: InstDisc's bank_fill_epochs)."""
        momentum = 0.0 if replace else self.momentum
        self.stage("entries", partial(self.update, distributed.gather(v.detach().float()), distributed.gather(indices),
                                      momentum))

    @torch.no_grad()
    def update(self, v: Tensor, indices: Tensor, momentum: float) -> None:
        """The proximal update of the entries at `indices` with the embeddings v (after an applied step)."""
        updated = self.memory[indices] * momentum + v * (1 - momentum)
        self.memory.index_copy_(0, indices, F.normalize(updated, dim=1))


def bank_loss(bank: MemoryBank, v: Tensor, indices: Tensor, draws: Tensor | None, temperature: float,
              loss: str) -> Tensor:
    """The contrast of the unit embeddings v [B, D] with `bank`: NCE over the positive and K drawn negatives
    (noise uniform over the N - 1 other entries), or the softmax cross entropy over them (CMC's
    NCESoftmaxLoss), or over every entry when draws is None (Wu et al. eq. 2, lemniscate's LinearAverage)."""
    scores = bank.scores(v, indices, draws)
    if loss == "softmax":
        target = indices if draws is None else torch.zeros_like(indices)
        return non_parametric_softmax(scores, target, temperature)
    return nce(bank.nce_probabilities(scores, temperature), 1.0 / (bank.size - 1))
