"""What the context-based pretext tasks share: rotating a batch, cutting patches, the rotation head.

RotNet (Gidaris et al. 2018, https://arxiv.org/abs/1803.07728) rotates every image by 0/90/180/270 degrees
in the same batch and classifies the rotation; S4L (Zhai et al. 2019, https://arxiv.org/abs/1905.03670)
adds that loss to another method's, so `RotationPretext` serves both. Jigsaw and relative-position cut
patches at per-sample positions with `crop_patches`.

Every random draw (positions, permutations, channels) is made by the caller with torch's global RNG on the
batch's device inside forward, as MAE's masking is: the checkpoint stores the CPU and CUDA RNG states, so a
resumed run draws the same. Nothing here reads a value back to the host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslcli.heads import mlp

NUM_ROTATIONS = 4


def rotate_batch(x: Tensor) -> tuple[Tensor, Tensor]:
    """[B,C,H,W] (square) -> the 4 rotations of every image [4B,C,H,W] and their labels [4B].

    Copy k (rows k*B .. (k+1)*B) is rotated by k x 90 degrees counter-clockwise (torch.rot90 on the
    device); the label of each row is k. All four rotations of an image are in one batch, as in the paper.
    """
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation needs square images, got {tuple(x.shape[-2:])}")
    rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(NUM_ROTATIONS)])
    labels = torch.arange(NUM_ROTATIONS, device=x.device).repeat_interleave(x.shape[0])
    return rotated, labels


def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy in float32 (logits may come out of bf16 autocast), as every loss in sslcli.losses."""
    with torch.autocast(logits.device.type, enabled=False):
        return F.cross_entropy(logits.float(), labels)


class RotationPretext(nn.Module):
    """The 4-way rotation classifier on the encoder's pooled features, and its loss.

    forward(encoder, x) encodes the 4 rotations of x in one pass (BN sees all of them, as in the paper's
    batches) and returns (loss, features of the 4B rotated images, rotation accuracy).
    """

    def __init__(self, feature_dim: int, hidden_dim: int = 0):
        super().__init__()
        # hidden_dim 0: a linear head, as on ResNet pre-logits in S4L and Kolesnikov et al. 2019.
        self.head = (nn.Linear(feature_dim, NUM_ROTATIONS) if hidden_dim == 0
                     else mlp(feature_dim, hidden_dim, NUM_ROTATIONS))

    def forward(self, encoder: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        rotated, labels = rotate_batch(x)
        h = encoder(rotated)
        logits = self.head(h)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return classification_loss(logits, labels), h, accuracy


def crop_patches(x: Tensor, top: Tensor, left: Tensor, size: int) -> Tensor:
    """Square patches at per-sample positions: x [B,C,H,W], top/left [B,K] integer -> [B,K,C,size,size].

    One gather for the whole batch (no Python loop over samples); positions must lie inside the image.
    """
    b, k = top.shape
    offsets = torch.arange(size, device=x.device)
    rows = (top.long()[..., None] + offsets).view(b, k, size, 1)
    cols = (left.long()[..., None] + offsets).view(b, k, 1, size)
    batch = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    # Advanced indexing over (batch, row, col) of the channels-last view: [B,K,size,size,C].
    return x.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 1, 4, 2, 3)


def normalize_patches(patches: Tensor, eps: float = 1e-5) -> Tensor:
    """Each patch's channels to zero mean and unit std over its own pixels: [..., C, H, W] (Jigsaw section 3.3)."""
    mean = patches.mean(dim=(-2, -1), keepdim=True)
    std = patches.std(dim=(-2, -1), keepdim=True, unbiased=False)
    return (patches - mean) / std.clamp_min(eps)


def drop_colors(patches: Tensor, keep: Tensor, noise: Tensor) -> Tensor:
    """Doersch et al.'s colour dropping: per patch keep channel `keep` and replace the other two by `noise`
    scaled to 1/100 of the kept channel's std. patches [B,K,C,H,W], keep [B,K] int, noise like patches."""
    mask = F.one_hot(keep.long(), patches.shape[2]).bool()[..., None, None]  # [B,K,C,1,1]
    kept = (patches * mask).sum(dim=2, keepdim=True)  # the kept channel, [B,K,1,H,W]
    std = kept.std(dim=(-2, -1), keepdim=True, unbiased=False)
    return torch.where(mask, patches, noise * std / 100)


def resampling_table(side: int, device: torch.device | None = None) -> Tensor:
    """[side + 1, side, side]: entry s is the linear map of one image axis that shrinks `side` pixels to s by
    area averaging and brings them back to `side` bilinearly (entry `side` is the identity; entry 0 is unused).

    Applied on both axes (A X A^T) it is F.interpolate(mode="area") to s x s then F.interpolate(mode="bilinear")
    back, written as matrices so that every patch of a batch can have its own s in one batched matmul."""
    eye = torch.eye(side, dtype=torch.float64).unsqueeze(1)  # side basis signals [side, 1, side]
    table = torch.zeros(side + 1, side, side, dtype=torch.float64)
    for s in range(1, side + 1):
        down = F.interpolate(eye, size=s, mode="area")  # [side, 1, s]: column j = the image of pixel j
        up = F.interpolate(down, size=side, mode="linear", align_corners=False)  # [side, 1, side]
        table[s] = up[:, 0, :].T  # row i of the map: output pixel i from every input pixel
    return table.to(device=device, dtype=torch.float32)


def resample_patches(patches: Tensor, sides: Tensor, table: Tensor) -> Tensor:
    """Doersch et al.'s pixelation: patch [b, k] shrunk to sides[b, k] pixels a side and enlarged back.
    patches [B,K,C,p,p], sides [B,K] integer in [1, p] (p: no change), table = resampling_table(p)."""
    maps = table[sides.long()].to(patches.dtype)  # [B,K,p,p]
    return torch.einsum("bkij,bkcjl,bkml->bkcim", maps, patches, maps)


def size_multiple(encoder: nn.Module) -> int:
    """Patch sides must be a multiple of a ViT's patch size (timm's PatchEmbed does not pad); 1 for CNNs."""
    patch_embed = getattr(encoder, "patch_embed", None)
    return int(patch_embed.patch_size[0]) if patch_embed is not None else 1


def patch_side(image_size: int, fraction: float, multiple: int) -> int:
    """The side of a tile/patch: `fraction` of a grid cell (image_size // 3), rounded down to `multiple`."""
    side = int(image_size // 3 * fraction)
    side -= side % multiple
    if side < max(1, multiple):
        raise ValueError(f"a {image_size} px image gives {side} px patches: set a larger data.image_size")
    return side


def s4l_rotation(feature_dim: int, weight: float) -> RotationPretext | None:
    """S4L's rotation head for a method whose `rotation_weight` is > 0; None (nothing added) at 0."""
    return RotationPretext(feature_dim) if weight > 0 else None


def add_rotation_loss(rotation: RotationPretext | None, weight: float, encoder: nn.Module, view: Tensor,
                      loss: Tensor, logs: dict[str, Tensor]) -> Tensor:
    """S4L (Zhai et al. 2019, eq. 1 with the rotation task as L_u): loss + weight x the rotation loss of
    the 4 rotated copies of `view`, through the online encoder in a pass of their own (the method's own
    batch norm statistics stay as without it). Logs the method's loss and the rotation terms apart."""
    if rotation is None:
        return loss
    rotation_loss, _, accuracy = rotation(encoder, view)
    logs.update({"method_loss": loss.detach(), "rotation_loss": rotation_loss.detach(),
                 "rotation_accuracy": accuracy})
    return loss + weight * rotation_loss
