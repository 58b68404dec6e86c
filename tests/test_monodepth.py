"""Monodepth's geometry and losses (Monodepth2's layers.py and compute_losses), its frame sampler, the depth
decoder saved beside the encoder and the report's depth.png."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sslcli.methods.monodepth import geometry
from sslcli.methods.temporal import NeighbourSampler, StereoSampler
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
    assert (rows[:, 3] == rows[:, 1]).all()  # the stereo place holds the target again
    assert not NeighbourSampler(gap=5).usable(index) and NeighbourSampler(gap=4).usable(index)


def test_a_blank_clip_gives_a_finite_loss_and_finite_gradients():
    """Textureless frames: zero-variance SSIM windows, a flat image for the smoothness weights, and every pixel a
    tie for the auto-mask. Nothing may turn non-finite."""
    from tests.test_methods import build

    _, model, augment, _, _ = build("monodepth")
    out = model(augment(torch.full((8, 4, 3, 16, 16), 128, dtype=torch.uint8)), 0)
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(torch.isfinite(v) for v in out.logs.values())
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # Every pixel is a tie of equal (zero) errors, which the auto-mask's tiny noise breaks at random.
    assert 0 < out.logs["automask_kept"] < 1 and out.logs["photometric"].abs() < 1e-3


def test_the_same_augmentation_is_drawn_for_the_three_frames_of_a_sample():
    from sslcli.methods.monodepth.model import colour_jitter

    pixels = torch.rand(4, 3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    same = pixels[:, :1].expand(4, 3, 3, 8, 8)
    factors = torch.tensor([[1.2, 0.8, 1.1], [1.0, 1.0, 1.0], [0.8, 1.2, 0.9], [1.1, 1.1, 1.1]])
    jittered = colour_jitter(same, factors)
    assert torch.equal(jittered[:, 0], jittered[:, 1]) and torch.equal(jittered[:, 1], jittered[:, 2])
    torch.testing.assert_close(jittered[1], same[1])  # factors of 1: unchanged
    assert not torch.allclose(jittered[0], same[0])


@pytest.fixture(scope="module")
def depth_run(videos_small, tmp_path_factory) -> dict:
    from sslcli.commands import pretrain
    from sslcli.methods import CONFIGS
    from sslcli.spec import PretrainSpec, resolve

    tiny = [f"method.{k}={list(v) if isinstance(v, tuple) else v}" for k, v in CONFIGS["monodepth"].tiny.items()]
    spec = resolve(PretrainSpec, options={"method.name": "monodepth", "data.path": str(videos_small),
                                          "out": str(tmp_path_factory.mktemp("depth") / "run")},
                   sets=["data.image_size=16", "data.fps=3", "encoder.name=resnet10t", "train.batch_size=8",
                         "train.epochs=1", "data.num_workers=0", "monitor.knn_every=0", *tiny])
    return pretrain.run(spec)


def test_a_run_saves_its_depth_decoder_and_draws_depth_png(depth_run: dict, cifar_tiny):
    from pathlib import Path

    from sslcli import checkpoint
    from sslcli.commands import finetune, report
    from sslcli.errors import UsageError
    from sslcli.methods.monodepth.depth_maps import load_depth_network, predict_disparity
    from sslcli.spec import FinetuneSpec, ReportSpec

    run = Path(depth_run["run_dir"])
    assert depth_run["steps"] == 5 and "depth.png" in depth_run["report_files"]  # 42 frames at 3 fps, batches of 8
    png = run / "report" / "depth.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png.unlink()
    summary = report.run(ReportSpec(run_dir=run))  # `sslcli report RUN` draws it again
    assert png.is_file() and summary["files"]["depth.png"] == str(png)
    encoder, info, decoder = load_depth_network(run)
    frames = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    disparity = predict_disparity(encoder, info, decoder, frames)
    assert disparity.shape == (3, 16, 16) and ((disparity > 0) & (disparity < 1)).all()
    # The decoder belongs to its encoder file: beside another save of the encoder it is refused, in one line.
    with torch.no_grad():
        next(encoder.parameters()).add_(1.0)
    checkpoint.save_encoder(run / "encoder.safetensors", encoder, checkpoint.read_metadata(
        run / "encoder.safetensors", checkpoint.ENCODER_EXPECTED))
    with pytest.raises(UsageError, match="another save of the encoder"):
        load_depth_network(run)
    # The exported encoder is the depth encoder, and fine-tunes like any other.
    result = finetune.run(FinetuneSpec(encoder=run / "encoder.safetensors", data={"path": cifar_tiny, "num_workers": 0},
                                       train={"epochs": 1, "batch_size": 32}, out=run.parent / "ft"))
    assert Path(result["classifier"]).is_file()


def test_a_panning_camera_is_learned_the_warp_explains_the_frames_and_the_automask_keeps_them():
    """Clips of a camera panning 1 px a frame over a textured plane: within 30 steps the depth and pose networks
    warp the neighbours onto the target (the photometric error falls well below its start) and auto-masking,
    which leaves out nearly every pixel at first, keeps nearly all of them."""
    import torch.nn.functional as F

    from sslcli.augment import Augmenter
    from sslcli.encoders import build_encoder
    from sslcli.methods import method_class
    from sslcli.methods.base import Budget
    from tests.test_methods import tiny_spec

    torch.manual_seed(0)
    size, length = 16, 40
    texture = F.interpolate(torch.rand(1, 3, 16, 40, generator=torch.Generator().manual_seed(1)),
                            size=(size, size + length), mode="bilinear", align_corners=False)
    frames = (torch.stack([texture[0, :, :, i:i + size] for i in range(length)]) * 255).round().to(torch.uint8)
    spec = tiny_spec("monodepth", augment=False)
    encoder, info = build_encoder("resnet10t", size, False, {})
    model = method_class("monodepth")(spec.method, encoder, info.feature_dim, Budget(30, 10))
    augment = Augmenter(model.views(spec.augment), info.mean, info.std, torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    logs = []
    for step in range(30):
        centre = torch.randint(1, length - 1, (4,))
        out = model(augment(torch.stack([frames[centre - 1], frames[centre], frames[centre + 1], frames[centre]], 1)),
                    step)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        logs.append({k: float(v) for k, v in out.logs.items()})
    assert logs[0]["automask_kept"] < 0.5 and logs[-1]["automask_kept"] > 0.8
    assert logs[-1]["photometric"] < 0.5 * logs[0]["photometric"]


@pytest.mark.parametrize(("setting", "message"), [
    ("method.min_depth=200", "must be below max_depth"),
    ("method.intrinsics=[0, 1.9, 0.5, 0.5]", "fx and fy must be positive"),
    ("method.decoder_channels=[16, 0]", "decoder_channels must be positive"),
    ("data.channels=1", "channels"),
])
def test_bad_monodepth_settings_are_one_line_spec_errors(setting: str, message: str):
    from sslcli.errors import UsageError
    from sslcli.spec import PretrainSpec, resolve

    with pytest.raises((UsageError, ValueError), match=message):
        resolve(PretrainSpec, options={"method.name": "monodepth", "data.image_size": 16}, sets=[setting])


def test_an_encoder_without_multi_scale_maps_and_an_unknown_pose_encoder_are_refused():
    from sslcli.encoders import build_encoder
    from sslcli.errors import UsageError
    from sslcli.methods import method_class
    from sslcli.methods.base import Budget
    from tests.test_methods import tiny_spec

    vit, info = build_encoder("vit_tiny_patch16_224", 16, kwargs={"patch_size": 4, "depth": 1, "embed_dim": 32,
                                                                  "num_heads": 2})
    with pytest.raises(UsageError, match="convolutional timm encoder with multi-scale features"):
        method_class("monodepth")(tiny_spec("monodepth").method, vit, info.feature_dim, Budget(2, 1))
    resnet, info = build_encoder("resnet10t", 16)
    with pytest.raises(UsageError, match="method.pose_encoder: unknown encoder"):
        method_class("monodepth")(tiny_spec("monodepth", pose_encoder="resnet181").method, resnet, info.feature_dim,
                                  Budget(2, 1))


def test_stereo_samples_take_the_left_views_neighbours_and_the_right_views_same_moment():
    # Sequence 0: a pair of 10 and 12 frames; sequence 1: one view (no pair); sequence 2: a pair of 6 and 6.
    lengths = np.array([10, 12, 30, 6, 6])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    index = ClipIndex(starts, lengths, np.zeros(lengths.sum(), dtype=np.float32), groups=np.array([0, 0, 1, 2, 2]))
    rows = StereoSampler(gap=1)(index, 500, np.random.default_rng(0))
    clip = index.clip_of[rows]
    assert set(clip[:, 1]) == {0, 3} and (clip[:, :3] == clip[:, 1:2]).all()  # left views only, one clip
    assert (clip[:, 3] == clip[:, 1] + 1).all()  # the right view of the same sequence ...
    t = rows - index.starts[clip]
    assert (t[:, 3] == t[:, 1]).all() and (t[:, 1] < 9).all()  # ... at the same moment, within the common length
    assert (t[:, 1] - t[:, 0] == 1).all() and (t[:, 2] - t[:, 1] == 1).all()
    only = StereoSampler(gap=0)(index, 50, np.random.default_rng(0))
    assert (only[:, 0] == only[:, 1]).all() and (only[:, 2] == only[:, 1]).all()
    assert not StereoSampler(1).usable(ClipIndex(starts, lengths, np.zeros(lengths.sum(), dtype=np.float32),
                                                 groups=np.arange(5)))


def test_the_stereo_pose_moves_the_right_camera_by_the_baseline_and_a_flip_swaps_the_sides():
    """A left image whose right view is the scene shifted by the disparity f b / depth: warped with the stereo
    pose it is the left image again (and the flipped pair with the flipped pose)."""
    from tests.test_methods import build

    _, model, augment, _, _ = build("monodepth", sources="stereo", stereo_baseline=0.1)
    assert model.pose is None  # stereo alone has no pose network, and trains the depth network alone
    out = model(augment(torch.randint(0, 256, (4, 4, 3, 16, 16), dtype=torch.uint8)), 0)
    out.loss.backward()
    assert torch.isfinite(out.loss) and "translation" not in out.logs
    assert all(p.grad is not None for p in model.decoder.parameters())
    k, inv_k = camera(model.cfg.fov_degrees)
    depth = 0.1 * k[0, 0].item() / 2  # a disparity of 2 px
    left = torch.arange(W, dtype=torch.float32).view(1, 1, 1, W).expand(2, 3, H, W) / W
    right = torch.cat([left[..., 2:], left[..., -1:].expand(2, 3, H, 2)], dim=-1)  # x_right = x_left - 2
    flip = torch.tensor([False, False])
    warped = geometry.warp(right, torch.full((2, 1, H, W), depth), model.stereo_pose(flip), k, inv_k)
    torch.testing.assert_close(warped[..., 2:], left[..., 2:], atol=1e-4, rtol=0)
    flipped = geometry.warp(right.flip(-1), torch.full((2, 1, H, W), depth), model.stereo_pose(~flip), k, inv_k)
    torch.testing.assert_close(flipped[..., :-2], left.flip(-1)[..., :-2], atol=1e-4, rtol=0)


def test_stereo_trains_on_sequence_view_folders_and_is_refused_without_pairs(videos, tmp_path):
    from sslcli.commands import pretrain
    from sslcli.errors import UsageError
    from sslcli.methods import CONFIGS
    from sslcli.spec import PretrainSpec, resolve

    for view in ("left.mp4", "right.mp4"):  # one real clip as both views: a pair the run can read
        (tmp_path / "data" / "street").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "street" / view).symlink_to(videos / "carphone_pristine.mp4")
    tiny = [f"method.{k}={list(v) if isinstance(v, tuple) else v}" for k, v in CONFIGS["monodepth"].tiny.items()]

    def spec(data, out: str):
        return resolve(PretrainSpec, options={"method.name": "monodepth", "data.path": str(data),
                                              "out": str(tmp_path / out)},
                       sets=["data.image_size=16", "data.fps=3", "encoder.name=resnet10t", "train.batch_size=8",
                             "train.epochs=1", "data.num_workers=0", "monitor.knn_every=0", "monitor.report=false",
                             "method.sources=mono+stereo", *tiny])

    summary = pretrain.run(spec(tmp_path / "data", "ms"))
    assert summary["steps"] == 3 and math.isfinite(summary["final_loss"])  # 2 x 12 frames at 3 fps, batches of 8
    for name in ("bikes.mp4", "carphone_pristine.mp4"):  # one view per folder: no pair
        (tmp_path / "single" / name[:4]).mkdir(parents=True)
        (tmp_path / "single" / name[:4] / name).symlink_to(videos / name)
    with pytest.raises(UsageError, match="two synchronised views"):
        pretrain.run(spec(tmp_path / "single", "no-pairs"))
