"""The transforms of the context-based pretext tasks: sRGB -> Lab, the ab bins, soft encoding and rebalancing
(colorization), the holes and overlap bands (inpainting), and what each method does with them."""

from __future__ import annotations

import math

import pytest
import torch

from sslcli import colour
from sslcli.methods.inpainting.model import central_hole, overlap_band, random_blocks, random_shapes
from sslcli.methods.spatial import feature_map

# sRGB 8-bit -> CIE Lab (D65), the standard published values (e.g. Bruce Lindbloom's calculator).
LAB_REFERENCE = [
    ((255, 0, 0), (53.24, 80.09, 67.20)),
    ((0, 255, 0), (87.73, -86.18, 83.18)),
    ((0, 0, 255), (32.30, 79.19, -107.86)),
    ((255, 255, 255), (100.0, 0.0, 0.0)),
    ((0, 0, 0), (0.0, 0.0, 0.0)),
    ((128, 128, 128), (53.59, 0.0, 0.0)),
    ((0, 255, 255), (91.11, -48.09, -14.13)),
    ((255, 0, 255), (60.32, 98.23, -60.82)),
    ((255, 255, 0), (97.14, -21.55, 94.48)),
]


def test_rgb_to_lab_matches_reference_values_in_a_batch():
    rgb = torch.tensor([c for c, _ in LAB_REFERENCE], dtype=torch.float32) / 255  # [9, 3]
    image = rgb.T.reshape(1, 3, 3, 3)  # the 9 colours as one 3 x 3 image
    lab = colour.rgb_to_lab(image).reshape(3, 9).T
    torch.testing.assert_close(lab, torch.tensor([v for _, v in LAB_REFERENCE]), atol=0.01, rtol=0)
    # Any leading batch shape; half precision in, float32 out.
    assert colour.rgb_to_lab(image.half()).dtype == torch.float32
    assert colour.rgb_to_lab(image.expand(4, 3, 3, 3)).shape == (4, 3, 3, 3)


def test_lightness_to_grey_is_the_neutral_grey_of_that_lightness():
    lightness = torch.linspace(0, 100, 11).view(1, 1, 1, 11)
    grey = colour.lightness_to_grey(lightness).expand(1, 3, 1, 11)
    lab = colour.rgb_to_lab(grey)
    torch.testing.assert_close(lab[:, 0:1], lightness, atol=1e-3, rtol=0)
    torch.testing.assert_close(lab[:, 1:], torch.zeros(1, 2, 1, 11), atol=1e-3, rtol=0)
    assert colour.lightness_to_grey(torch.tensor(53.585)).item() == pytest.approx(128 / 255, abs=1e-4)


def test_gamut_ab_bins_are_the_261_cells_srgb_reaches():
    bins = colour.ab_bins("gamut")
    # The rule (see gamut_ab_bins): cells of the grid of 10 that some sRGB colour rounds to.
    assert bins.shape == (261, 2)
    assert (bins % 10 == 0).all() and len({tuple(b) for b in bins.tolist()}) == 261
    assert [0.0, 0.0] in bins.tolist()
    assert bins[:, 0].min() == -90 and bins[:, 0].max() == 100 and bins[:, 1].min() == -110 and bins[:, 1].max() == 90
    # Every 8-bit colour falls in one of them (random ones, and the primaries of the reference table).
    colours = torch.randint(0, 256, (3, 1, 4096), generator=torch.Generator().manual_seed(0)).float() / 255
    corners = torch.tensor([c for c, _ in LAB_REFERENCE], dtype=torch.float32).T.reshape(3, 1, 9) / 255
    ab = colour.rgb_to_lab(torch.cat([colours, corners], dim=-1))[1:].reshape(2, -1).T
    cells = {tuple(c) for c in (torch.round(ab / 10) * 10).tolist()}
    assert cells <= {tuple(b) for b in bins.tolist()}


def test_paper_ab_bins_are_zhangs_313_and_hold_the_gamut_cells():
    bins = colour.ab_bins("paper")
    assert bins.shape == (313, 2) and torch.equal(bins, colour.ab_bins())  # the default
    points = [tuple(b) for b in bins.tolist()]
    assert len(set(points)) == 313 and points == sorted(points) and (bins % 10 == 0).all()
    # Entries of pts_in_hull.npy: its first and last rows, and rim bins sRGB never rounds to.
    assert points[0] == (-90.0, 50.0) and points[-1] == (100.0, 0.0)
    for rim in ((-90.0, 90.0), (100.0, -90.0), (60.0, -110.0), (-50.0, 100.0)):
        assert rim in points and rim not in {tuple(b) for b in colour.ab_bins("gamut").tolist()}
    assert (90.0, 80.0) not in points and (110.0, 0.0) not in points
    # All 261 gamut cells are among them: every sRGB pixel's nearest paper bin is its own cell.
    assert {tuple(b) for b in colour.ab_bins("gamut").tolist()} <= set(points)
    with pytest.raises(ValueError, match="unknown ab bins"):
        colour.ab_bins("313")


def test_soft_encoding_spreads_over_the_5_nearest_bins_with_gaussian_weights():
    bins = colour.ab_bins()
    ab = torch.tensor([[0.0, 0.0], [33.0, -47.0]]).T.reshape(1, 2, 1, 2)
    targets = colour.soft_encode(ab, bins, neighbours=5, sigma=5.0)
    assert targets.shape == (1, 313, 1, 2)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(1, 1, 2))
    assert ((targets > 0).sum(dim=1) == 5).all()
    # At a bin centre: itself at distance 0 and its 4 grid neighbours at 10 -> weights 1 : e^-2 (x4).
    at_zero = targets[0, :, 0, 0]
    centre = bins.tolist().index([0.0, 0.0])
    assert at_zero[centre].item() == pytest.approx(1 / (1 + 4 * math.exp(-2)), rel=1e-5)
    for neighbour in ([10.0, 0.0], [-10.0, 0.0], [0.0, 10.0], [0.0, -10.0]):
        assert at_zero[bins.tolist().index(neighbour)].item() == pytest.approx(math.exp(-2) / (1 + 4 * math.exp(-2)),
                                                                              rel=1e-5)
    # (33, -47): the nearest bin (30, -50) carries the most.
    assert bins[targets[0, :, 0, 1].argmax()].tolist() == [30.0, -50.0]


def test_rebalancing_weights_follow_eq_4():
    prior = torch.tensor([0.7, 0.2, 0.1])
    uniform = colour.rebalancing_weights(prior, lam=1.0)
    torch.testing.assert_close(uniform, torch.ones(3))  # lambda 1: no rebalancing
    inverse = colour.rebalancing_weights(prior, lam=0.0)
    torch.testing.assert_close(inverse, (1 / prior) / 3)  # lambda 0: inverse frequency, E_p[w] = 1
    half = colour.rebalancing_weights(prior, lam=0.5)
    raw = 1 / (0.5 * prior + 0.5 / 3)
    torch.testing.assert_close(half, raw / (prior * raw).sum())
    assert (prior * half).sum().item() == pytest.approx(1.0) and half[2] > half[1] > half[0]
    smoothing = colour.bin_smoothing(colour.ab_bins())
    torch.testing.assert_close(smoothing.sum(dim=0), torch.ones(313))  # smoothing keeps a distribution one


def test_central_hole_and_band_make_up_the_central_square():
    hole = central_hole(16, 16, 0.5, overlap=1, device=torch.device("cpu"))
    square = torch.zeros(1, 1, 16, 16)
    square[..., 4:12, 4:12] = 1  # half the side: a quarter of the area
    inner = torch.zeros(1, 1, 16, 16)
    inner[..., 5:11, 5:11] = 1  # less 1 px of overlap on every side
    assert torch.equal(hole, inner)
    band = overlap_band(hole, 1)
    assert torch.equal(hole + band, square) and (hole * band).sum() == 0
    assert torch.equal(overlap_band(hole, 0), torch.zeros_like(hole))


def test_random_blocks_cover_at_most_a_quarter_and_follow_the_global_rng():
    torch.manual_seed(3)
    a = random_blocks(8, 32, 32, count=4, side_fraction=0.25, device=torch.device("cpu"))
    torch.manual_seed(3)
    b = random_blocks(8, 32, 32, count=4, side_fraction=0.25, device=torch.device("cpu"))
    assert torch.equal(a, b)
    coverage = a.mean(dim=(1, 2, 3))
    assert (coverage > 0).all() and (coverage <= 0.25).all()
    assert not torch.equal(a[0], a[1])  # per image


def test_random_shapes_cover_their_share_in_curved_regions_and_follow_the_global_rng():
    torch.manual_seed(4)
    a = random_shapes(16, 32, 32, coverage=0.25, cells=4, device=torch.device("cpu"))
    torch.manual_seed(4)
    assert torch.equal(a, random_shapes(16, 32, 32, coverage=0.25, cells=4, device=torch.device("cpu")))
    coverage = a.mean(dim=(1, 2, 3))
    # A quarter of the 32 x 32 pixels, image by image; less only by ties on the field's flat rims.
    assert ((coverage <= 0.25) & (coverage >= 0.24)).all() and (coverage == 0.25).sum() >= 8
    assert not torch.equal(a[0], a[1])
    # Not boxes: the hole fills clearly less than its bounding box in most images.
    fill = []
    for hole in a[:, 0]:
        rows, cols = hole.any(dim=1).nonzero(), hole.any(dim=0).nonzero()
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        fill.append(float(hole.sum() / box))
    assert sum(f < 0.9 for f in fill) >= 12


def test_inpainting_trains_with_every_region():
    from tests.test_methods import images

    for region in ("center", "blocks", "shapes"):
        _, model, augment, _, _ = _build("inpainting", region=region)
        hole = model.hole(augment(images())[0])
        assert 0 < hole.mean() <= 0.26, region
        out = model(augment(images()), 0)
        assert torch.isfinite(out.loss), region
        out.loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters()), region


def _build(name: str, **method):
    from tests.test_methods import build

    return build(name, **method)


def test_colorization_sees_grey_reads_the_views_statistics_and_updates_its_prior_after_the_step():
    from tests.test_methods import images, train_step

    _, model, augment, optimizer, info = _build("colorization")
    assert model.pixels.mean.flatten().tolist() == pytest.approx(list(info.mean))  # what the Augmenter used
    assert model.pixels.std.flatten().tolist() == pytest.approx(list(info.std))
    views = augment(images())
    pixels = model.pixels.to_pixels(model.encoder_input(colour.rgb_to_lab(model.pixels.to_pixels(views[0]))))
    assert torch.allclose(pixels[:, 0], pixels[:, 1], atol=1e-5) and torch.allclose(pixels[:, 0], pixels[:, 2], atol=1e-5)
    uniform = model.prior.clone()
    out = model(views, 0)
    assert torch.equal(model.prior, uniform), "the prior moves only after the optimizer step"
    out.loss.backward()
    model.on_step_end(0)
    assert model.prior_batches.item() == 1 and model.prior.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert not torch.equal(model.prior, uniform)
    first = model.prior.clone()
    train_step(model, augment, optimizer, 1)
    assert model.prior_batches.item() == 2 and not torch.equal(model.prior, first)
    assert {"prior", "prior_batches"} <= set(model.state_dict()), "the prior is checkpointed"


def test_colorization_predicts_over_the_bins_its_config_names():
    from tests.test_methods import images

    for bins, count in (("paper", 313), ("gamut", 261)):
        _, model, augment, _, _ = _build("colorization", bins=bins)
        assert model.bins.shape == (count, 2) and model.prior.shape == (count,)
        views = augment(images())
        fmap, _ = feature_map(model.encoder, model.encoder_input(colour.rgb_to_lab(model.pixels.to_pixels(views[0]))))
        assert model.decoder(fmap, (2, 2)).shape[1] == count


def test_colorization_metadata_says_what_the_encoder_saw(tmp_path):
    from sslcli import checkpoint
    from sslcli.methods.colorization.config import ColorizationConfig

    _, model, _, _, info = _build("colorization")
    meta = checkpoint.encoder_metadata(info, method="colorization", epoch=1, step=1, spec={},
                                       trained_input=ColorizationConfig.encoder_input)
    assert meta["trained_input"] == ColorizationConfig.encoder_input and "grey" in meta["trained_input"]
    assert "trained_input" not in checkpoint.encoder_metadata(info, method="simclr", epoch=1, step=1, spec={})
    # The exported encoder takes RGB: 3 input channels, as built.
    x = torch.rand(2, 3, 16, 16)
    assert model.export_encoder()(x).shape == (2, info.feature_dim)


def test_inpainting_fills_the_hole_with_the_mean_and_its_loss_sees_only_hole_and_band():
    from tests.test_methods import images

    _, model, augment, _, _ = _build("inpainting")
    views = augment(images())
    seen = {}
    real = model.encoder.forward_features
    model.encoder.forward_features = lambda x: seen.setdefault("input", x) is not None and real(x)
    out = model(views, 0)
    hole = model.hole(views[0])
    assert (seen["input"][hole.expand_as(views[0]) == 1] == 0).all()  # filled with the mean: 0 once normalised
    assert torch.equal(seen["input"][hole.expand_as(views[0]) == 0], views[0][hole.expand_as(views[0]) == 0])
    assert torch.isfinite(out.loss) and "reconstruction" in out.logs and model.discriminator is None


def test_inpainting_adversarial_terms_train_each_side_only():
    torch.manual_seed(0)
    _, model, augment, optimizer, _ = _build("inpainting", adversarial_weight=0.001)
    real = torch.randn(4, 3, 16, 16)
    fake = torch.randn(4, 3, 16, 16, requires_grad=True)
    adversarial, discriminator = model.adversarial_terms(real, fake)
    d_params = list(model.discriminator.parameters())
    # The generator's term reaches the inpainted image, never the discriminator's weights ...
    assert all(g is None for g in torch.autograd.grad(adversarial, d_params, retain_graph=True, allow_unused=True))
    assert torch.autograd.grad(adversarial, fake, retain_graph=True)[0].abs().sum() > 0
    # ... and the discriminator's term the reverse.
    assert torch.autograd.grad(discriminator, fake, retain_graph=True, allow_unused=True)[0] is None
    assert all(g.abs().sum() > 0 for g in torch.autograd.grad(discriminator, d_params))
    from tests.test_methods import train_step

    before = [p.detach().clone() for p in d_params]
    out = train_step(model, augment, optimizer, 0)
    assert {"adversarial", "discriminator", "reconstruction"} <= out.logs.keys() and torch.isfinite(out.loss)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.discriminator.parameters(), strict=True))
