"""CPC v2: Data-Efficient Image Recognition with Contrastive Predictive Coding.

Hénaff et al. 2019, https://arxiv.org/abs/1905.09272 (CPC v1: van den Oord et al. 2018, arXiv 1807.03748)

Each view is cut into a grid of half-overlapping patches; every patch, augmented on its own, goes through
the shared encoder, whose pooled features z_{i,j} form a grid. A masked (PixelCNN-style) context network
reads the grid top to bottom: its output c_{i,j} depends only on the rows 0..i. For each offset k a linear
map predicts the patch k rows below, W_k c_{i,j} ~ z_{i+k,j}, scored by InfoNCE against every patch of the
batch (all positions of all images; under torchrun the global batch's, gathered with their gradients).

The exported encoder is the patch encoder. probe, finetune, export and embed use it as every other encoder:
on the whole image, its pooled features (the paper instead mean-pools the grid of patch features); the
encoder's metadata says it was trained on patches (`trained_input`).

Every random draw (the per-patch augmentation) is made with torch's global RNG on the batch's device inside
forward, as the pretext tasks do, so a resumed run draws the same.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslcli import distributed
from sslcli.augment import adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, hflip
from sslcli.errors import UsageError
from sslcli.losses import cpc_info_nce
from sslcli.methods.base import Budget, MethodDefaults, StepOut
from sslcli.methods.cpc.config import CPCConfig
from sslcli.methods.pretext import drop_colors, size_multiple
from sslcli.methods.spatial import Pixels

# Quarter turns of the feature grid per direction: each direction's context network reads its rotated grid
# top to bottom. 0: top-down (CPC v1), 2: bottom-up, 1 and 3: the two horizontal directions (CPC v2).
TURNS = {1: (0,), 2: (0, 2), 4: (0, 1, 2, 3)}


def grid_geometry(image_size: int, grid: int, multiple: int = 1) -> tuple[int, int, int]:
    """(stride, side, start) of a grid x grid grid of half-overlapping square patches in an image_size view.

    stride = image_size // (grid + 1) and side = 2 x stride, as the paper's 64 px patches at a 32 px stride;
    the grid spans (grid + 1) x stride px, centred (start px from the top-left corner)."""
    stride = image_size // (grid + 1)
    side = 2 * stride
    if stride < 1 or side % multiple:
        need = f" a multiple of the ViT's {multiple} px patches" if multiple > 1 else " at least 2 px"
        raise UsageError(f"cpc: a {grid} x {grid} grid in a {image_size} px view gives {side} px patches, not{need}: "
                         "set method.grid_size or data.image_size")
    return stride, side, (image_size - (grid + 1) * stride) // 2


def cut_grid(x: Tensor, grid: int, stride: int, side: int, start: int = 0) -> Tensor:
    """[B, C, H, W] -> the grid's patches [B, grid * grid, C, side, side] in row-major order (patch i * grid + j
    starts at row start + i * stride, column start + j * stride)."""
    span = start + (grid - 1) * stride + side
    patches = x[:, :, start:span, start:span].unfold(2, side, stride).unfold(3, side, stride)  # [B,C,G,G,s,s]
    return patches.permute(0, 2, 3, 1, 4, 5).reshape(x.shape[0], grid * grid, x.shape[1], side, side)


class MaskedConv2d(nn.Conv2d):
    """A 3x3 convolution whose output row i sees input rows i-2..i only (padded above, never below): causal
    top to bottom, the current row included, as the context c_{i,j} of the paper summarises rows u <= i."""

    def __init__(self, channels: int):
        super().__init__(channels, channels, kernel_size=3, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, (1, 1, 2, 0)))


class ContextBlock(nn.Module):
    """A residual block of the context network: 1x1 conv, masked 3x3 conv, 1x1 conv (PixelCNN-style)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), MaskedConv2d(hidden),
                                  nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class Direction(nn.Module):
    """One prediction direction: a context network over the (rotated) grid [B, D, G, G] and the linear
    predictions of every offset, W_k c for k in offsets, as one bias-free layer (ẑ = W_k c in the paper)."""

    def __init__(self, feature_dim: int, hidden: int, blocks: int, offsets: int, target_dim: int):
        super().__init__()
        self.context = nn.Sequential(*(ContextBlock(feature_dim, hidden) for _ in range(blocks)))
        self.predict = nn.Linear(feature_dim, offsets * target_dim, bias=False)
        self.target_dim = target_dim

    def forward(self, grid: Tensor) -> list[Tensor]:
        """[B, D, G, G] -> one prediction grid [B, G, G, T] per offset; row i holds the predictions of row i + k."""
        context = self.context(grid).permute(0, 2, 3, 1)
        return list(self.predict(context).split(self.target_dim, dim=-1))


def crop_side(side: int, fraction: float) -> int:
    """The side of the random crop cut from each patch of this side (CPC v1's 60 of 64 px): rounded down."""
    return max(1, int(side * fraction))


def augment_patches(patches: Tensor, draws: tuple, cfg: CPCConfig, pixels: Pixels) -> Tensor:
    """The patch-level augmentation: each patch of [B, P, 3, s, s] (pixels in [0, 1]) on its own, with the
    parameters of CPC.draw: CPC v2's colour jitter, rotation and shear, a left-right flip, then normalisation
    and colour dropping; last CPC v1's random crop, padded back. Returns normalised patches of the same shape."""
    flip, jitter, jitter_u, affine, affine_u, drop, keep, noise, corner = draws
    b, p = patches.shape[:2]
    x = patches.flatten(0, 1)
    if jitter is not None:
        u = jitter_u.flatten(0, 1)
        out = x
        brightness, contrast, saturation, hue = cfg.patch_jitter
        # torchvision's ranges: factors in [max(0, 1 - s), 1 + s], hue in [-h, h]. Fixed order (torchvision
        # draws it per image; augment.color_jitter draws it per batch).
        for column, (fn, s) in enumerate(((adjust_brightness, brightness), (adjust_contrast, contrast),
                                          (adjust_saturation, saturation))):
            if s > 0:
                low = max(0.0, 1.0 - s)
                out = fn(out, low + (1.0 + s - low) * u[:, column])
        if hue > 0:
            out = adjust_hue(out, hue * (2 * u[:, 3] - 1))
        x = torch.where(jitter.flatten().view(-1, 1, 1, 1), out, x)
    if affine is not None:
        x = torch.where(affine.flatten().view(-1, 1, 1, 1), rotate_and_shear(x, affine_u.flatten(0, 1), cfg), x)
    if flip is not None:
        x = hflip(x, flip.flatten())
    x = pixels.normalise(x).view(b, p, *x.shape[1:])
    if drop is not None:
        x = torch.where(drop[..., None, None, None], drop_colors(x, keep, noise.to(x.dtype)), x)
    if corner is not None:
        x = crop_and_pad(x.flatten(0, 1), corner.flatten(0, 1), crop_side(x.shape[-1], cfg.patch_crop)).view_as(x)
    return x


def crop_and_pad(x: Tensor, corner: Tensor, side: int) -> Tensor:
    """CPC v1's patch augmentation: each patch of [N, C, s, s] cropped to side x side at its own corner [N, 2]
    (top, left), then padded back to s x s with zeros (the normalised mean), the crop centred: the content
    moves by up to s - side px, so no patch lines up pixel for pixel with the patches it overlaps."""
    n, _, s, _ = x.shape
    offsets = torch.arange(side, device=x.device)
    rows = (corner[:, 0:1] + offsets)[:, :, None]  # [N, side, 1]
    cols = (corner[:, 1:2] + offsets)[:, None, :]  # [N, 1, side]
    crops = x.permute(0, 2, 3, 1)[torch.arange(n, device=x.device).view(n, 1, 1), rows, cols]  # [N, side, side, C]
    before = (s - side) // 2
    after = s - side - before
    return F.pad(crops.permute(0, 3, 1, 2), (before, after, before, after))


def rotate_and_shear(x: Tensor, u: Tensor, cfg: CPCConfig) -> Tensor:
    """Rotate each patch by up to cfg.patch_rotation degrees and shear it horizontally by up to cfg.patch_shear,
    about its centre (u [N, 2] uniform in [0, 1)), filling the corners by reflection; one grid_sample for all."""
    angle = math.radians(cfg.patch_rotation) * (2 * u[:, 0] - 1)
    shear = cfg.patch_shear * (2 * u[:, 1] - 1)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    # The sampling grid maps output to input coordinates: rotation @ shear, centred (no translation).
    theta = torch.stack((torch.stack((cos, cos * shear - sin, zero), dim=1),
                         torch.stack((sin, sin * shear + cos, zero), dim=1)), dim=1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class CPC(MethodDefaults, nn.Module):
    """CPC v2 on one view: the grid of patch features, `directions` masked context networks, the linear
    predictions of the rows min_offset..max_offset below, InfoNCE against every patch of the (global) batch.

    Deviations: the paper's elastic deformations among its further patch augmentations are not done (colour
    jitter, rotation and shear are, batched on the device); the whole image, not the mean of its patch grid,
    is what the exported encoder embeds at probe time (module docstring). The encoder's norm layer is the
    spec's (`encoder.kwargs.norm_layer`; groupnorm1, a layer norm, by default, as the paper).
    """

    def __init__(self, cfg: CPCConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.pixels = Pixels(encoder)
        self.offsets = tuple(range(cfg.min_offset, min(cfg.max_offset, cfg.grid_size - 1) + 1))
        target_dim = cfg.target_dim or feature_dim
        # With target_dim the targets are a linear projection of z (pl_bolts' target_cnn); shared by directions.
        self.target = nn.Linear(feature_dim, cfg.target_dim, bias=False) if cfg.target_dim else None
        self.heads = nn.ModuleList(Direction(feature_dim, cfg.context_dim, cfg.context_blocks, len(self.offsets),
                                             target_dim) for _ in TURNS[cfg.directions])

    def draw(self, n: int, patches: int, side: int, device: torch.device) -> tuple:
        """Per-patch augmentation parameters for n images of `patches` patches (None for an op that is off):
        flip [n,P], jitter mask [n,P] and uniforms [n,P,4], affine mask [n,P] and uniforms [n,P,2], colour-drop
        mask [n,P], kept channel [n,P] and noise [n,P,3,side,side], the crop's corner [n,P,2]. Drawn on the device with the global RNG
        (restored on resume), one row per image (the distributed test substitutes rows of one global draw)."""
        cfg, shape = self.cfg, (n, patches)
        flip = torch.rand(shape, device=device) < cfg.patch_flip_p if cfg.patch_flip_p > 0 else None
        jitter = jitter_u = affine = affine_u = drop = keep = noise = corner = None
        if cfg.patch_jitter_p > 0 and any(cfg.patch_jitter):
            jitter = torch.rand(shape, device=device) < cfg.patch_jitter_p
            jitter_u = torch.rand(*shape, 4, device=device)
        if cfg.patch_affine_p > 0 and (cfg.patch_rotation > 0 or cfg.patch_shear > 0):
            affine = torch.rand(shape, device=device) < cfg.patch_affine_p
            affine_u = torch.rand(*shape, 2, device=device)
        if cfg.color_drop_p > 0:
            drop = torch.rand(shape, device=device) < cfg.color_drop_p
            keep = torch.randint(0, 3, shape, device=device)
            noise = torch.randn(*shape, 3, side, side, device=device)
        if (crop := crop_side(side, cfg.patch_crop)) < side:
            corner = torch.randint(0, side - crop + 1, (*shape, 2), device=device)
        return flip, jitter, jitter_u, affine, affine_u, drop, keep, noise, corner

    def encode_grid(self, x: Tensor) -> Tensor:
        """The view's grid of augmented patches through the encoder: pooled features [B, G, G, D]."""
        g = self.cfg.grid_size
        stride, side, start = grid_geometry(x.shape[-1], g, size_multiple(self.encoder))
        patches = cut_grid(self.pixels.to_pixels(x), g, stride, side, start)
        patches = augment_patches(patches, self.draw(x.shape[0], g * g, side, x.device), self.cfg, self.pixels)
        return self.encoder(patches.flatten(0, 1)).view(x.shape[0], g, g, -1)

    def predictions(self, features: Tensor) -> list[dict[int, Tensor]]:
        """Per direction, {k: predictions [B, G - k, G, T]} from the grid [B, G, G, D] turned by that direction's
        quarter turns (row i of the turned grid predicts its row i + k)."""
        grid = features.permute(0, 3, 1, 2)
        g = grid.shape[-1]
        out = []
        for turns, head in zip(TURNS[self.cfg.directions], self.heads, strict=True):
            predicted = head(torch.rot90(grid, turns, dims=(2, 3)))
            out.append({k: p[:, : g - k] for k, p in zip(self.offsets, predicted, strict=True)})
        return out

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        x = views[0]
        features = self.encode_grid(x)
        targets = self.target(features) if self.target is not None else features
        # The negatives are every patch of the global batch, with gradients reaching every rank (as SimCLR's).
        candidates = distributed.gather(targets.contiguous())
        first = distributed.rank() * x.shape[0]
        losses = [cpc_info_nce(predictions, torch.rot90(candidates, turns, dims=(1, 2)), first)
                  for turns, predictions in zip(TURNS[self.cfg.directions], self.predictions(features), strict=True)]
        loss = torch.stack(losses).mean()
        # The monitors see one feature per image: the mean of its patch grid (the paper's image embedding).
        return StepOut(loss=loss, logs={"loss": loss.detach()},
                       embeddings={"features": (features.mean(dim=(1, 2)),)})
