"""Jigsaw: Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles.

Noroozi & Favaro 2016, https://arxiv.org/abs/1603.09246
"""

from __future__ import annotations

import functools
import itertools

import torch
from torch import Tensor, nn

from sslcli.heads import mlp
from sslcli.methods.base import Budget, MethodDefaults, StepOut
from sslcli.methods.jigsaw.config import JigsawConfig
from sslcli.methods.pretext import (
    classification_loss,
    crop_patches,
    normalize_patches,
    patch_side,
    size_multiple,
)

GRID = 3
NUM_TILES = GRID * GRID


@functools.cache
def _all_permutations() -> Tensor:
    """The 9! orderings of 9 tiles, one per column ([9, 362880] uint8: one row per position, fast to compare)."""
    return torch.tensor(list(itertools.permutations(range(NUM_TILES))), dtype=torch.uint8).T.contiguous()


@functools.cache
def _permutation_set(size: int, seed: int) -> Tensor:
    every = _all_permutations()
    count = every.shape[1]
    first = int(torch.randint(count, (1,), generator=torch.Generator().manual_seed(seed)))
    total = torch.zeros(count, dtype=torch.int64)  # summed Hamming distance to the chosen set (paper's D-bar)
    nearest = torch.full((count,), NUM_TILES, dtype=torch.int64)  # distance to the closest chosen one
    chosen = [first]
    for _ in range(size - 1):
        last = every[:, chosen[-1]].tolist()
        distance = torch.zeros(count, dtype=torch.int64)
        for position, tile in enumerate(last):
            distance += every[position] != tile
        total += distance
        torch.minimum(nearest, distance, out=nearest)
        # The farthest from its nearest chosen permutation, ties broken by the largest summed distance.
        # Chosen ones have nearest = 0 and are never picked again. argmax takes the first of equal keys.
        chosen.append(int((nearest * (NUM_TILES * size + 1) + total).argmax()))
    return every[:, chosen].T.long()


def permutation_set(size: int, seed: int) -> Tensor:
    """`size` permutations of 9 tiles [size, 9], greedily chosen far apart in Hamming distance.

    The paper's Algorithm 1 (and its released code): start from a random permutation (here drawn from
    `seed`), then repeatedly add the permutation with the largest summed Hamming distance to those chosen.
    Deviation: that sum alone leaves pairs at distance 2 (one swap apart) in the set; sslcli first
    maximises the distance to the *nearest* chosen permutation and breaks ties by the paper's sum. The
    average distance is the same (8.08 for 100, 8.01 for 1000); the minimum is 6
    for 100 and 5 for 1000 permutations instead of 2. Deterministic for a seed (cached per process).
    """
    return _permutation_set(size, seed).clone()


def cut_tiles(x: Tensor, tile: int, offsets: Tensor) -> Tensor:
    """The 3x3 grid's tiles [B,9,C,tile,tile] in row-major cell order; tile j is cropped in cell j at
    offsets[:, j] = (dy, dx) in [0, cell - tile] (the random gap)."""
    cell = x.shape[-1] // GRID
    index = torch.arange(NUM_TILES, device=x.device)
    top = (index // GRID) * cell + offsets[..., 0]
    left = (index % GRID) * cell + offsets[..., 1]
    return crop_patches(x, top, left, tile)


def shuffle_tiles(tiles: Tensor, order: Tensor) -> Tensor:
    """Position i of the result holds tile order[:, i]: tiles [B,9,...], order [B,9] (a row of the set)."""
    index = order.view(*order.shape, *([1] * (tiles.dim() - 2))).expand_as(tiles)
    return tiles.gather(1, index)


class Jigsaw(MethodDefaults, nn.Module):
    """The context-free network: each of the 9 shuffled tiles goes through the shared encoder and a shared
    per-tile layer (the paper's fc6); the 9 outputs, concatenated in their shuffled order, go through an
    MLP (fc7) to the index of the permutation (fc8), trained with cross-entropy.

    Shortcuts closed as in section 3.3: tiles are random crops inside their cells (a random gap), each tile
    is normalised by its own per-channel mean and std. The permutation set is a buffer, so it is saved in
    every checkpoint and a resumed run loads the very set it trained with.
    """

    def __init__(self, cfg: JigsawConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.register_buffer("permutations", permutation_set(cfg.num_permutations, cfg.permutation_seed))
        self.tile_layer = nn.Sequential(nn.Linear(feature_dim, cfg.tile_dim, bias=False),
                                        nn.BatchNorm1d(cfg.tile_dim), nn.ReLU())
        self.classifier = mlp(NUM_TILES * cfg.tile_dim, cfg.hidden_dim, cfg.num_permutations)

    def draw(self, n: int, max_offset: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """The random gaps [n,9,2] in [0, max_offset] and permutation indices [n]: drawn on the device with
        the global RNG (restored on resume), one row per image (the distributed test substitutes rows of
        one global draw)."""
        offsets = torch.randint(0, max_offset + 1, (n, NUM_TILES, 2), device=device)
        return offsets, torch.randint(0, self.permutations.shape[0], (n,), device=device)

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        x = views[0]
        b = x.shape[0]
        cell = x.shape[-1] // GRID
        tile = patch_side(x.shape[-1], self.cfg.tile_fraction, size_multiple(self.encoder))
        offsets, label = self.draw(b, cell - tile, x.device)
        tiles = shuffle_tiles(cut_tiles(x, tile, offsets), self.permutations[label])
        if self.cfg.normalize_tiles:
            tiles = normalize_patches(tiles)
        h = self.encoder(tiles.flatten(0, 1))  # [B*9, D]
        logits = self.classifier(self.tile_layer(h).view(b, -1))
        loss = classification_loss(logits, label)
        accuracy = (logits.detach().argmax(dim=1) == label).float().mean()
        # The monitors see one feature per image: the mean of its 9 tiles' features.
        return StepOut(loss=loss, logs={"loss": loss.detach(), "accuracy": accuracy},
                       embeddings={"features": (h.view(b, NUM_TILES, -1).mean(dim=1),)})
