"""The pretext transforms of rotation, jigsaw and relpos, and S4L's rotation loss, checked on tiny inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslcli.methods.jigsaw.model import GRID, cut_tiles, permutation_set, shuffle_tiles
from sslcli.methods.pretext import (
    RotationPretext,
    add_rotation_loss,
    classification_loss,
    crop_patches,
    drop_colors,
    normalize_patches,
    patch_side,
    resample_patches,
    resampling_table,
    rotate_batch,
)
from sslcli.methods.relpos.model import NEIGHBOURS, pair_positions
from tests.test_methods import build, images


def hamming(p: torch.Tensor) -> torch.Tensor:
    """Pairwise Hamming distances [N, N] of N permutations [N, 9]."""
    return (p[:, None, :] != p[None, :, :]).sum(dim=-1)


# ---------------------------------------------------------------- rotation


def test_rotation_labels_match_the_applied_rotation():
    x = torch.randn(3, 2, 5, 5)
    rotated, labels = rotate_batch(x)
    assert rotated.shape == (12, 2, 5, 5) and labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for row in range(12):
        k = int(labels[row])
        # Rotating back by the label recovers the input image; any other rotation does not (negative control).
        torch.testing.assert_close(torch.rot90(rotated[row], -k, dims=(1, 2)), x[row % 3], rtol=0, atol=0)
        assert not torch.equal(torch.rot90(rotated[row], -(k + 1), dims=(1, 2)), x[row % 3])
    # 90 degrees counter-clockwise: the top-right corner goes to the top-left.
    assert rotated[3, 0, 0, 0] == x[0, 0, 0, -1]
    with pytest.raises(ValueError, match="square"):
        rotate_batch(torch.randn(1, 3, 4, 5))


def test_classification_loss_is_the_hand_written_cross_entropy():
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5], [0.1, 0.2, 0.3, 0.4]])
    labels = torch.tensor([0, 3])
    expected = sum(-math.log(math.exp(logits[i, labels[i]]) / logits[i].exp().sum()) for i in range(2)) / 2
    assert classification_loss(logits, labels).item() == pytest.approx(float(expected), rel=1e-6)
    # Negative control: the wrong labels give a larger loss.
    assert classification_loss(logits, torch.tensor([2, 0])) > classification_loss(logits, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert classification_loss(logits.bfloat16(), labels).dtype == torch.float32


def test_rotation_pretext_classifies_the_four_copies_with_a_linear_head():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 6))
    pretext = RotationPretext(6)
    x = torch.randn(5, 3, 4, 4)
    loss, h, accuracy = pretext(encoder, x)
    rotated, labels = rotate_batch(x)
    torch.testing.assert_close(h, encoder(rotated))
    torch.testing.assert_close(loss, F.cross_entropy(pretext.head(encoder(rotated)), labels))
    assert h.shape == (20, 6) and 0 <= accuracy <= 1
    assert isinstance(pretext.head, nn.Linear) and not isinstance(RotationPretext(6, 8).head, nn.Linear)


def test_s4l_adds_the_weighted_rotation_loss_and_is_off_at_zero():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 6))
    pretext = RotationPretext(6)
    x, base = torch.randn(4, 3, 4, 4), torch.tensor(1.5)
    logs: dict = {}
    total = add_rotation_loss(pretext, 0.5, encoder, x, base, logs)
    rotation_loss, _, _ = pretext(encoder, x)
    torch.testing.assert_close(total, base + 0.5 * rotation_loss)
    assert logs["method_loss"] == base and logs["rotation_loss"] == rotation_loss.detach()
    assert add_rotation_loss(None, 0.0, encoder, x, base, {}) is base


@pytest.mark.parametrize("name", ["simclr", "byol", "mocov2"])
def test_s4l_rotation_weight_trains_a_rotation_head_with_the_method(name: str):
    _, off, augment, _, _ = build(name)
    assert off.rotation is None and not any(k.startswith("rotation.") for k in off.state_dict())
    _, model, augment, _, _ = build(name, rotation_weight=0.5)
    out = model(augment(images()), 0)
    torch.testing.assert_close(out.loss, out.logs["method_loss"] + 0.5 * out.logs["rotation_loss"])
    out.loss.backward()
    assert model.rotation.head.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- jigsaw


def test_permutation_set_is_far_apart_deterministic_and_seeded():
    perms = permutation_set(100, 0)
    assert perms.shape == (100, 9) and perms.dtype == torch.long
    assert all(sorted(row) == list(range(9)) for row in perms.tolist())  # each row is a permutation
    distances = hamming(perms)
    off_diagonal = distances[~torch.eye(100, dtype=torch.bool)]
    assert off_diagonal.min() == 6  # the claimed minimum distance (no two permutations a swap apart)
    assert off_diagonal.float().mean() > 8.0
    assert torch.equal(permutation_set(100, 0), perms)  # deterministic
    assert not torch.equal(permutation_set(100, 1), perms)  # another seed, another set
    assert torch.equal(permutation_set(10, 0), perms[:10])  # greedy: a smaller set is a prefix


def test_jigsaw_tiles_reassemble_by_the_inverse_permutation():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 12, 12)  # cells of 4 px
    cell = 4
    offsets = torch.randint(0, 2, (2, 9, 2))  # 3 px tiles: a random gap of 0 or 1 px in each axis
    tiles = cut_tiles(x, 3, offsets)
    for b in range(2):
        for j in range(9):
            r, c = j // GRID * cell + offsets[b, j, 0], j % GRID * cell + offsets[b, j, 1]
            torch.testing.assert_close(tiles[b, j], x[b, :, r:r + 3, c:c + 3])
    # Without a gap the tiles are the whole grid; shuffled by a permutation and put back by its inverse
    # they reassemble the image.
    whole = cut_tiles(x, cell, torch.zeros(2, 9, 2, dtype=torch.long))
    order = permutation_set(10, 0)[torch.tensor([3, 7])]
    shuffled = shuffle_tiles(whole, order)
    for b in range(2):
        for i in range(9):
            assert torch.equal(shuffled[b, i], whole[b, order[b, i]])  # position i holds tile order[i]
    restored = shuffle_tiles(shuffled, order.argsort(dim=1))
    image = restored.view(2, GRID, GRID, 3, cell, cell).permute(0, 3, 1, 4, 2, 5).reshape(2, 3, 12, 12)
    assert torch.equal(image, x)
    assert not torch.equal(shuffle_tiles(shuffled, order), whole)  # negative control: not its own inverse


def test_each_tile_is_normalised_by_its_own_statistics():
    tiles = torch.randn(2, 9, 3, 5, 5) * torch.rand(2, 9, 3, 1, 1) * 4 + torch.randn(2, 9, 3, 1, 1)
    out = normalize_patches(tiles)
    torch.testing.assert_close(out.mean(dim=(-2, -1)), torch.zeros(2, 9, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(-2, -1), unbiased=False), torch.ones(2, 9, 3), atol=1e-4, rtol=0)
    assert torch.isfinite(normalize_patches(torch.ones(1, 1, 3, 4, 4))).all()  # a flat tile stays finite


def test_jigsaw_keeps_its_permutation_set_in_the_state_and_its_tile_size():
    _, model, augment, _, _ = build("jigsaw")
    state = model.state_dict()
    assert torch.equal(state["permutations"], permutation_set(10, 0))  # in every checkpoint
    assert patch_side(64, 64 / 75, 1) == 17 and patch_side(96, 64 / 75, 1) == 27 and patch_side(64, 64 / 75, 4) == 16
    with pytest.raises(ValueError, match="larger data.image_size"):
        patch_side(6, 64 / 75, 4)


# ---------------------------------------------------------------- relative position


def test_relpos_neighbour_index_matches_the_patch_offset():
    size, patch = 30, 6  # pitch 10
    label = torch.arange(8)
    top, left = pair_positions(size, patch, label, torch.zeros(8, 2, 2, dtype=torch.long))
    for k, (dy, dx) in enumerate(NEIGHBOURS):
        assert (top[k, 0].item(), left[k, 0].item()) == (12, 12)  # the centre patch, centred in the middle cell
        assert (top[k, 1] - top[k, 0]).item() == 10 * dy and (left[k, 1] - left[k, 0]).item() == 10 * dx
    assert len(set(NEIGHBOURS)) == 8 and (0, 0) not in NEIGHBOURS
    # Jitter shifts each patch on its own and never leaves the image.
    jitter = torch.tensor([[[1, -1], [-1, 1]]]).expand(8, 2, 2)
    moved_top, moved_left = pair_positions(size, patch, label, jitter)
    assert torch.equal(moved_top - top, jitter[..., 0]) and torch.equal(moved_left - left, jitter[..., 1])
    far = pair_positions(size, patch, label, torch.full((8, 2, 2), 50))
    assert all(0 <= int(v) <= size - patch for t in far for v in t.flatten())


def test_resampling_shrinks_each_patch_to_its_own_side_and_back_like_interpolate():
    torch.manual_seed(0)
    p = 7
    table = resampling_table(p)
    torch.testing.assert_close(table[p], torch.eye(p))  # side p: left alone
    torch.testing.assert_close(table[1:].sum(dim=-1), torch.ones(p, p))  # a flat patch stays flat
    patches = torch.randn(2, 2, 3, p, p)
    sides = torch.tensor([[7, 3], [1, 5]])
    out = resample_patches(patches, sides, table)
    for b in range(2):
        for k in range(2):
            s = int(sides[b, k])
            small = F.interpolate(patches[b, k][None], size=(s, s), mode="area")
            reference = F.interpolate(small, size=(p, p), mode="bilinear", align_corners=False)[0]
            torch.testing.assert_close(out[b, k], reference, atol=1e-5, rtol=1e-5)
    assert torch.equal(out[0, 0], patches[0, 0]) or torch.allclose(out[0, 0], patches[0, 0], atol=1e-6)
    assert not torch.allclose(out[0, 1], patches[0, 1], atol=1e-2)  # 3 of 7 px: detail is lost
    assert torch.allclose(out[1, 0], patches[1, 0].mean(dim=(-2, -1), keepdim=True).expand(3, p, p), atol=1e-5)


def test_relpos_downsampling_draws_a_side_per_patch_only_when_asked():
    torch.manual_seed(0)
    _, off, *_ = build("relpos")
    *_, sides = off.draw(64, 1, (3, 10), torch.device("cpu"))
    assert sides is None  # the default: the paper does not say how often, so off
    _, every, *_ = build("relpos", downsample_p=1.0, downsample_min_side=0.25)
    *_, sides = every.draw(64, 1, (3, 10), torch.device("cpu"))
    assert sides.shape == (64, 2) and sides.min() >= 3 and sides.max() <= 10 and len(sides.unique()) > 3
    _, half, *_ = build("relpos", downsample_p=0.5, downsample_min_side=0.25)
    *_, sides = half.draw(512, 1, (3, 10), torch.device("cpu"))
    assert 0.35 < (sides < 10).float().mean() < 0.6  # about half shrunk (some draw the full side)
    # In a step the encoder sees the shrunk patches: the same crops (the sides are drawn last), smoother.
    seen = {}
    for p in (0.0, 1.0):
        _, model, augment, _, _ = build("relpos", downsample_p=p, downsample_min_side=0.25, color_drop=False)
        model.encoder.register_forward_pre_hook(lambda module, args, p=p: seen.setdefault(p, args[0].detach()))
        views = augment(images())
        torch.manual_seed(5)
        assert torch.isfinite(model(views, 0).loss)

    def roughness(x):
        return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()

    assert seen[0.0].shape == seen[1.0].shape and not torch.equal(seen[0.0], seen[1.0])
    assert roughness(seen[1.0]) < 0.9 * roughness(seen[0.0])


def test_crop_patches_takes_the_pixels_at_each_position():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    top, left = torch.tensor([[0, 5], [2, 1]]), torch.tensor([[3, 0], [4, 5]])
    patches = crop_patches(x, top, left, 3)
    assert patches.shape == (2, 2, 3, 3, 3)
    for b in range(2):
        for k in range(2):
            t, c = top[b, k], left[b, k]
            assert torch.equal(patches[b, k], x[b, :, t:t + 3, c:c + 3])


def test_color_dropping_keeps_one_channel_and_replaces_the_others_by_faint_noise():
    torch.manual_seed(0)
    patches = torch.randn(2, 2, 3, 6, 6) * 2
    keep = torch.tensor([[0, 2], [1, 1]])
    noise = torch.randn_like(patches)
    out = drop_colors(patches, keep, noise)
    for b in range(2):
        for k in range(2):
            c = int(keep[b, k])
            assert torch.equal(out[b, k, c], patches[b, k, c])
            std = patches[b, k, c].std(unbiased=False)
            for other in {0, 1, 2} - {c}:
                torch.testing.assert_close(out[b, k, other], noise[b, k, other] * std / 100)
                assert not torch.equal(out[b, k, other], patches[b, k, other])
