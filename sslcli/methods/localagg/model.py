"""LocalAgg: Local Aggregation for Unsupervised Learning of Visual Embeddings.

Zhuang, Zhai & Yamins 2019, https://arxiv.org/abs/1903.12355 (reference code: neuroailab/LocalAggregation)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslcli.losses import full_precision, kmeans_init, local_aggregation, spherical_kmeans
from sslcli.methods.base import Budget, MethodDefaults, StepOut
from sslcli.methods.localagg.config import LocalAggConfig
from sslcli.methods.memory_bank import MemoryBank, bank_loss


class LocalAgg(MethodDefaults, nn.Module):
    """One view per image through the encoder and a linear head to a unit embedding v_i; a memory bank keeps
    one entry per training image (InstDisc's, memory_bank.py: updated with momentum 0.5 after each step).
    The background neighbours B_i are the `num_background` entries nearest v_i; the close neighbours C_i are
    the entries in v_i's cluster in any of `num_clusterings` spherical k-means of the bank (losses.spherical_
    kmeans from different starts, rerun at the end of every epoch; v_i's cluster is its own entry's). The
    loss is -log P(C_i n B_i | v_i) / P(B_i | v_i) (losses.local_aggregation): v_i is drawn towards its close
    neighbours among its background ones.

    The image's own entry is always among its background neighbours (it is in each of its clusters), so C_i n
    B_i is never empty. With `bank_fill_epochs` (ours, as InstDisc's), the first epochs train nothing and
    write the untrained network's embeddings into the bank in place of its random vectors; with
    `instance_epochs`, the epochs after them train InstDisc's softmax against the bank (its own entry against
    `instance_negatives` drawn ones), the paper's warm start. The clusterings and the
    bank are buffers: checkpoints hold them and a resume goes on with the same ones.

    Deviation: the k-means starts are drawn by a generator seeded with (epoch, clustering) rather than the
    reference's faiss seeds, so every rank and every resume draws the same.
    """

    def __init__(self, cfg: LocalAggConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.head = nn.Linear(feature_dim, cfg.embedding_dim)
        self.bank = MemoryBank(budget.num_images, cfg.embedding_dim, cfg.bank_momentum, "localagg")
        self.steps_per_epoch = budget.steps_per_epoch
        # Passes over the data, not schedule lengths: the fill, then instance recognition, then LocalAgg.
        self.fill_steps = budget.data_epochs_to_steps(cfg.bank_fill_epochs)
        self.instance_steps = budget.data_epochs_to_steps(cfg.bank_fill_epochs + cfg.instance_epochs)
        # Both are counts of bank entries, scaled to this training set (config.py), at most every image.
        self.num_background = cfg.background_count(budget.num_images)
        self.num_clusters = cfg.cluster_count(budget.num_images)
        self.cluster_id_dtype = torch.int16 if self.num_clusters <= torch.iinfo(torch.int16).max else torch.int32
        self.register_buffer("assignments", torch.zeros(cfg.num_clusterings, budget.num_images, dtype=torch.long))
        self.cluster(epoch=0)  # of the initial bank; a resume loads the checkpoint's over it

    @torch.no_grad()
    def cluster(self, epoch: int) -> None:
        """The bank's `num_clusterings` k-means for the epoch `epoch` (counted from 0)."""
        every = torch.ones(self.bank.size, dtype=torch.bool, device=self.bank.memory.device)
        for h in range(self.cfg.num_clusterings):
            generator = torch.Generator(device=self.bank.memory.device).manual_seed(1_000_003 * epoch + h)
            init = kmeans_init(every, self.num_clusters, generator)
            _, assigned = spherical_kmeans(self.bank.memory, init, self.cfg.kmeans_iterations)
            self.assignments[h].copy_(assigned)

    @full_precision
    def neighbours(self, v: Tensor, indices: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(scores [B, K] of v with its background neighbours, their bank indices [B, K], which are close [B, K]),
        in no particular order along K; the image's own entry is always among them. In float32 (autocast off):
        a bf16 cosine would blur which entries are the nearest."""
        scores = v.float() @ self.bank.memory.detach().T  # [B, N]
        ranked = scores.detach().scatter(1, indices[:, None], float("inf"))  # the own entry always in
        # Unsorted: the loss sums over the two sets, so their order is never used and its sort is saved.
        background = ranked.topk(self.num_background, dim=1, sorted=False).indices
        # Each entry's cluster in every clustering as one contiguous row of small integers: the [B, K, H] gather
        # reads a row per neighbour instead of one scattered int64 per neighbour and clustering.
        by_image = self.assignments.T.to(self.cluster_id_dtype)  # [N, H]
        close = (by_image[background] == by_image[indices][:, None, :]).any(dim=-1)  # [B, K]
        return scores.gather(1, background), background, close

    def forward(self, views: list[Tensor], step: int, indices: Tensor) -> StepOut:
        x = views[0]
        h = self.encoder(x)
        v = F.normalize(self.head(h).float(), dim=1)
        logs: dict[str, Tensor] = {}
        filling = step < self.fill_steps
        if filling:  # a zero loss on the graph: backward runs as usual and cancel_gradients drops the gradients
            loss = (v * 0.0).sum()
        elif step < self.instance_steps:  # the warm start: instance recognition against the bank
            draws = self.bank.draw(x.shape[0], min(self.cfg.instance_negatives, self.bank.size - 1), x.device)
            loss = bank_loss(self.bank, v, indices, draws, self.cfg.temperature, "softmax")
        else:
            scores, _, close = self.neighbours(v, indices)
            loss = local_aggregation(scores, close, self.cfg.temperature)
            logs["close_fraction"] = close.float().mean().detach()
        self.bank.write(v, indices, replace=filling)
        logs["loss"] = loss.detach()
        return StepOut(loss=loss, logs=logs, embeddings={"features": (h,), "projections": (v,)})

    def cancel_gradients(self, step: int) -> None:
        """The bank-filling epochs train nothing: no gradient reaches the optimizer (the loop skips its step)."""
        if step < self.fill_steps:
            for p in self.parameters():
                p.grad = None

    @torch.no_grad()
    def on_step_end(self, step: int) -> None:
        super().on_step_end(step)  # the staged bank entries first: the k-means reads them
        if (step + 1) % self.steps_per_epoch == 0:
            self.cluster(epoch=(step + 1) // self.steps_per_epoch)
