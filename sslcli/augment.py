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
import torchvision.transforms.v2.functional as TF
from torchvision.ops import roi_align

from sslcli.views import ViewConfig, without_rgb_ops


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


# ---------------------------------------------------------------- RandAugment (InfoMin's augmentation)

# The ops of InfoMin's released RandAugment (HobbitLong/PyContrast datasets/RandAugment.py, timm's of early 2020,
# `rand-n2-m10-mstd0.5`), in its order. Each is a batched op with per-sample parameters.
RANDAUGMENT_OPS = ("auto_contrast", "equalize", "invert", "rotate", "posterize", "solarize", "solarize_add",
                   "color", "contrast", "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y")
_GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")


def invert(x: torch.Tensor) -> torch.Tensor:
    return 1.0 - x


def auto_contrast(x: torch.Tensor) -> torch.Tensor:
    """Stretch each channel of each sample to [0, 1] (PIL's ImageOps.autocontrast, cutoff 0); a flat channel is
    left as it is. torchvision's kernel does the same with a boolean-mask assignment, a host sync on CUDA."""
    low = x.amin(dim=(-2, -1), keepdim=True)
    high = x.amax(dim=(-2, -1), keepdim=True)
    flat = high <= low
    scale = torch.where(flat, torch.ones_like(high), high - low)
    return torch.where(flat, x, (x - low) / scale).clamp_(0.0, 1.0)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per channel of each sample, on 256 levels (PIL's ImageOps.equalize):
    torchvision's batched kernel, which quantises floats to uint8 and back."""
    return TF.equalize(x.clamp(0.0, 1.0))


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep `bits` [B] (0-8) bits per channel: torchvision's float posterize with per-sample levels."""
    levels = _per_sample(torch.pow(2.0, bits.to(x.dtype)))
    return torch.minimum((x * levels).floor_(), levels - 1).div_(levels)


def solarize_below(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Invert pixels >= threshold [B] (on [0, 1]; above 1 nothing is inverted): PIL's solarize per sample."""
    return torch.where(x >= _per_sample(threshold).to(x.dtype), 1.0 - x, x)


def solarize_add(x: torch.Tensor, add: torch.Tensor, threshold: float = 128 / 255) -> torch.Tensor:
    """Add `add` [B] (on [0, 1]) to pixels below threshold, clipped at 1 (timm's SolarizeAdd)."""
    return torch.where(x < threshold, (x + _per_sample(add).to(x.dtype)).clamp_(max=1.0), x)


def adjust_sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance.Sharpness with per-sample factors [B], torchvision's formula: blend with the image
    smoothed by a 3x3 kernel (1s around a 5, over 13), border pixels kept."""
    channels = x.shape[1]
    # Built on the device: a tensor of host values would be a synchronising copy on CUDA.
    kernel = torch.full((channels, 1, 3, 3), 1.0 / 13.0, device=x.device, dtype=x.dtype)
    kernel[:, :, 1, 1] = 5.0 / 13.0
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = F.conv2d(x, kernel, groups=channels)
    return _blend(x, degenerate, factor)


def affine(x: torch.Tensor, theta: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Bilinear warp by per-sample inverse maps theta [B,2,3] in normalised coordinates (output -> input, as
    affine_grid takes them); what falls outside the image becomes `fill` [3] (PIL's fillcolor), blended at the
    edges by the share of each output pixel that came from inside."""
    inside = torch.ones_like(x[:, :1])
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    warped = F.grid_sample(torch.cat([x, inside], dim=1), grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False)
    return warped[:, :-1] + (1.0 - warped[:, -1:]) * fill.view(1, -1, 1, 1).to(x.dtype)


def geometric_thetas(op: torch.Tensor, level: torch.Tensor, sign: torch.Tensor, height: int,
                     width: int) -> torch.Tensor:
    """affine_grid's inverse maps [B,2,3] for the geometric RandAugment op of each sample, identity for the rest.

    PIL's maps (pixel coordinates from the top-left corner, output -> input), moved to normalised coordinates:
    rotate counter-clockwise by level x 30 degrees about the centre; shear_x u += s v and shear_y v += s u with
    s = level x 0.3, about the top-left corner as PIL's transform; translate by level x 0.45 of the side. Each
    magnitude takes the sample's random sign, as timm's _randomly_negate.
    """
    angle = torch.deg2rad(level * 30.0 * sign)
    cos, sin = torch.cos(angle), torch.sin(angle)
    shear, shift = level * 0.3 * sign, level * 0.45 * sign * 2.0  # a shift of 2 is one side in normalised units
    one, zero = torch.ones_like(level), torch.zeros_like(level)
    aspect = height / width
    maps = {
        "rotate": ((cos, -sin * aspect, zero), (sin / aspect, cos, zero)),
        "shear_x": ((one, shear * aspect, shear * aspect), (zero, one, zero)),
        "shear_y": ((one, zero, zero), (shear / aspect, one, shear / aspect)),
        "translate_x": ((one, zero, shift), (zero, one, zero)),
        "translate_y": ((one, zero, zero), (zero, one, shift)),
    }
    theta = torch.stack((torch.stack((one, zero, zero), 1), torch.stack((zero, one, zero), 1)), 1)
    for name, rows in maps.items():
        candidate = torch.stack([torch.stack(row, 1) for row in rows], 1)
        chosen = (op == RANDAUGMENT_OPS.index(name)).view(-1, 1, 1)
        theta = torch.where(chosen, candidate, theta)
    return theta


def rand_augment_layer(x: torch.Tensor, op: torch.Tensor, level: torch.Tensor, sign: torch.Tensor,
                       fill: torch.Tensor, compact: bool | None = None) -> torch.Tensor:
    """One RandAugment layer: sample b gets op RANDAUGMENT_OPS[op[b]] (-1: none) at strength level[b] in [0, 1]
    (the magnitude / 10), with sign[b] for the signed ops. Arguments as timm's level_to_arg of 2020: posterize
    keeps floor(4 level) bits (PosterizeTpu), solarize inverts from floor(256 level) / 255 up, solarize_add adds
    floor(110 level) / 255 below 128 / 255, the enhancements blend with factor 0.1 + 1.8 level; the five
    geometric ops share one warp.

    compact (default: on CPU) runs each op on its own samples only, gathered by index: a fifteenth of the work.
    Otherwise (CUDA) every op runs on the whole batch and each sample keeps its own op's result, so that no
    sample count is read back to the host. Both give each sample the same result.
    """
    height, width = x.shape[-2:]
    geometric = torch.zeros_like(op, dtype=torch.bool)
    for name in _GEOMETRIC:
        geometric |= op == RANDAUGMENT_OPS.index(name)
    groups = [  # (which samples, the op on a batch of them: x, level, sign, op)
        (geometric, lambda v, lv, sg, o: affine(v, geometric_thetas(o, lv, sg, height, width), fill)),
        (op == RANDAUGMENT_OPS.index("auto_contrast"), lambda v, lv, sg, o: auto_contrast(v)),
        (op == RANDAUGMENT_OPS.index("equalize"), lambda v, lv, sg, o: equalize(v)),
        (op == RANDAUGMENT_OPS.index("invert"), lambda v, lv, sg, o: invert(v)),
        (op == RANDAUGMENT_OPS.index("posterize"), lambda v, lv, sg, o: posterize(v, (lv * 4.0).floor())),
        (op == RANDAUGMENT_OPS.index("solarize"), lambda v, lv, sg, o: solarize_below(v, (lv * 256.0).floor() / 255)),
        (op == RANDAUGMENT_OPS.index("solarize_add"), lambda v, lv, sg, o: solarize_add(v, (lv * 110.0).floor() / 255)),
        (op == RANDAUGMENT_OPS.index("color"), lambda v, lv, sg, o: adjust_saturation(v, lv * 1.8 + 0.1)),
        (op == RANDAUGMENT_OPS.index("contrast"), lambda v, lv, sg, o: adjust_contrast(v, lv * 1.8 + 0.1)),
        (op == RANDAUGMENT_OPS.index("brightness"), lambda v, lv, sg, o: adjust_brightness(v, lv * 1.8 + 0.1)),
        (op == RANDAUGMENT_OPS.index("sharpness"), lambda v, lv, sg, o: adjust_sharpness(v, lv * 1.8 + 0.1)),
    ]
    if compact if compact is not None else x.device.type == "cpu":
        out = x.clone()
        for chosen, apply in groups:
            index = chosen.nonzero().squeeze(1)  # reads the count: fine on the CPU, a sync on an accelerator
            if index.numel():
                out[index] = apply(x[index], level[index], sign[index], op[index])
        return out
    out = x
    for chosen, apply in groups:
        out = torch.where(_per_sample(chosen), apply(x, level, sign, op), out)
    return out


def rand_augment(x: torch.Tensor, num_ops: int, magnitude: float, magnitude_std: float, p: float,
                 fill: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """RandAugment as InfoMin applies it: num_ops layers, each drawing per sample an op uniformly from
    RANDAUGMENT_OPS (with replacement across layers), applied with probability p at a magnitude from
    N(magnitude, magnitude_std) clipped to [0, 10], with a random sign. All draws come from `generator`.

    Deviations from the PIL pipeline it follows: the image stays float between ops (PIL rounds to uint8 after
    each), the warps are bilinear (timm picks bilinear or bicubic at random), and posterize keeps torchvision's
    float levels (k / 2^bits rather than uint8's masks)."""
    n, device = x.shape[0], x.device
    for _ in range(num_ops):
        op = torch.randint(len(RANDAUGMENT_OPS), (n,), generator=generator, device=device)
        applied = _bernoulli(n, p, generator, device)
        strength = torch.randn(n, generator=generator, device=device).mul_(magnitude_std).add_(magnitude)
        sign = torch.where(_bernoulli(n, 0.5, generator, device), -1.0, 1.0)
        x = rand_augment_layer(x, torch.where(applied, op, -1), strength.clamp_(0.0, 10.0) / 10.0, sign, fill)
    return x


class Augmenter:
    """Turns a uint8 batch [B,C,H,W] into one normalised float32 view [B,C,size,size] per ViewConfig (a batch of
    frame tuples [B,K,C,H,W] into views [B,K,C,size,size]).

    C is the number of mean (and std) values: 3 for RGB; other counts draw the views without the RGB-only
    ops (without_rgb_ops)."""

    def __init__(
        self,
        views: list[ViewConfig],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        generator: torch.Generator,
    ):
        if not views:
            raise ValueError("Augmenter needs at least one ViewConfig")
        if not mean or len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"mean and std need one value per channel each, std > 0; got mean={mean}, std={std}")
        self.channels = len(mean)
        self.views = without_rgb_ops(views, self.channels)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.generator = generator
        # Op order in colour jitter is Python control flow, so it comes from a host generator; seeding it
        # from generator once here (the only sync) keeps one seed in charge of every random choice.
        seed = torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item()
        self.order_generator = torch.Generator().manual_seed(int(seed))
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim == 5:  # frame tuples [B,K,C,H,W] (temporal methods): every frame augmented on its own
            b, k = x.shape[:2]
            return [v.unflatten(0, (b, k)) for v in self(x.flatten(0, 1))]
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected a uint8 batch [B,{self.channels},H,W], got {x.dtype} {tuple(x.shape)}")
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
        gray = _bernoulli(n, cfg.gray_p, gen, device) if cfg.gray_p > 0 else None
        if gray is not None and not cfg.randaugment_ops:
            v = grayscale(v, gray)
        if cfg.blur_p > 0:
            mask = _bernoulli(n, cfg.blur_p, gen, device)
            sigma = _uniform(n, cfg.blur_sigma[0], cfg.blur_sigma[1], gen, device)
            v = gaussian_blur(v, sigma, cfg.blur_kernel_size, mask)
        if cfg.randaugment_ops:
            # InfoMin's order: jitter, blur, RandAugment, then grayscale (blur and grayscale commute, so
            # without RandAugment grayscale stays where it always was).
            v = rand_augment(v, cfg.randaugment_ops, cfg.randaugment_magnitude, cfg.randaugment_magnitude_std,
                             cfg.randaugment_p, self._mean(v.device), gen)
            if gray is not None:
                v = grayscale(v, gray)
        if cfg.solarize_p > 0:
            v = solarize(v, _bernoulli(n, cfg.solarize_p, gen, device), cfg.solarize_threshold)
        return self._normalise(v)

    def _normalise(self, v: torch.Tensor) -> torch.Tensor:
        mean, std = self._device_stats(v.device)
        return (v - mean) / std

    def _mean(self, device: torch.device) -> torch.Tensor:
        """The normalisation mean [C]: RandAugment's fill colour (InfoMin fills with the ImageNet mean)."""
        return self._device_stats(device)[0].view(-1)

    def _device_stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # Cached per device so the host-to-device copy of mean/std happens once, not every batch.
        if device not in self._stats:
            mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
            self._stats[device] = (mean, std)
        return self._stats[device]
