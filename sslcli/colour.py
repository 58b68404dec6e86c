"""CIE Lab colour and the quantised ab space of Colorful Image Colorization (Zhang et al. 2016,
https://arxiv.org/abs/1603.08511): sRGB (D65) -> Lab on a batch, on its device; the quantised ab bins
(the paper's 313, or the 261 that sRGB reaches); the soft encoding of ab values over their nearest bins;
the class-rebalancing weights.

Pure functions of tensors, no state: the colorization method keeps the running prior, this module computes.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

# sRGB primaries with the D65 white point (IEC 61966-2-1), linear RGB -> XYZ.
SRGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375),
               (0.2126729, 0.7151522, 0.0721750),
               (0.0193339, 0.1191920, 0.9503041))
D65_WHITE = (0.95047, 1.0, 1.08883)  # Xn, Yn, Zn
_DELTA = 6 / 29  # CIE's knee of the cube root

GRID = 10  # the paper's ab grid size
GAMUT_LEVELS = 64  # levels per sRGB channel searched for the gamut's bins (see gamut_ab_bins)


def srgb_to_linear(c: Tensor) -> Tensor:
    return torch.where(c > 0.04045, ((c.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4, c / 12.92)


def linear_to_srgb(c: Tensor) -> Tensor:
    return torch.where(c > 0.0031308, 1.055 * c.clamp_min(0.0031308) ** (1 / 2.4) - 0.055, c * 12.92)


def _f(t: Tensor) -> Tensor:
    # clamp_min keeps the unused branch's gradient finite (cube root of 0 has an infinite slope)
    return torch.where(t > _DELTA ** 3, t.clamp_min(_DELTA ** 3) ** (1 / 3), t / (3 * _DELTA ** 2) + 4 / 29)


@functools.lru_cache(maxsize=8)
def _xyz_constants(dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """The sRGB -> XYZ matrix and the white point on the device, made once: a host-to-device copy each call
    would synchronise the device on every training step (CMC converts every batch)."""
    return (torch.tensor(SRGB_TO_XYZ, dtype=dtype, device=device),
            torch.tensor(D65_WHITE, dtype=dtype, device=device).view(3, 1, 1))


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB in [0, 1], channels at dim -3 ([..., 3, H, W]) -> CIE Lab (L in [0, 100], a and b about [-110, 110]).

    Computed in float32 at least (float64 stays float64), whatever the autocast: ab bins 10 wide need it.
    """
    dtype = torch.float64 if rgb.dtype == torch.float64 else torch.float32
    with torch.autocast(rgb.device.type, enabled=False):
        linear = srgb_to_linear(rgb.to(dtype).clamp(0, 1))
        matrix, white = _xyz_constants(dtype, rgb.device)
        xyz = torch.einsum("ij,...jhw->...ihw", matrix, linear) / white
        fx, fy, fz = _f(xyz).unbind(-3)
        return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-3)


def lightness_to_grey(lightness: Tensor) -> Tensor:
    """The sRGB value in [0, 1] of the neutral grey (a = b = 0) of lightness L: what a greyscale photo shows.

    The colorization encoder sees this grey image replicated to 3 channels, so at test time it takes ordinary
    RGB images (a colour photo is a grey one plus colour) without a one-channel stem of its own.
    """
    fy = (lightness + 16) / 116
    y = torch.where(fy > _DELTA, fy ** 3, 3 * _DELTA ** 2 * (fy - 4 / 29))
    return linear_to_srgb(y.clamp(0, 1))


# Zhang et al.'s 313 bins (resources/pts_in_hull.npy of their released code, richzhang/colorization), written
# row by row: for each a (grid of 10), the contiguous run of b values (low, high) it keeps. 313 in all.
PAPER_BIN_ROWS = {
    -90: (50, 90), -80: (20, 90), -70: (0, 90), -60: (-20, 90), -50: (-30, 100), -40: (-40, 100),
    -30: (-50, 100), -20: (-50, 100), -10: (-60, 100), 0: (-70, 100), 10: (-80, 90), 20: (-80, 90),
    30: (-90, 90), 40: (-100, 90), 50: (-100, 80), 60: (-110, 80), 70: (-110, 80), 80: (-110, 70),
    90: (-110, 70), 100: (-90, 0),
}
BIN_SETS = ("paper", "gamut")


@functools.lru_cache(maxsize=4)
def _gamut_bins(grid: int, levels: int) -> tuple[tuple[float, float], ...]:
    v = torch.linspace(0, 1, levels, dtype=torch.float64)
    colours = torch.cartesian_prod(v, v, v).T.reshape(1, 3, -1, 1)  # every colour of the grid, as one "image"
    ab = rgb_to_lab(colours)[0, 1:, :, 0].T
    cells = torch.unique(torch.round(ab / grid).long(), dim=0) * grid  # sorted by a, then b
    return tuple((float(a), float(b)) for a, b in cells.tolist())


def gamut_ab_bins(grid: int = GRID, levels: int = GAMUT_LEVELS) -> Tensor:
    """The cells of the ab grid that sRGB reaches [261, 2] (float32 centres, multiples of `grid`, sorted by a
    then b): a cell (centre c, the ab values that round to c) is kept when some sRGB colour falls in it.

    A grid of 64 levels per channel (262,144 colours) finds the same 261 cells as all 16.7 M 8-bit colours
    (checked once: 30 s). All 261 are among the paper's 313 (`paper_ab_bins`); the paper's other 52 lie on the
    rim, bins that no sRGB pixel is nearest to (soft encoding still gives them some of a rim pixel's mass).
    """
    return torch.tensor(_gamut_bins(grid, levels), dtype=torch.float32)


def paper_ab_bins() -> Tensor:
    """The paper's 313 bins [313, 2] (float32, sorted by a then b). The paper calls them "in-gamut" and does not
    say how it chose them: neither the sRGB gamut's cells (261, all among these) nor a margin or a convex hull
    around them gives this set, so it is written out (PAPER_BIN_ROWS) rather than derived."""
    return torch.tensor([(float(a), float(b)) for a, (low, high) in PAPER_BIN_ROWS.items()
                         for b in range(low, high + 1, GRID)], dtype=torch.float32)


def ab_bins(kind: str = "paper") -> Tensor:
    """The quantised ab space: 'paper' (Zhang et al.'s 313 bins) or 'gamut' (the 261 cells sRGB reaches)."""
    if kind not in BIN_SETS:
        raise ValueError(f"unknown ab bins {kind!r}: one of {', '.join(BIN_SETS)}")
    return paper_ab_bins() if kind == "paper" else gamut_ab_bins()


def soft_encode(ab: Tensor, bins: Tensor, neighbours: int = 5, sigma: float = 5.0) -> Tensor:
    """ab [B, 2, H, W] -> soft targets [B, Q, H, W]: each pixel spreads over its `neighbours` nearest bins,
    weighted by a Gaussian kernel (sigma, in ab units) of the distance and normalised (paper section 2.1)."""
    b, _, h, w = ab.shape
    points = ab.float().permute(0, 2, 3, 1).reshape(-1, 2)
    distances = torch.cdist(points, bins.to(points))  # [BHW, Q]
    nearest, index = distances.topk(neighbours, dim=1, largest=False)
    weights = torch.softmax(-nearest.pow(2) / (2 * sigma ** 2), dim=1)  # exp(-d^2 / 2 sigma^2), normalised
    targets = torch.zeros_like(distances).scatter_(1, index, weights)
    return targets.view(b, h, w, -1).permute(0, 3, 1, 2)


def bin_smoothing(bins: Tensor, sigma: float = 5.0) -> Tensor:
    """[Q, Q] Gaussian kernel over the bin centres, each column summing to 1: p_smooth = K @ p keeps mass 1."""
    kernel = torch.exp(-torch.cdist(bins, bins).pow(2) / (2 * sigma ** 2))
    return kernel / kernel.sum(dim=0, keepdim=True)


def rebalancing_weights(prior: Tensor, lam: float = 0.5) -> Tensor:
    """Zhang et al. eq. 4: w proportional to ((1 - lambda) p + lambda / Q)^-1, scaled so that E_p[w] = 1.

    prior [Q] sums to 1 (the smoothed empirical distribution of ab bins); lambda = 0 weighs by inverse
    frequency, lambda = 1 gives uniform weights."""
    q = prior.shape[0]
    weights = 1.0 / ((1 - lam) * prior + lam / q)
    return weights / (prior * weights).sum()

