"""Where a window of frames moves, and a correlation tracker that follows a patch from there (torch, batched).

The paper (arXiv 1505.00687, section 3.1) finds moving points with SURF and improved dense trajectories, takes
the 227 px box holding most of them and follows it with a KCF tracker. Here, on the decoded frames of each window:

- the motion box: the absolute difference of the window's first two frames (grey: the mean of the channels),
  averaged over every box of the patch's side (a summed-area table, stride 1); the box with the largest mean is the
  patch, if that mean over the first frame's standard deviation reaches min_motion;
- the tracker: normalised cross-correlation template matching, frame to frame. The template is the patch in
  the previous frame (zero-mean); its correlation with every box of the next frame is one grouped conv2d (a
  group per sample), over the local standard deviations from box means of the frame and its square. Only boxes
  within +-max_shift px of the previous place count (the search window); the best is the new place (integer
  pixels: the step is one pixel) and its patch the next template. A track whose best correlation falls below
  min_correlation at any frame is lost.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-6


@dataclass(frozen=True)
class Tracks:
    """Per sample of the batch: the patch's top-left corner (y, x) in the first and in the last frame, whether
    it is a track (it moved at the start and was never lost), its motion and its lowest correlation."""

    first: Tensor  # int64 [B, 2]
    last: Tensor  # int64 [B, 2]
    found: Tensor  # bool [B]
    motion: Tensor  # float [B]
    correlation: Tensor  # float [B]


def box_means(x: Tensor, side: int) -> Tensor:
    """[B, H, W] -> [B, H - side + 1, W - side + 1]: the mean of every side x side box, from the summed-area table
    (in float64: the local variances below subtract two such means). avg_pool2d gives the same, but its cost grows
    with the box's area: seconds a batch for 32 px boxes on a CPU."""
    table = F.pad(x.double().cumsum(1).cumsum(2), (1, 0, 1, 0))
    sums = table[:, side:, side:] - table[:, :-side, side:] - table[:, side:, :-side] + table[:, :-side, :-side]
    return (sums / (side * side)).to(x.dtype)


def motion_box(gray: Tensor, side: int) -> tuple[Tensor, Tensor]:
    """(the top-left corner [B, 2] of the box of this side where frames 0 and 1 differ most, that box's mean
    absolute difference over frame 0's standard deviation [B])."""
    moving = box_means((gray[:, 1] - gray[:, 0]).abs(), side)
    best, flat = moving.flatten(1).max(1)
    width = moving.shape[-1]
    corner = torch.stack([flat // width, flat % width], dim=1)
    return corner, best / (gray[:, 0].flatten(1).std(1) + EPS)


def correlation_map(frame: Tensor, template: Tensor) -> Tensor:
    """Normalised cross-correlation of each sample's template [B, P, P] with every box of its frame [B, H, W]:
    [B, H - P + 1, W - P + 1] in [-1, 1] (0 where the box or the template is flat)."""
    b, p = template.shape[0], template.shape[-1]
    centred = template - template.mean((1, 2), keepdim=True)
    # The template sums to 0, so its product with a box equals its product with the box less the box's mean.
    numerator = F.conv2d(frame[None], centred[:, None], groups=b)[0]
    mean, mean_square = box_means(frame, p), box_means(frame * frame, p)
    box_norm = ((mean_square - mean * mean).clamp_min(0) * (p * p)).sqrt()
    template_norm = centred.flatten(1).norm(dim=1)[:, None, None]
    return numerator / (box_norm * template_norm + EPS)


def crop(frames: Tensor, corner: Tensor, side: int) -> Tensor:
    """[B, H, W] or [B, C, H, W] frames -> the side x side patch of each at its corner (y, x)."""
    offsets = torch.arange(side, device=frames.device)
    rows = (corner[:, 0, None] + offsets)[:, :, None]  # [B, side, 1]
    cols = (corner[:, 1, None] + offsets)[:, None, :]  # [B, 1, side]
    batch = torch.arange(frames.shape[0], device=frames.device)[:, None, None]
    if frames.ndim == 3:
        return frames[batch, rows, cols]
    return frames.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def search_mask(shape: tuple[int, int], corner: Tensor, radius: int) -> Tensor:
    """bool [B, h, w]: the places within radius pixels (each way) of each sample's corner."""
    ys = torch.arange(shape[0], device=corner.device)
    xs = torch.arange(shape[1], device=corner.device)
    near_y = (ys[None] - corner[:, :1]).abs() <= radius
    near_x = (xs[None] - corner[:, 1:]).abs() <= radius
    return near_y[:, :, None] & near_x[:, None, :]


@torch.no_grad()
def follow(gray: Tensor, start: Tensor, side: int, max_shift: int) -> tuple[Tensor, Tensor]:
    """Track the side x side patch at start [B, 2] of frame 0 through grey frames [B, K, H, W]: (its corner in
    the last frame [B, 2], the lowest best correlation on the way [B])."""
    place, lowest = start, torch.ones(gray.shape[0], device=gray.device)
    for t in range(1, gray.shape[1]):  # the frames of a window, one after another: each step needs the last place
        template = crop(gray[:, t - 1], place, side)
        scores = correlation_map(gray[:, t], template)
        scores = scores.masked_fill(~search_mask(scores.shape[1:], place, max_shift), -2.0)
        best, flat = scores.flatten(1).max(1)
        place = torch.stack([flat // scores.shape[-1], flat % scores.shape[-1]], dim=1)
        lowest = torch.minimum(lowest, best)
    return place, lowest


@torch.no_grad()
def track(gray: Tensor, side: int, max_shift: int, min_motion: float, min_correlation: float) -> Tracks:
    """Follow the motion box of each window of grey frames [B, K, H, W] from its first frame to its last.

    A window without motion (nothing reaches min_motion) gives no track; its patch stays at the frame's centre in
    every frame, so that it still serves as a negative."""
    gray = gray.float()
    b, k, h, w = gray.shape
    if side > min(h, w):
        raise ValueError(f"a {side} px patch does not fit a {h} x {w} frame")
    corner, motion = motion_box(gray, side)
    moving = motion >= min_motion
    centre = torch.empty_like(corner)  # filled on the device: no host-to-device copy in the sync-free step
    centre[:, 0], centre[:, 1] = (h - side) // 2, (w - side) // 2
    first = torch.where(moving[:, None], corner, centre)
    last, lowest = follow(gray, first, side, max_shift)
    return Tracks(first, torch.where(moving[:, None], last, centre), moving & (lowest >= min_correlation), motion,
                  lowest)
