"""Batched augmentation for self-supervised learning: several random views of a uint8 image batch.

Every op takes a whole float batch [B,3,H,W] in [0,1] plus per-sample parameter tensors, so one kernel
serves the batch and nothing loops over samples in Python. Random parameters are drawn with torch ops on
the batch's device from a caller-supplied torch.Generator (never the global RNG) and are never read back
to the host, so a training step does not stall on host-device syncs. The math follows
torchvision.transforms.v2.functional so each sample matches it; deviations are noted where they occur.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from sslcli.views import ViewConfig


def _per_sample(t: torch.Tensor) -> torch.Tensor:
    """Reshape a [B] parameter to [B,1,1,1] so it broadcasts over an image batch."""
    return t.reshape(-1, 1, 1, 1)


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device).mul_(high - low).add_(low)


def _bernoulli(n: int, p: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) < p


def _randint_upto(high: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Integer-valued floats uniform in [0, high] for a per-sample high (torch.randint takes one bound)."""
    u = torch.rand(high.shape, generator=gen, device=high.device, dtype=high.dtype)
    return torch.minimum((u * (high + 1)).floor_(), high)  # float rounding of u * (high+1) can reach high+1


def _luma(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 grayscale [B,1,H,W], same weights and op order as torchvision."""
    r, g, b = x.unbind(1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    # lerp(other, x, f) = x * f + other * (1 - f) in one kernel.
    return torch.lerp(other.expand_as(x), x, _per_sample(factor).to(x.dtype)).clamp_(0.0, 1.0)


def sample_crop_boxes(
    batch: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
    device: torch.device | str,
) -> torch.Tensor:
    """RandomResizedCrop.get_params for a whole batch: float [B,4] boxes (top, left, height, width).

    All 10 tries per sample are drawn at once and the first valid one is taken; samples with no valid
    try fall back to torchvision's centre crop with the aspect ratio clamped. Sizes/offsets are integers.
    """
    area = height * width
    target = _uniform(batch * 10, scale[0] * area, scale[1] * area, generator, device).view(batch, 10)
    log_r = _uniform(batch * 10, math.log(ratio[0]), math.log(ratio[1]), generator, device).view(batch, 10)
    aspect = torch.exp(log_r)
    w = torch.sqrt(target * aspect).round_()
    h = torch.sqrt(target / aspect).round_()
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)  # argmax returns the first maximum
    found = valid.any(dim=1)
    # The fallback depends only on the image shape, so it is plain Python like torchvision's.
    in_ratio = width / height
    fw, fh = width, height
    if in_ratio < min(ratio):
        fh = int(round(fw / min(ratio)))
    elif in_ratio > max(ratio):
        fw = int(round(fh * max(ratio)))
    w = torch.where(found, w.gather(1, first).squeeze(1), float(fw))
    h = torch.where(found, h.gather(1, first).squeeze(1), float(fh))
    top = torch.where(found, _randint_upto(height - h, generator), float((height - fh) // 2))
    left = torch.where(found, _randint_upto(width - w, generator), float((width - fw) // 2))
    return torch.stack((top, left, h, w), dim=1)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop boxes (top, left, height, width) [B,4] out of x and resize each to size x size in one call.

    Both paths sample pixel centres like interpolate(align_corners=False). When no crop can be larger
    than the output (the image is not larger than `size`, as for CIFAR), bilinear upsampling is exact
    and grid_sample does it at half roi_align's cost on CPU. Otherwise roi_align with an adaptive grid
    (sampling_ratio=0) averages several taps per output pixel when downscaling, which acts like
    antialiasing. Deviation from torchvision (crop, then resize): within half an output pixel of a crop
    edge that lies inside the image, bilinear taps read the real neighbouring pixels instead of
    repeating the crop's edge pixel. Elsewhere an upscaling crop equals resized_crop(antialias=False).
    """
    top, left, height, width = boxes.to(x.dtype).unbind(1)
    if max(x.shape[-2:]) <= size:
        return _grid_crop(x, top, left, height, width, size)
    index = torch.arange(x.shape[0], device=x.device, dtype=x.dtype)
    # roi_align wants rows (batch index, x1, y1, x2, y2).
    rois = torch.stack((index, left, top, left + width, top + height), dim=1)
    return roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True)


def _grid_crop(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: torch.Tensor,
               width: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear crop-and-resize through one affine sampling grid per sample (normalised coordinates)."""
    n, c, img_h, img_w = x.shape
    zero = torch.zeros_like(top)
    theta = torch.stack((
        torch.stack((width / img_w, zero, (2 * left + width) / img_w - 1), dim=1),
        torch.stack((zero, height / img_h, (2 * top + height) / img_h - 1), dim=1),
    ), dim=1)
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def hflip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Flip left-right the samples where mask [B] is True."""
    return torch.where(_per_sample(mask), x.flip(-1), x)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * _per_sample(factor).to(x.dtype)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _luma(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _luma(x), factor)


def adjust_hue(x: torch.Tensor, hue_factor: torch.Tensor) -> torch.Tensor:
    """Rotate hue by hue_factor [B] (in turns, within [-0.5, 0.5]), the same function as torchvision's.

    A hue rotation keeps each pixel's max (V) and min, so instead of a full RGB -> HSV -> RGB round trip
    only the hue is computed (in sextants, torchvision's tie-breaking: red, then green, then blue wins)
    and each channel n in (R, G, B) comes back in closed form as max - (max - min) * clamp(min(k, 4 - k), 0, 1)
    with k = (n + 6h) mod 6 and n = (5, 3, 1). That is half the kernels of the round trip.
    """
    r, g, b = x.unbind(1)
    maxc, minc = torch.aminmax(x, dim=1)
    spread = maxc - minc
    safe = torch.where(spread == 0, torch.ones_like(spread), spread)  # grey pixels: any hue, zero spread
    hue = torch.where(maxc == r, (g - b) / safe,
                      torch.where(maxc == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    hue = hue + 6.0 * hue_factor.to(x.dtype).view(-1, 1, 1)
    # n = (5, 3, 1) built on the device: a torch.tensor from host values would be a synchronising copy on CUDA.
    n = torch.arange(3, device=x.device, dtype=x.dtype).mul_(-2.0).add_(5.0).view(1, 3, 1, 1)
    k = (n + hue.unsqueeze(1)).remainder_(6.0)
    t = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return (maxc.unsqueeze(1) - spread.unsqueeze(1) * t).clamp_(0.0, 1.0)


def color_jitter(
    x: torch.Tensor,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    apply_mask: torch.Tensor,
    generator: torch.Generator,
    order_generator: torch.Generator | None = None,
) -> torch.Tensor:
    """ColorJitter with per-sample factors; samples where apply_mask [B] is False come back unchanged.

    Deviation: torchvision draws the order of the four ops per image; that would cost 4x the kernels, so
    one random permutation is drawn per batch (kornia does the same). The permutation steers Python
    control flow, so it is drawn on the host from order_generator (a CPU generator) to avoid a sync;
    without one it is drawn from generator, which syncs when generator lives on an accelerator.
    """
    n, device = x.shape[0], x.device
    ops = []
    for fn, strength in (
        (adjust_brightness, brightness),
        (adjust_contrast, contrast),
        (adjust_saturation, saturation),
    ):
        if strength > 0:  # a zero strength is the identity: skip its kernels and its draws
            ops.append((fn, _uniform(n, max(0.0, 1.0 - strength), 1.0 + strength, generator, device)))
    if hue > 0:
        ops.append((adjust_hue, _uniform(n, -hue, hue, generator, device)))
    if not ops:
        return x
    gen = order_generator if order_generator is not None else generator
    order = torch.randperm(len(ops), generator=gen, device=gen.device).tolist()
    out = x
    for k in order:
        fn, factor = ops[k]
        out = fn(out, factor)
    return torch.where(_per_sample(apply_mask), out, x)


def grayscale(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Replace the samples where mask [B] is True by their luma repeated over 3 channels."""
    return torch.where(_per_sample(mask), _luma(x).expand_as(x), x)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int, mask: torch.Tensor) -> torch.Tensor:
    """Blur with per-sample sigma [B] where mask [B] is True, reflect padding like torchvision.

    Each (sample, channel) pair is its own conv group, so one separable pass of two grouped convs blurs
    the whole batch with per-sample kernels.
    """
    b, c, height, width = x.shape
    lim = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    grid = torch.linspace(-lim, lim, kernel_size, device=x.device, dtype=x.dtype)
    # Same parametrisation as torchvision's _get_gaussian_kernel1d: softmax(-(t / sqrt(2) / sigma)^2).
    kernel = torch.softmax(-(grid / sigma.to(x.dtype).unsqueeze(1)).pow(2), dim=1)
    kernel = kernel.repeat_interleave(c, dim=0)  # [B*C, k]: one kernel per group
    half = kernel_size // 2
    flat = F.pad(x.reshape(1, b * c, height, width), (half, half, half, half), mode="reflect")
    flat = F.conv2d(flat, kernel.view(b * c, 1, 1, kernel_size), groups=b * c)
    flat = F.conv2d(flat, kernel.view(b * c, 1, kernel_size, 1), groups=b * c)
    return torch.where(_per_sample(mask), flat.view(b, c, height, width), x)


def solarize(x: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """Invert pixels >= threshold in the samples where mask [B] is True."""
    return torch.where(_per_sample(mask) & (x >= threshold), 1.0 - x, x)


class Augmenter:
    """Turns a uint8 batch [B,3,H,W] into one normalised float32 view [B,3,size,size] per ViewConfig."""

    def __init__(
        self,
        views: list[ViewConfig],
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        generator: torch.Generator,
    ):
        if not views:
            raise ValueError("Augmenter needs at least one ViewConfig")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std > 0; got mean={mean}, std={std}")
        self.views = list(views)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.generator = generator
        # Op order in colour jitter is Python control flow, so it comes from a host generator; seeding it
        # from generator once here (the only sync) keeps one seed in charge of every random choice.
        seed = torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item()
        self.order_generator = torch.Generator().manual_seed(int(seed))
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a uint8 batch [B,3,H,W], got {x.dtype} {tuple(x.shape)}")
        if x.device.type != self.generator.device.type:
            raise ValueError(f"batch is on {x.device} but the generator is on {self.generator.device}")
        xf = x.to(torch.float32).div_(255.0)
        return [self._view(xf, cfg) for cfg in self.views]

    def _view(self, x: torch.Tensor, cfg: ViewConfig) -> torch.Tensor:
        gen, device = self.generator, x.device
        n, _, height, width = x.shape
        # Ops with probability 0 are skipped outright: no kernels, no random draws.
        v = resized_crop(x, sample_crop_boxes(n, height, width, cfg.scale, cfg.ratio, gen, device), cfg.size)
        if cfg.hflip_p > 0:
            v = hflip(v, _bernoulli(n, cfg.hflip_p, gen, device))
        if cfg.jitter_p > 0:
            mask = _bernoulli(n, cfg.jitter_p, gen, device)
            v = color_jitter(
                v, cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue, mask, gen, self.order_generator
            )
        if cfg.gray_p > 0:
            v = grayscale(v, _bernoulli(n, cfg.gray_p, gen, device))
        if cfg.blur_p > 0:
            mask = _bernoulli(n, cfg.blur_p, gen, device)
            sigma = _uniform(n, cfg.blur_sigma[0], cfg.blur_sigma[1], gen, device)
            v = gaussian_blur(v, sigma, cfg.blur_kernel_size, mask)
        if cfg.solarize_p > 0:
            v = solarize(v, _bernoulli(n, cfg.solarize_p, gen, device), cfg.solarize_threshold)
        return self._normalise(v)

    def _normalise(self, v: torch.Tensor) -> torch.Tensor:
        # Cached per device so the host-to-device copy of mean/std happens once, not every batch.
        if v.device not in self._stats:
            mean = torch.tensor(self.mean, device=v.device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, device=v.device).view(1, 3, 1, 1)
            self._stats[v.device] = (mean, std)
        mean, std = self._stats[v.device]
        return (v - mean) / std
