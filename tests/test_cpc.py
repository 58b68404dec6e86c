"""CPC v2's grid of patches, its per-patch augmentation, its masked context networks and its spec defaults,
checked on tiny inputs (its loss: tests/test_losses.py; the method contract: tests/test_methods.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sslcli import checkpoint
from sslcli.augment import adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation
from sslcli.encoders import build_encoder
from sslcli.errors import UsageError
from sslcli.methods.cpc.config import CPCConfig
from sslcli.methods.cpc.model import (
    TURNS,
    augment_patches,
    crop_and_pad,
    crop_side,
    cut_grid,
    grid_geometry,
    rotate_and_shear,
)
from sslcli.methods.pretext import drop_colors
from sslcli.spec import PretrainSpec, resolve
from tests.test_methods import build


def test_grid_geometry_scales_the_papers_grid_to_the_image():
    assert grid_geometry(256, 7) == (32, 64, 0)  # the paper's 64 px patches at a 32 px stride
    assert grid_geometry(32, 7) == (4, 8, 0)  # pl_bolts' CIFAR-10 patches
    assert grid_geometry(224, 7) == (28, 56, 0)
    assert grid_geometry(32, 3) == (8, 16, 0)
    assert grid_geometry(100, 7) == (12, 24, 2)  # the 96 px the grid spans, centred in 100
    with pytest.raises(UsageError, match="multiple of the ViT's 16 px patches"):
        grid_geometry(32, 7, multiple=16)
    with pytest.raises(UsageError, match="data.image_size"):
        grid_geometry(6, 7)


def test_cut_grid_gives_the_crops_at_the_grid_positions_in_row_major_order():
    x = torch.randn(2, 3, 22, 22)
    stride, side, start = grid_geometry(22, 3)
    assert (stride, side, start) == (5, 10, 1)
    patches = cut_grid(x, 3, stride, side, start)
    assert patches.shape == (2, 9, 3, 10, 10)
    for i in range(3):
        for j in range(3):
            top, left = start + i * stride, start + j * stride
            assert torch.equal(patches[:, i * 3 + j], x[:, :, top:top + side, left:left + side])


def test_each_patch_is_augmented_on_its_own():
    """augment_patches equals a reference that augments one patch at a time with that patch's draws."""
    _, model, *_ = build("cpc", patch_affine_p=0.5, patch_crop=0.7)
    cfg = model.cfg
    torch.manual_seed(3)
    pixels = torch.rand(2, 9, 3, 6, 6)
    draws = model.draw(2, 9, 6, torch.device("cpu"))
    flip, jitter, jitter_u, affine, affine_u, drop, keep, noise, corner = draws
    for mask in (flip, jitter, affine, drop):  # the patches of one image draw their own choices
        assert 0 < int(mask[0].sum()) < 9
    assert corner.shape == (2, 9, 2) and len(set(map(tuple, corner[0].tolist()))) > 1
    out = augment_patches(pixels, draws, cfg, model.pixels)
    brightness, contrast, saturation, hue = cfg.patch_jitter
    for b in range(2):
        for p in range(9):
            x = pixels[b, p:p + 1]
            if jitter[b, p]:
                u = jitter_u[b, p].view(4, 1)
                x = adjust_brightness(x, 1 - brightness + 2 * brightness * u[0])
                x = adjust_contrast(x, 1 - contrast + 2 * contrast * u[1])
                x = adjust_saturation(x, 1 - saturation + 2 * saturation * u[2])
                x = adjust_hue(x, hue * (2 * u[3] - 1))
            if affine[b, p]:
                x = rotate_and_shear(x, affine_u[b, p:p + 1], cfg)
            if flip[b, p]:
                x = x.flip(-1)
            x = model.pixels.normalise(x)
            if drop[b, p]:
                x = drop_colors(x[None], keep[b, p].view(1, 1), noise[b, p][None, None])[0]
            top, left = corner[b, p].tolist()  # a 4 px crop (0.7 x 6, rounded down), centred in zeros
            x = torch.nn.functional.pad(x[..., top:top + 4, left:left + 4], (1, 1, 1, 1))
            torch.testing.assert_close(out[b, p], x[0], rtol=1e-5, atol=1e-5)


def test_crop_and_pad_moves_each_patch_by_its_own_corner():
    """CPC v1's 60 of 64 px: a crop at the patch's corner, centred in zeros, so the content moves; the corner
    that is the centre keeps the middle pixels in place."""
    sides = crop_side(64, 60 / 64), crop_side(16, 60 / 64), crop_side(8, 60 / 64), crop_side(16, 1.0)
    assert sides == (60, 15, 7, 16)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    out = crop_and_pad(x, torch.tensor([[0, 0], [2, 1]]), 6)
    assert out.shape == x.shape
    torch.testing.assert_close(out[0, :, 1:7, 1:7], x[0, :, 0:6, 0:6])  # moved down and right by 1 px
    torch.testing.assert_close(out[1, :, 1:7, 1:7], x[1, :, 2:8, 1:7])  # up by 1 px, in place across
    border = torch.ones(8, 8, dtype=torch.bool)
    border[1:7, 1:7] = False
    assert out[:, :, border].abs().sum() == 0
    assert not torch.equal(out[0], x[0])


def test_rotation_and_shear_turn_the_patch_about_its_centre():
    x = torch.randn(3, 3, 8, 8)
    half = torch.full((3, 2), 0.5)  # the middle of both ranges: no rotation, no shear
    torch.testing.assert_close(rotate_and_shear(x, half, CPCConfig()), x, rtol=0, atol=1e-5)
    turn = torch.tensor([[1.0, 0.5]] * 3)  # the largest rotation, no shear
    torch.testing.assert_close(rotate_and_shear(x, turn, CPCConfig(patch_rotation=180)), x.flip(-1).flip(-2),
                               rtol=0, atol=1e-5)
    sheared = rotate_and_shear(x, torch.tensor([[0.5, 1.0]] * 3), CPCConfig())
    moved = (sheared - x).abs().mean(dim=(0, 1, 3))  # per row: a horizontal shear moves the edges the most
    assert moved[[0, -1]].min() > 2 * moved[3:5].max()


def _grid_for(model) -> torch.Tensor:
    feature_dim = model.heads[0].predict.in_features
    return torch.randn(2, feature_dim, model.cfg.grid_size, model.cfg.grid_size,
                       generator=torch.Generator().manual_seed(5))


def test_the_context_network_is_causal_top_to_bottom():
    """Changing row r of the patch grid leaves every prediction made from the rows above it unchanged, and
    changes the predictions made from row r itself (the context includes its own row, c_{i,j} of rows <= i)."""
    _, model, *_ = build("cpc", context_blocks=3)
    model.eval()
    grid = _grid_for(model)
    g = grid.shape[-1]
    features = grid.permute(0, 2, 3, 1)
    with torch.no_grad():
        before = model.predictions(features)[0]  # the top-down direction
        for r in range(g):
            changed = features.clone()
            changed[:, r] += 1.0
            after = model.predictions(changed)[0]
            for k, prediction in before.items():
                rows = prediction.shape[1]
                torch.testing.assert_close(after[k][:, :min(r, rows)], prediction[:, :min(r, rows)],
                                           rtol=0, atol=1e-6)
                if r < rows:  # the negative control: the row itself (and the rows below) do see the change
                    assert (after[k][:, r] - prediction[:, r]).abs().min() > 0


# The original-grid slice that each direction reads last: rot90 turns row i of the turned grid into
# original row g-1-i (2 turns), column g-1-i (1 turn, right to left) or column i (3 turns, left to right).
LAST = {0: (slice(None), -1, slice(None)), 2: (slice(None), 0, slice(None)),
        1: (slice(None), slice(None), 0), 3: (slice(None), slice(None), -1)}


@pytest.mark.parametrize("direction", range(4))
def test_each_direction_reads_the_grid_from_its_own_side(direction: int):
    _, model, *_ = build("cpc", context_blocks=3)
    model.eval()
    turns = TURNS[4][direction]
    grid = _grid_for(model)
    changed = grid.clone()
    changed[(slice(None), slice(None), *LAST[turns][1:])] += 1.0  # what this direction sees last
    head = model.heads[direction]
    with torch.no_grad():
        before = head(torch.rot90(grid, turns, dims=(2, 3)))
        after = head(torch.rot90(changed, turns, dims=(2, 3)))
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(b[:, :-1], a[:, :-1], rtol=0, atol=1e-6)  # every earlier row: unchanged
        assert (b[:, -1] - a[:, -1]).abs().min() > 0


def test_cpc_defaults_to_a_layer_norm_encoder_unless_one_is_chosen():
    spec = resolve(PretrainSpec, options={"method.name": "cpc", "data.image_size": 16})
    assert spec.encoder.kwargs == {"norm_layer": "groupnorm1"} and spec.optim.name == "adamw"
    assert spec.augment.jitter_p == 0 and spec.augment.gray_p == 0  # colour is augmented per patch
    chosen = resolve(PretrainSpec, options={"method.name": "cpc", "data.image_size": 16},
                     sets=["encoder.name=resnet10t"])
    assert chosen.encoder.kwargs == {}  # kwargs meant for the default encoder do not reach a chosen one
    encoder, info = build_encoder(spec.encoder.name, 16, spec.encoder.small_stem, spec.encoder.kwargs)
    norms = [m for m in encoder.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == 1 for m in norms)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in encoder.modules())
    # The norm layer travels in the encoder's metadata, and the metadata says it was trained on patches.
    meta = checkpoint.encoder_metadata(info, method="cpc", epoch=0, step=0, spec={},
                                       trained_input=CPCConfig.encoder_input)
    assert '"norm_layer": "groupnorm1"' in meta["encoder_kwargs"] and "patches" in meta["trained_input"]


@pytest.mark.parametrize(("sets", "message"), [(["method.min_offset=3", "method.max_offset=2"], "above max_offset"),
                                               (["method.grid_size=2"], "nothing to predict"),
                                               (["method.patch_jitter=[0.4, 0.4, 0.4, 0.6]"], "hue")])
def test_bad_cpc_settings_are_spec_errors(sets: list[str], message: str):
    with pytest.raises(UsageError, match=message):
        resolve(PretrainSpec, options={"method.name": "cpc"}, sets=sets)


def test_offsets_stop_at_the_grid_and_each_has_its_own_prediction():
    _, model, *_ = build("cpc", grid_size=4, min_offset=1, max_offset=9)
    assert model.offsets == (1, 2, 3)
    features = _grid_for(model).permute(0, 2, 3, 1)
    predictions = model.predictions(features)
    assert len(predictions) == 4 and all(sorted(p) == [1, 2, 3] for p in predictions)
    assert [predictions[0][k].shape[1] for k in (1, 2, 3)] == [3, 2, 1]  # rows with a row k below them
    # W_1, W_2, W_3 are different maps of the same context.
    assert not torch.allclose(predictions[0][1][:, 0], predictions[0][2][:, 0])
    assert math.prod(model.heads[0].predict.weight.shape) == 3 * model.heads[0].target_dim * features.shape[-1]
