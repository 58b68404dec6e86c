"""Tests for sslcli.augment: each batched op against torchvision v2.functional, applied sample by sample."""

from __future__ import annotations

import ast
import inspect
import math

import pydantic
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torch.testing import assert_close

from sslcli import augment as A
from sslcli.augment import Augmenter, ViewConfig

B, S = 8, 32


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(B, 3, S, S, generator=_gen(123))


@pytest.fixture
def mask() -> torch.Tensor:
    return torch.tensor([True, False] * (B // 2))


def _reference(x: torch.Tensor, fn) -> torch.Tensor:
    return torch.stack([fn(x[b], b) for b in range(x.shape[0])])


def _factors(low: float, high: float, seed: int = 1) -> torch.Tensor:
    return torch.rand(B, generator=_gen(seed)) * (high - low) + low


# ---------------------------------------------------------------- config


def test_view_config_defaults_and_validation():
    cfg = ViewConfig()
    assert cfg.size == 32 and cfg.blur_kernel_size == 3
    assert ViewConfig(size=224).blur_kernel_size == 23  # SimCLR's ImageNet kernel
    assert ViewConfig(size=96).blur_kernel_size == 9
    assert ViewConfig.model_validate({"scale": [0.2, 1.0]}).scale == (0.2, 1.0)
    for bad in (
        {"hflip_p": 1.5},
        {"gray_p": -0.1},
        {"hue": 0.6},
        {"brightness": -1},
        {"scale": (0.9, 0.1)},
        {"ratio": (0.0, 1.0)},
        {"blur_sigma": (2.0, 1.0)},
        {"scale": (0.5, 1.5)},
        {"size": 0},
        {"unknown": 1},
    ):
        with pytest.raises(pydantic.ValidationError):
            ViewConfig(**bad)


# ---------------------------------------------------------------- crops


def test_sample_crop_boxes_valid_and_per_sample():
    n, height, width, scale, ratio = 256, 60, 80, (0.08, 1.0), (3 / 4, 4 / 3)
    boxes = A.sample_crop_boxes(n, height, width, scale, ratio, _gen(), "cpu")
    assert boxes.shape == (n, 4) and boxes.dtype == torch.float32
    top, left, h, w = boxes.unbind(1)
    assert torch.equal(boxes, boxes.round())
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    # Sizes were rounded from sqrt(area * ratio), so bound the pre-rounding values by +-0.5 px.
    area = height * width
    assert ((w - 0.5) * (h - 0.5) <= scale[1] * area).all()
    assert ((w + 0.5) * (h + 0.5) >= scale[0] * area).all()
    assert ((w - 0.5) / (h + 0.5) <= ratio[1]).all() and ((w + 0.5) / (h - 0.5) >= ratio[0]).all()
    assert len(torch.unique(boxes, dim=0)) > n // 2  # every sample draws its own box
    assert (top > 0).any() and (left > 0).any()  # offsets are random too
    again = A.sample_crop_boxes(n, height, width, scale, ratio, _gen(), "cpu")
    assert torch.equal(boxes, again)


def test_sample_crop_boxes_fallback_center_crop():
    # No try can fit (width would exceed the image), so torchvision's clamped centre crop is used.
    boxes = A.sample_crop_boxes(4, 32, 32, (0.5, 1.0), (10.0, 20.0), _gen(), "cpu")
    assert_close(boxes, torch.tensor([[14.0, 0.0, 3.0, 32.0]]).expand(4, 4))
    boxes = A.sample_crop_boxes(4, 30, 40, (0.5, 1.0), (0.05, 0.1), _gen(), "cpu")
    assert_close(boxes, torch.tensor([[0.0, 18.0, 30.0, 3.0]]).expand(4, 4))


def test_resized_crop_full_image_upscale_exact(x):
    boxes = torch.tensor([[0.0, 0.0, S, S]]).repeat(B, 1)
    out = A.resized_crop(x, boxes, 48)
    ref = _reference(x, lambda img, b: TF.resized_crop(img, 0, 0, S, S, [48, 48], antialias=False))
    assert_close(out, ref, atol=1e-5, rtol=0)  # same taps; only float rounding of the 2/3 scale differs


def test_resized_crop_upscale_matches_torchvision_inside(x):
    # Per-sample boxes, all no larger than the output. roi_align reads real neighbours within half an
    # output pixel of an inner crop edge where torchvision repeats the edge pixel, so compare inside that.
    boxes = torch.tensor(
        [
            [3, 5, 16, 20],
            [0, 0, 32, 17],
            [10, 2, 8, 8],
            [16, 16, 16, 16],
            [1, 7, 25, 24],
            [0, 12, 20, 20],
            [5, 0, 27, 32],
            [9, 9, 12, 14],
        ],
        dtype=torch.float32,
    )
    out = A.resized_crop(x, boxes, S)
    assert out.shape == (B, 3, S, S)
    for b in range(B):
        top, left, h, w = (int(v) for v in boxes[b])
        ref = TF.resized_crop(x[b], top, left, h, w, [S, S], antialias=False)
        m = math.ceil(S / (2 * min(h, w)))  # output pixels whose taps may cross an inner crop edge
        assert_close(out[b, :, m:-m, m:-m], ref[:, m:-m, m:-m], atol=1e-6, rtol=0)


def test_resized_crop_downscale_antialiases():
    g = _gen(5)
    smooth = torch.nn.functional.interpolate(torch.rand(4, 3, 8, 8, generator=g), size=64, mode="bicubic")
    noise = torch.rand(4, 3, 64, 64, generator=g)
    boxes = torch.tensor(
        [[0, 0, 64, 64], [3, 5, 48, 40], [10, 2, 40, 60], [8, 8, 56, 56]], dtype=torch.float32
    )
    for img, max_err, noisy in ((smooth.clamp(0, 1), 0.06, False), (noise, 0.2, True)):
        out = A.resized_crop(img, boxes, 16)
        for b in range(4):
            top, left, h, w = (int(v) for v in boxes[b])
            aa = TF.resized_crop(img[b], top, left, h, w, [16, 16], antialias=True)
            plain = TF.resized_crop(img[b], top, left, h, w, [16, 16], antialias=False)
            assert (out[b] - aa).abs().max() < max_err
            # Averaging several taps per pixel is closer to antialiasing than plain bilinear, by far on noise.
            assert (out[b] - aa).abs().mean() < (0.5 if noisy else 1.0) * (plain - aa).abs().mean()


# ---------------------------------------------------------------- geometric / colour ops


def test_hflip(x, mask):
    ref = _reference(x, lambda img, b: TF.horizontal_flip(img) if mask[b] else img)
    assert torch.equal(A.hflip(x, mask), ref)


@pytest.mark.parametrize(
    ("op", "ref_op", "low", "high"),
    [
        (A.adjust_brightness, TF.adjust_brightness, 0.2, 1.8),
        (A.adjust_contrast, TF.adjust_contrast, 0.2, 1.8),
        (A.adjust_saturation, TF.adjust_saturation, 0.2, 1.8),
    ],
)
def test_blend_ops_match_torchvision(x, op, ref_op, low, high):
    f = _factors(low, high)
    out = op(x, f)
    ref = _reference(x, lambda img, b: ref_op(img, float(f[b])))
    assert_close(out, ref, atol=1e-6, rtol=0)
    assert out.min() >= 0 and out.max() <= 1


def test_adjust_hue_matches_torchvision(x):
    f = _factors(-0.5, 0.5)
    out = A.adjust_hue(x, f)
    ref = _reference(x, lambda img, b: TF.adjust_hue(img, float(f[b])))
    assert_close(out, ref, atol=1e-5, rtol=0)
    gray = x[:, :1].expand(B, 3, S, S)  # max == min everywhere: hue is undefined and must stay put
    assert_close(A.adjust_hue(gray, f), gray, atol=1e-6, rtol=0)


def test_grayscale(x, mask):
    ref = _reference(x, lambda img, b: TF.rgb_to_grayscale(img, num_output_channels=3) if mask[b] else img)
    assert_close(A.grayscale(x, mask), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kernel_size", [3, 7])
def test_gaussian_blur(x, mask, kernel_size):
    sigma = _factors(0.1, 2.0)
    out = A.gaussian_blur(x, sigma, kernel_size, mask)
    ref = _reference(
        x, lambda img, b: TF.gaussian_blur(img, [kernel_size] * 2, [float(sigma[b])] * 2) if mask[b] else img
    )
    assert_close(out, ref, atol=1e-6, rtol=0)
    assert torch.equal(out[~mask], x[~mask])


def test_solarize(x, mask):
    ref = _reference(x, lambda img, b: TF.solarize(img, 0.4) if mask[b] else img)
    assert torch.equal(A.solarize(x, mask, 0.4), ref)


def test_color_jitter_per_sample_factors_and_mask(x, mask):
    img = x * 0.5 + 0.25  # brightness factors up to 1.6 must not clip, so ratios stay measurable
    out = A.color_jitter(img, 0.6, 0.0, 0.0, 0.0, mask, _gen())
    assert torch.equal(out[~mask], img[~mask])
    ratio = out / img
    per_sample = ratio.flatten(1)
    assert_close(per_sample.max(1).values, per_sample.min(1).values, atol=1e-5, rtol=0)
    factors = per_sample[:, 0][mask]
    assert ((factors >= 0.4 - 1e-5) & (factors <= 1.6 + 1e-5)).all()
    assert len(torch.unique(factors)) == int(mask.sum())


def test_color_jitter_all_ops_and_skips(x, mask):
    everyone = torch.ones(B, dtype=torch.bool)
    assert torch.equal(A.color_jitter(x, 0.0, 0.0, 0.0, 0.0, everyone, _gen()), x)
    out = A.color_jitter(x, 0.8, 0.8, 0.8, 0.2, mask, _gen(), torch.Generator().manual_seed(3))
    assert torch.equal(out[~mask], x[~mask])
    assert (out[mask] - x[mask]).abs().flatten(1).amax(1).min() > 1e-3
    assert out.min() >= 0 and out.max() <= 1
    again = A.color_jitter(x, 0.8, 0.8, 0.8, 0.2, mask, _gen(), torch.Generator().manual_seed(3))
    assert torch.equal(out, again)


# ---------------------------------------------------------------- RandAugment (InfoMin)


def _layer(x: torch.Tensor, name: str, level: float | torch.Tensor, sign: float = 1.0, **kw) -> torch.Tensor:
    """One RandAugment layer giving every sample the op `name` at `level` (the magnitude / 10)."""
    n = x.shape[0]
    level = level if isinstance(level, torch.Tensor) else torch.full((n,), float(level))
    op = torch.full((n,), A.RANDAUGMENT_OPS.index(name))
    return A.rand_augment_layer(x, op, level, torch.full((n,), sign), torch.tensor([0.1, 0.2, 0.3]), **kw)


def test_randaugment_pointwise_ops_on_hand_checked_values():
    x = torch.tensor([0.1, 0.2, 0.45, 0.7, 0.9]).view(1, 1, 1, 5).expand(2, 3, 2, 5).contiguous()
    assert_close(_layer(x, "invert", 1.0), 1 - x)
    # posterize keeps floor(4 level) bits: level 0.5 -> 2 bits, values floor(4x)/4; level 0.2 -> 0 bits, black.
    expected = torch.tensor([0.0, 0.0, 0.25, 0.5, 0.75]).view(1, 1, 1, 5).expand(2, 3, 2, 5)
    assert_close(_layer(x, "posterize", 0.5), expected)
    assert torch.equal(_layer(x, "posterize", 0.2), torch.zeros_like(x))
    # solarize inverts from floor(256 level) / 255 up: level 0.5 -> 128/255; level 1 -> 256/255, nothing.
    assert_close(_layer(x, "solarize", 0.5)[0, 0, 0], torch.tensor([0.1, 0.2, 0.45, 0.3, 0.1]))
    assert torch.equal(_layer(x, "solarize", 1.0), x)
    # solarize_add adds floor(110 level) / 255 below 128/255: level 1 -> 110/255, clipped at 1.
    assert_close(_layer(x, "solarize_add", 1.0)[0, 0, 0],
                 torch.tensor([0.1 + 110 / 255, 0.2 + 110 / 255, min(1.0, 0.45 + 110 / 255), 0.7, 0.9]))
    # brightness blends with black at 0.1 + 1.8 level: level 0.5 -> x1.0; level 0 -> x0.1.
    assert_close(_layer(x, "brightness", 0.5), x)
    assert_close(_layer(x, "brightness", 0.0), x * 0.1)


def test_randaugment_auto_contrast_and_equalize_stretch_each_channel():
    x = torch.full((2, 3, 32, 32), 0.4)
    x[:, 0, :, :16] = 0.2
    x[:, 0, :, 16:] = 0.6  # channel 0 holds two levels, the others are flat
    contrast = _layer(x, "auto_contrast", 1.0)
    assert_close(contrast[:, 0, :, :16], torch.zeros(2, 32, 16))
    assert_close(contrast[:, 0, :, 16:], torch.ones(2, 32, 16))
    assert torch.equal(contrast[:, 1:], x[:, 1:])  # a flat channel is left as it is
    # PIL's equalisation of two equal halves: the lower level to 0, the upper to 255.
    equal = _layer(x, "equalize", 1.0)
    assert_close(equal[:, 0], contrast[:, 0])
    assert_close(equal[:, 1:], torch.full((2, 2, 32, 32), 102 / 255))  # a flat channel keeps its uint8 level
    ramp = torch.rand(4, 3, S, S, generator=_gen(3))
    assert_close(_layer(ramp, "auto_contrast", 1.0), _reference(ramp, lambda img, b: TF.autocontrast(img)))


def test_randaugment_sharpness_matches_torchvision_per_sample(x):
    level = _factors(0.0, 1.0)
    out = _layer(x, "sharpness", level)
    ref = _reference(x, lambda img, b: TF.adjust_sharpness(img, float(level[b] * 1.8 + 0.1)))
    assert_close(out, ref, atol=1e-6, rtol=0)


def test_randaugment_geometric_ops_move_pixels_as_pil(x):
    # 90 degrees (level 3 x 30) is counter-clockwise, PIL's direction; the sign turns it the other way.
    assert_close(_layer(x, "rotate", 3.0), torch.rot90(x, 1, (-2, -1)), atol=1e-5, rtol=0)
    assert_close(_layer(x, "rotate", 3.0, sign=-1.0), torch.rot90(x, -1, (-2, -1)), atol=1e-5, rtol=0)
    # translate_x by 0.25 of the side (level 5/9 x 0.45): output column c reads input column c + 8, the
    # columns read from outside the image take the fill colour.
    moved = _layer(x, "translate_x", 0.25 / 0.45)
    assert_close(moved[..., :24], x[..., 8:], atol=1e-5, rtol=0)
    assert_close(moved[..., 24:], torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1).expand(B, 3, S, 8), atol=1e-5, rtol=0)
    # shear_x with s = 0.3 level about the top-left corner: row y reads columns shifted by s (y + 0.5); on a
    # horizontal ramp, bilinear sampling gives the ramp at the shifted position exactly.
    cols = torch.arange(S, dtype=torch.float32)
    ramp = (cols / 64).expand(1, 3, S, S).contiguous()
    sheared = _layer(ramp, "shear_y", 0.0)  # level 0: the identity
    assert_close(sheared, ramp)
    sheared = _layer(ramp, "shear_x", 0.5)
    shifted = (cols.view(1, S) + 0.15 * (cols.view(S, 1) + 0.5)) / 64
    inside = (cols.view(1, S) + 0.15 * (cols.view(S, 1) + 0.5)) <= S - 1
    assert_close(sheared[0, 0][inside], shifted[inside], atol=1e-5, rtol=0)


def test_randaugment_ops_are_per_sample_and_both_paths_agree(x):
    n = len(A.RANDAUGMENT_OPS)
    batch = torch.rand(n + 1, 3, S, S, generator=_gen(9))
    op = torch.arange(-1, n)  # one sample per op, and one without
    level, sign = _factors(0.3, 1.0, seed=4).repeat(2)[: n + 1], torch.tensor([1.0, -1.0] * 8)[: n + 1]
    fill = torch.tensor([0.1, 0.2, 0.3])
    out = A.rand_augment_layer(batch, op, level, sign, fill)
    assert torch.equal(out[0], batch[0])
    for b in range(1, n + 1):  # each sample got its own op with its own strength
        alone = A.rand_augment_layer(batch[b:b + 1], op[b:b + 1], level[b:b + 1], sign[b:b + 1], fill)
        assert_close(out[b:b + 1], alone, atol=1e-6, rtol=0)
        assert (out[b] - batch[b]).abs().max() > 1e-3, A.RANDAUGMENT_OPS[op[b]]
    # The whole-batch path (CUDA's, no host sync) gives each sample the same result as the compact one.
    assert_close(A.rand_augment_layer(batch, op, level, sign, fill, compact=False), out, atol=1e-6, rtol=0)


def test_randaugment_views_are_reproducible_from_the_generator_state(batch):
    cfg = ViewConfig(randaugment_ops=2, randaugment_p=1.0, gray_p=0.0, jitter_p=0.0, blur_p=0.0)
    gen = _gen(0)
    aug = Augmenter([cfg, cfg], MEAN, STD, gen)
    state, order_state = gen.get_state(), aug.order_generator.get_state()
    first = aug(batch)
    gen.set_state(state)  # what a resume restores
    aug.order_generator.set_state(order_state)
    assert all(torch.equal(a, b) for a, b in zip(first, aug(batch), strict=True))
    assert not torch.equal(first[0], aug(batch)[0])  # the generator moved on
    plain = ViewConfig(**{**cfg.model_dump(), "randaugment_ops": 0})
    (without,) = Augmenter([plain], MEAN, STD, _gen(0))(batch)
    assert (first[0] - without).abs().flatten(1).amax(1).min() > 1e-3  # p = 1: every image was changed


def test_randaugment_comes_before_grayscale_as_in_infomin(batch):
    # The geometric ops fill with the (coloured) mean; grayscale after RandAugment greys that fill too.
    cfg = ViewConfig(randaugment_ops=2, randaugment_p=1.0, gray_p=1.0, jitter_p=0.0, blur_p=0.0)
    (out,) = Augmenter([cfg], MEAN, STD, _gen(0))(batch)
    pixels = out * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    assert_close(pixels[:, 0], pixels[:, 1], atol=1e-5, rtol=0)
    assert ViewConfig().randaugment_ops == 0  # off unless asked for: the other recipes draw as before


# ---------------------------------------------------------------- Augmenter


MEAN, STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)


@pytest.fixture
def batch() -> torch.Tensor:
    return torch.randint(0, 256, (B, 3, S, S), dtype=torch.uint8, generator=_gen(7))


def test_augmenter_shapes_and_reproducibility(batch):
    views = [ViewConfig(), ViewConfig(size=24, blur_p=1.0, solarize_p=0.2)]
    out = Augmenter(views, MEAN, STD, _gen(0))(batch)
    assert len(out) == 2
    assert out[0].shape == (B, 3, S, S) and out[1].shape == (B, 3, 24, 24)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in out)
    same = Augmenter(views, MEAN, STD, _gen(0))(batch)
    assert all(torch.equal(a, b) for a, b in zip(out, same, strict=True))
    other = Augmenter(views, MEAN, STD, _gen(1))(batch)
    assert not torch.equal(out[0], other[0])


def test_augmenter_views_are_independent(batch):
    aug = Augmenter([ViewConfig(), ViewConfig()], MEAN, STD, _gen(0))
    v1, v2 = aug(batch)
    assert (v1 - v2).abs().flatten(1).amax(1).min() > 1e-3  # every image differs between its views
    w1, _ = aug(batch)
    assert not torch.equal(v1, w1)  # the generator advances between calls


def test_augmenter_identity_config_is_normalisation(batch):
    cfg = ViewConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    (out,) = Augmenter([cfg], MEAN, STD, _gen(0))(batch)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    assert_close(out, (batch.float() / 255 - mean) / std, atol=1e-5, rtol=0)
    flipped = ViewConfig(**{**cfg.model_dump(), "hflip_p": 1.0})
    (out,) = Augmenter([flipped], MEAN, STD, _gen(0))(batch)
    assert_close(out, (batch.flip(-1).float() / 255 - mean) / std, atol=1e-5, rtol=0)


def test_augmenter_rejects_bad_input(batch):
    with pytest.raises(ValueError):
        Augmenter([], MEAN, STD, _gen())
    with pytest.raises(ValueError):
        Augmenter([ViewConfig()], MEAN, (0.2, 0.0, 0.2), _gen())
    with pytest.raises(ValueError):
        Augmenter([ViewConfig()], MEAN, STD, _gen())(batch.float())


def test_module_has_no_loop_over_the_batch():
    # The only loops allowed iterate over views (also the per-view blur/solarize odds of an asymmetric
    # recipe), colour-jitter ops, RandAugment layers and ops, HSV sectors or config fields.
    tree = ast.parse(inspect.getsource(A))
    loops = [node for node in ast.walk(tree) if isinstance(node, (ast.For, ast.While, ast.comprehension))]
    sources = {ast.unparse(loop.iter) for loop in loops}
    assert sources <= {
        "self.views",
        "zip(blur_p, solarize_p, strict=True)",
        "order",
        "range(4, -1, -1)",
        "('scale', 'ratio', 'blur_sigma')",
        "((adjust_brightness, brightness), (adjust_contrast, contrast), (adjust_saturation, saturation))",
        "mean",
        "std",
        "range(num_ops)",  # RandAugment's layers, its ops and their maps
        "_GEOMETRIC",
        "maps.items()",
        "rows",
        "groups",
        "self(x.flatten(0, 1))",  # the views of a batch of frame tuples, each refolded to [B, K, ...]
    }, sources
