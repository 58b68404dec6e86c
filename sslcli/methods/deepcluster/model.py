"""DeepCluster v2: k-means of a memory of projections every epoch, prototypes set to the centroids.

Caron et al. 2020, https://arxiv.org/abs/2006.09882 (appendix; reference code facebookresearch/swav
main_deepclusterv2.py). DeepCluster (Caron et al. 2018) with SwAV's training pieces: multi-crop, an MLP
projection head, L2-normalised projections, and a cross entropy against fixed prototypes at temperature 0.1.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslcli import distributed
from sslcli.errors import UsageError
from sslcli.heads import mlp
from sslcli.losses import deepcluster_v2, kmeans_init, spherical_kmeans
from sslcli.methods.base import Budget, MethodDefaults, StepOut, views_by_size
from sslcli.methods.deepcluster.config import DeepClusterConfig


class DeepClusterV2(MethodDefaults, nn.Module):
    """Encoder -> projector -> L2-normalised z; each crop's scores against H heads of prototypes (bias-free
    linear layers whose rows are the normalised k-means centroids, never trained) predict, by cross entropy
    at temperature 0.1, the cluster its image got at the last k-means (losses.deepcluster_v2).

    The memory: `memory` [2, N, D] holds the projections of the 2 global crops of every training image
    (N = budget.num_images, indexed by the image's position in the training set), written after each
    applied step (on_step_end) from every rank (a gather), so it is the same on every rank. At the end of
    each epoch head h clusters memory[h % 2] (the reference alternates the crops over the heads) by
    spherical k-means (losses.spherical_kmeans: kmeans_iterations rounds, empty clusters keep their
    centroid) started from K rows drawn by a generator seeded with (epoch, head), so every rank and every
    resume draws the same; its centroids become the head's prototypes and its clusters the `assignments`
    [H, N] the next epoch trains on. Memory, assignments and prototypes are registered state: a checkpoint
    holds them and a resume mid-epoch trains on the very assignments of a run never stopped.

    The first epoch: the reference fills its memory with a pass of the initial network over the data
    before it trains (init_memory). Here the data go through the training loop only, so the first epoch
    is that pass: the steps fill the memory, the loss is 0 (no image has a cluster yet) and every
    gradient is dropped (cancel_gradients), so the optimizer leaves the weights as they are (a zero
    gradient would not: weight decay, momentum and LARS's trust ratio still move them); only the batch-norm
    running statistics move, as in the reference's pass (train mode). The k-means at its end gives the
    second epoch its clusters. A run of E epochs thus trains E - 1, with the learning-rate
    schedule counted from the first. The reference's memory is per rank, the images that rank saw in the
    epoch; this one is global, one row per training image: images the last epoch did not reach (its
    incomplete last batch is dropped) keep the projection of the epoch that saw them, where the reference
    leaves them out for an epoch; an image never seen gets no cluster (-1, no loss), as the reference's
    ignore_index.

    The k-means runs in on_step_end of an epoch's last step, after that step's entries are written: never
    on a step that was not applied (the synchronous loop skips on_step_end, the sync-free one undoes it),
    in which case the previous clustering serves one more epoch. The last epoch's k-means is in the final
    checkpoint too (its prototypes are the clusters of the final projections).
    """

    def __init__(self, cfg: DeepClusterConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        if max(cfg.num_prototypes) > budget.num_images:
            fewer = ",".join([str(max(1, budget.num_images // 10))] * len(cfg.num_prototypes))
            raise UsageError(f"deepcluster: method.num_prototypes {list(cfg.num_prototypes)} asks for more "
                             f"clusters than the {budget.num_images} training images; k-means needs at least one "
                             f"image per cluster: lower it (e.g. --set method.num_prototypes=[{fewer}])")
        self.encoder = encoder
        self.projector = mlp(feature_dim, cfg.proj_hidden_dim, cfg.proj_out_dim)
        # Frozen for the whole run, as the reference (freeze_prototypes_niters beyond its last step): each
        # epoch's k-means sets them. They start as random unit rows, used by no loss before the first k-means.
        self.prototypes = nn.ModuleList(nn.Linear(cfg.proj_out_dim, k, bias=False) for k in cfg.num_prototypes)
        for head in self.prototypes:
            head.weight.requires_grad_(False)
            head.weight.copy_(F.normalize(head.weight, dim=1))
        self.steps_per_epoch = budget.steps_per_epoch
        n = budget.num_images
        self.register_buffer("memory", torch.zeros(2, n, cfg.proj_out_dim))
        self.register_buffer("filled", torch.zeros(n, dtype=torch.bool))
        self.register_buffer("assignments", torch.full((len(cfg.num_prototypes), n), -1, dtype=torch.long))

    def forward(self, views: list[Tensor], step: int, indices: Tensor | None = None) -> StepOut:
        if indices is None:
            raise ValueError("deepcluster needs each image's training-set index (its config sets uses_indices)")
        h = [self.encoder(torch.cat(group)) for group in views_by_size(views)]
        z = torch.cat([F.normalize(self.projector(hi), dim=1) for hi in h]).chunk(len(views))
        targets = self.assignments[:, indices]
        loss = deepcluster_v2(list(z), [head.weight for head in self.prototypes], targets, self.cfg.temperature)
        self.stage("memory", partial(self.remember, indices, torch.stack([z[0].detach(), z[1].detach()], dim=1)))
        global_h = h[0].chunk(len(views_by_size(views)[0]))  # the first group holds the two global crops
        return StepOut(loss=loss, logs={"loss": loss.detach()},
                       embeddings={"features": global_h[:2], "projections": z[:2]})

    def cancel_gradients(self, step: int) -> None:
        """The first epoch fills the memory and trains nothing: no gradient reaches the optimizer (the
        training loop then skips its step)."""
        if step < self.steps_per_epoch:
            for p in self.parameters():
                p.grad = None

    def remember(self, indices: Tensor, z: Tensor) -> None:
        """The projections z [B, 2, D] of the two global crops of the images at `indices`, into the memory."""
        indices, z = distributed.gather(indices), distributed.gather(z)  # every rank's images, rank order
        self.memory.index_copy_(1, indices, z.transpose(0, 1).to(self.memory.dtype))
        self.filled.index_fill_(0, indices, True)

    @torch.no_grad()
    def on_step_end(self, step: int) -> None:
        super().on_step_end(step)  # the staged memory entries first: the k-means reads them
        if (step + 1) % self.steps_per_epoch == 0:
            self.cluster(epoch=(step + 1) // self.steps_per_epoch)

    @torch.no_grad()
    def cluster(self, epoch: int) -> None:
        """k-means of the memory for the epoch `epoch` (counted from 0): prototypes and assignments."""
        for h, head in enumerate(self.prototypes):
            generator = torch.Generator(device=self.memory.device).manual_seed(1_000_003 * epoch + h)
            init = kmeans_init(self.filled, head.weight.shape[0], generator)
            centroids, assigned = spherical_kmeans(self.memory[h % 2], init, self.cfg.kmeans_iterations, self.filled)
            head.weight.copy_(centroids)
            self.assignments[h].copy_(assigned)
