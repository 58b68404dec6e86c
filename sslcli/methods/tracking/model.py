"""Unsupervised Learning of Visual Representations using Videos: tracked patches and a ranking loss.

Wang and Gupta 2015, https://arxiv.org/abs/1505.00687
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslcli import distributed
from sslcli.heads import mlp
from sslcli.losses import ranking_hard_negatives
from sslcli.methods.base import Budget, MethodDefaults, StepOut
from sslcli.methods.temporal import encode_frames
from sslcli.methods.tracking.config import TrackingConfig
from sslcli.methods.tracking.tracker import crop, track


class Tracking(MethodDefaults, nn.Module):
    """Each sample is a window of track_frames frames in a row of one clip (methods/temporal.py WindowSampler),
    whole and un-augmented. The tracker (tracker.py) picks the patch that moves in the first frames and follows it
    to the last; the first and the last patch go through the encoder and an embedding head. Each pair's anchor is
    ranked closer to its positive than to the hardest of every other patch of the global batch (1 - cosine,
    margin M). A window with no motion or a lost track gives no pair (its patches remain negatives)."""

    def __init__(self, cfg: TrackingConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.head = (mlp(feature_dim, cfg.head_hidden_dim, cfg.embedding_dim, batch_norm=False)
                     if cfg.head_hidden_dim else nn.Linear(feature_dim, cfg.embedding_dim))

    def patches(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """Frames [B, K, C, S, S] -> (the first and last patch of each track [B, 2, C, P, P], found [B] bool)."""
        size = frames.shape[-1]
        side = max(1, round(self.cfg.patch_fraction * size))
        with torch.autocast(frames.device.type, enabled=False):
            tracks = track(frames.float().mean(2), side, max(1, round(self.cfg.max_shift * side)),
                           self.cfg.min_motion, self.cfg.min_correlation)
            pair = torch.stack([crop(frames[:, 0], tracks.first, side), crop(frames[:, -1], tracks.last, side)], 1)
            if self.cfg.patch_size and self.cfg.patch_size != side:
                pair = F.interpolate(pair.flatten(0, 1), size=self.cfg.patch_size, mode="bilinear",
                                     antialias=True, align_corners=False).unflatten(0, pair.shape[:2])
        return pair.to(frames.dtype), tracks.found

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        pair, found = self.patches(views[0])
        h = encode_frames(self.encoder, pair)  # [B, 2, D]: first patch, last patch
        z = self.head(h)
        anchor, positive = z.unbind(1)
        # Every patch of the global batch is a candidate negative (gathered with gradients under torchrun).
        candidates = torch.cat([distributed.gather(anchor), distributed.gather(positive)])
        loss = ranking_hard_negatives(anchor, positive, candidates, found, self.cfg.margin, self.cfg.hard_negatives,
                                      offset=distributed.rank() * anchor.shape[0])
        a, p = F.normalize(anchor.detach().float(), dim=1), F.normalize(positive.detach().float(), dim=1)
        logs = {"loss": loss.detach(), "tracked": found.float().mean(),
                "pos_distance": 1 - (a * p).sum(1).mean()}
        return StepOut(loss=loss, logs=logs,
                       embeddings={"features": (h[:, 0], h[:, 1]), "embeddings": (anchor, positive)})
