"""Monodepth's geometry and losses (Monodepth2's layers.py and compute_losses), its frame sampler, the depth
decoder saved beside the encoder and the report's depth.png."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sslcli.methods.monodepth import geometry
from sslcli.methods.temporal import NeighbourSampler
from sslcli.video_data import ClipIndex

H, W = 12, 16


def textured(seed: int = 0, channels: int = 3) -> torch.Tensor:
    return torch.rand(2, channels, H, W, generator=torch.Generator().manual_seed(seed))


def camera(fov: float = 60.0) -> tuple[torch.Tensor, torch.Tensor]:
    k = geometry.intrinsics(H, W, fov, None)
    return k, torch.linalg.inv(k)


def translation(tx: float, ty: float = 0.0, tz: float = 0.0, batch: int = 2) -> torch.Tensor:
    pose = torch.eye(4).repeat(batch, 1, 1)
    pose[:, :3, 3] = torch.tensor([tx, ty, tz])
    return pose


def test_identity_pose_and_constant_depth_reproject_a_frame_onto_itself():
    frame = textured()
    k, inv_k = camera()
    depth = torch.full((2, 1, H, W), 7.5)
    warped = geometry.warp(frame, depth, translation(0.0), k, inv_k)
    torch.testing.assert_close(warped, frame, atol=1e-5, rtol=0)
    assert geometry.photometric_error(warped, frame).abs().max() < 1e-4
    # and an image that is not the frame is not reprojected onto it
    assert geometry.photometric_error(textured(1), frame).mean() > 0.1


def test_a_sideways_translation_shifts_pixels_by_focal_length_times_baseline_over_depth():
    k, inv_k = camera()
    depth, shift = 4.0, 2  # pixels
    tx = shift * depth / k[0, 0].item()
    # A source whose columns differ: the warped target column u reads the source's column u + shift.
    source = torch.arange(W, dtype=torch.float32).view(1, 1, 1, W).expand(2, 3, H, W).contiguous()
    source = source + torch.arange(H, dtype=torch.float32).view(1, 1, H, 1) * 100
    warped = geometry.warp(source, torch.full((2, 1, H, W), depth), translation(tx), k, inv_k)
    torch.testing.assert_close(warped[..., : W - shift], source[..., shift:], atol=1e-3, rtol=0)
    # past the border the source's last column is repeated (border padding)
    torch.testing.assert_close(warped[..., W - 1], source[..., W - 1], atol=1e-3, rtol=0)
    # twice as far away, the same translation moves pixels half as much
    far = geometry.warp(source, torch.full((2, 1, H, W), 2 * depth), translation(tx), k, inv_k)
    torch.testing.assert_close(far[..., : W - 1], source[..., 1:], atol=1e-3, rtol=0)


def test_pose_parameters_give_a_rotation_and_its_inverse():
    axisangle = torch.tensor([[0.1, -0.2, 0.3], [0.0, 0.0, 0.0]])
    t = torch.tensor([[0.5, 0.1, -0.2], [1.0, 2.0, 3.0]])
    forward = geometry.transformation_from_parameters(axisangle, t)
    inverse = geometry.transformation_from_parameters(axisangle, t, invert=True)
    torch.testing.assert_close(forward @ inverse, torch.eye(4).expand(2, 4, 4), atol=1e-6, rtol=0)
    r = forward[0, :3, :3]
    torch.testing.assert_close(r @ r.T, torch.eye(3), atol=1e-6, rtol=0)
    # Rodrigues' formula, as monodepth2's rot_from_axisangle writes it out
    angle = axisangle[0].norm()
    axis = axisangle[0] / angle
    cross = geometry.skew(axis[None])[0]
    rodrigues = torch.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross
    torch.testing.assert_close(r, rodrigues, atol=1e-6, rtol=0)
    torch.testing.assert_close(forward[1], torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]]))


def test_ssim_of_an_image_with_itself_is_one_and_lower_for_another():
    x = textured()
    assert geometry.ssim_distance(x, x).abs().max() < 1e-6  # (1 - SSIM) / 2 = 0
    assert geometry.ssim_distance(x, textured(2)).mean() > 0.2
    assert geometry.ssim_distance(x, 0.5 * x).mean() > 0  # a darker copy is not the same image


def test_automask_masks_a_static_frame_and_keeps_the_pixels_the_warp_explains():
    k, inv_k = camera()
    target = textured(3)
    depth = torch.full((2, 1, H, W), 4.0)
    moved = translation(0.5)  # a pose that moves the pixels: a static scene is not explained by it
    static = [target.clone(), target.clone()]
    identity = [geometry.photometric_error(s, target) for s in static]
    reprojected = [geometry.photometric_error(geometry.warp(s, depth, moved, k, inv_k), target) for s in static]
    noise = torch.randn(2, 2, H, W, generator=torch.Generator().manual_seed(0))
    loss, kept = geometry.min_reprojection(reprojected, identity, noise)
    assert kept.sum() == 0 and loss.abs().max() < 1e-4
    # A source that the warp explains (the identity warp of the target itself) while the unwarped sources
    # differ from the target (another frame): every pixel is kept.
    other = [textured(4), textured(5)]
    identity = [geometry.photometric_error(s, target) for s in other]
    exact = [geometry.photometric_error(geometry.warp(target, depth, translation(0.0), k, inv_k), target)] * 2
    _, kept = geometry.min_reprojection(exact, identity, noise)
    assert kept.min() == 1
    # without auto-masking nothing is masked, and the loss is the minimum over the sources
    loss, kept = geometry.min_reprojection(reprojected, None)
    assert kept.min() == 1 and torch.equal(loss, torch.minimum(*reprojected)[:, 0])


def test_smoothness_is_zero_for_a_flat_disparity_and_lower_across_image_edges():
    image = torch.zeros(1, 3, H, W)
    image[..., W // 2:] = 1.0  # a vertical edge
    flat = torch.full((1, 1, H, W), 0.3)
    assert geometry.smoothness(geometry.mean_normalised(flat), image) == 0
    step = torch.full((1, 1, H, W), 0.2)
    step[..., W // 2:] = 0.6  # a depth edge where the image has one ...
    shifted = torch.full((1, 1, H, W), 0.2)
    shifted[..., W // 4:] = 0.6  # ... and one where it has none
    assert geometry.smoothness(step, image) < geometry.smoothness(shifted, image)
    # mean normalisation: scaling the disparity does not change the normalised term
    torch.testing.assert_close(geometry.smoothness(geometry.mean_normalised(step), image),
                               geometry.smoothness(geometry.mean_normalised(3 * step), image))


def test_default_intrinsics_follow_the_field_of_view_and_given_ones_override_them():
    k = geometry.intrinsics(64, 96, 90.0, None)
    assert k[0, 0].item() == pytest.approx(48.0) and k[1, 1].item() == pytest.approx(48.0)
    assert (k[0, 2].item(), k[1, 2].item()) == (48.0, 32.0)
    kitti = geometry.intrinsics(64, 96, 90.0, (0.58, 1.92, 0.5, 0.5))
    assert kitti[0, 0].item() == pytest.approx(0.58 * 96) and kitti[1, 1].item() == pytest.approx(1.92 * 64)


def test_neighbour_frames_are_t_minus_gap_t_and_t_plus_gap_of_one_clip():
    lengths = np.array([10, 3, 0, 7])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    index = ClipIndex(starts, lengths, np.zeros(lengths.sum(), dtype=np.float32))
    rows = NeighbourSampler(gap=2)(index, 400, np.random.default_rng(0))
    clip = index.clip_of[rows]
    assert (clip == clip[:, :1]).all() and set(clip[:, 0]) == {0, 3}  # the 3-frame clip has no t +- 2
    assert (rows[:, 1] - rows[:, 0] == 2).all() and (rows[:, 2] - rows[:, 1] == 2).all()
    assert not NeighbourSampler(gap=5).usable(index) and NeighbourSampler(gap=4).usable(index)
