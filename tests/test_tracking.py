"""Tracking (Wang and Gupta): the motion box and the correlation tracker on synthetic moving patches, the window
sampler, the ranking loss with hard negatives, windows without motion, a resumed run and a run on the real clips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sslcli.methods.tracking.tracker import correlation_map, crop, follow, track
from tests.test_cli import sslcli_run
from tests.test_video import clip_index

SIDE = 12


def moving_square(speeds: list[tuple[int, int]], frames: int = 6, size: int = 48,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey frames [B, frames, size, size]: a textured SIDE px square moving by speeds[b] (dy, dx) pixels a frame
    over a faint textured background that stays still, and where its corner truly is [B, frames, 2]."""
    g = torch.Generator().manual_seed(seed)
    background = torch.rand(size, size, generator=g) * 0.2
    texture = torch.rand(SIDE, SIDE, generator=g)
    out = background.expand(len(speeds), frames, size, size).clone()
    truth = torch.zeros(len(speeds), frames, 2, dtype=torch.long)
    for b, (dy, dx) in enumerate(speeds):
        y, x = 6 + b, 5 + 2 * b
        for t in range(frames):
            corner = (y + dy * t, x + dx * t)
            out[b, t, corner[0]:corner[0] + SIDE, corner[1]:corner[1] + SIDE] = texture
            truth[b, t] = torch.tensor(corner)
    return out, truth


def test_the_tracker_follows_a_moving_patch_to_within_a_pixel():
    speeds = [(2, 3), (3, 0), (-1, 4), (1, 1)]
    frames, truth = moving_square(speeds)
    # From the square's first place, the correlation tracker finds it in every frame to the last.
    last, lowest = follow(frames, truth[:, 0], SIDE, max_shift=5)
    assert (last - truth[:, -1]).abs().max() <= 1 and (lowest > 0.9).all()
    # The whole method: the motion box lies where the square's first two places differ (within one frame's motion
    # of its first place), and the track ends within a frame's motion and a pixel of the square's last place.
    tracks = track(frames, SIDE, max_shift=5, min_motion=0.1, min_correlation=0.5)
    assert tracks.found.all() and (tracks.correlation > 0.9).all()
    reach = torch.tensor(speeds).abs()
    assert ((tracks.first - truth[:, 0]).abs() <= reach).all()
    assert ((tracks.last - truth[:, -1]).abs() <= reach + 1).all()
    assert ((tracks.last - tracks.first - (truth[:, -1] - truth[:, 0])).abs() <= 1).all()  # the path travelled
    # Negative control: a search window narrower than the motion (3 px a frame, +-1 searched) loses the track.
    narrow = track(frames, SIDE, max_shift=1, min_motion=0.1, min_correlation=0.5)
    assert not narrow.found[0] and not narrow.found[1]


def test_a_window_without_motion_gives_no_track_and_its_patch_stays_at_the_centre():
    still, _ = moving_square([(0, 0), (0, 0)])
    tracks = track(still, SIDE, max_shift=5, min_motion=0.1, min_correlation=0.5)
    centre = torch.tensor([(48 - SIDE) // 2] * 2)
    assert not tracks.found.any() and (tracks.motion == 0).all()
    assert (tracks.first == centre).all() and (tracks.last == centre).all()
    # Flat frames (no texture at all) neither divide by zero nor track.
    flat = track(torch.full((2, 4, 48, 48), 0.5), SIDE, 5, 0.1, 0.5)
    assert not flat.found.any() and torch.isfinite(flat.motion).all() and torch.isfinite(flat.correlation).all()
    # One frame moving among still ones: only that window is a track.
    frames = torch.cat([still, moving_square([(2, 2)])[0]])
    assert track(frames, SIDE, 5, 0.1, 0.5).found.tolist() == [False, False, True]


def test_the_correlation_map_is_the_normalised_cross_correlation_of_every_box():
    g = torch.Generator().manual_seed(1)
    frame, template = torch.rand(2, 9, 10, generator=g), torch.rand(2, 4, 4, generator=g)
    scores = correlation_map(frame, template)
    assert scores.shape == (2, 6, 7)
    for b in range(2):
        for y in range(6):
            for x in range(7):
                box = frame[b, y:y + 4, x:x + 4].flatten()
                expected = torch.corrcoef(torch.stack([box, template[b].flatten()]))[0, 1]
                torch.testing.assert_close(scores[b, y, x], expected, atol=1e-4, rtol=1e-4)
    # The template cut from the frame matches itself exactly, at its own place.
    own = correlation_map(frame, crop(frame, torch.tensor([[3, 2], [1, 5]]), 4))
    assert own[0, 3, 2] == pytest.approx(1.0, abs=1e-4) and own[1, 1, 5] == pytest.approx(1.0, abs=1e-4)
    assert own[0].flatten().argmax() == 3 * 7 + 2


def test_windows_are_frames_in_a_row_of_one_clip_and_follow_the_motion():
    from sslcli.methods.temporal import WindowSampler

    still, moving = np.zeros(40, dtype=np.float32), np.full(40, 20.0, dtype=np.float32)
    index = clip_index([40, 40, 5], [still, moving, np.full(5, 20.0, dtype=np.float32)])
    rows = WindowSampler(6)(index, 300, np.random.default_rng(0))
    assert rows.shape == (300, 6) and (np.diff(rows, axis=1) == 1).all()
    clip = index.clip_of[rows]
    assert (clip == clip[:, :1]).all() and not (clip == 2).any()  # the 5-frame clip holds no window of 6
    assert (clip[:, 0] == 1).mean() > 0.99  # weighted by motion: windows come from the moving clip
    uniform = WindowSampler(6, motion_weighted=False)(index, 300, np.random.default_rng(0))
    assert 0.35 < (index.clip_of[uniform[:, 0]] == 1).mean() < 0.65
    assert np.array_equal(rows, WindowSampler(6)(index, 300, np.random.default_rng(0)))  # seeded: a resume replays
    assert not WindowSampler(6).usable(clip_index([5, 3]))


def test_the_ranking_loss_keeps_the_hardest_negatives_of_the_batch():
    from sslcli.losses import ranking_hard_negatives

    g = torch.Generator().manual_seed(0)
    a, p = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    candidates = torch.cat([a, p])
    weights = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])
    loss = ranking_hard_negatives(a, p, candidates, weights, margin=0.5, hard=3)

    def distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 1 - torch.nn.functional.cosine_similarity(x, y, dim=0)

    expected = []
    for i in range(5):
        others = [candidates[j] for j in range(10) if j % 5 != i]  # never its own anchor or positive
        losses = sorted((float((distance(a[i], p[i]) - distance(a[i], n) + 0.5).clamp_min(0)) for n in others),
                        reverse=True)
        expected.append(float(weights[i]) * sum(losses[:3]) / 3)
    assert loss.item() == pytest.approx(sum(expected) / 5, rel=1e-5)
    # A process's half of the batch (offset) sums its pairs over its own size: the halves average to the whole.
    halves = [ranking_hard_negatives(a[s], p[s], candidates, weights[s], 0.5, 3, offset=s.start)
              for s in (slice(0, 3), slice(3, 5))]
    assert (3 * halves[0] + 2 * halves[1]).item() / 5 == pytest.approx(loss.item(), rel=1e-5)
    assert ranking_hard_negatives(a[:1], p[:1], candidates[[0, 5]], weights[:1], 0.5, 3).item() == 0.0


def tiny_tracking(**settings):
    from sslcli.encoders import build_encoder
    from sslcli.methods import method_class
    from sslcli.methods.base import Budget
    from tests.test_methods import tiny_spec

    torch.manual_seed(0)
    spec = tiny_spec("tracking", **settings)
    encoder, info = build_encoder(spec.encoder.name, 16, spec.encoder.small_stem, spec.encoder.kwargs)
    return spec, method_class("tracking")(spec.method, encoder, info.feature_dim, Budget(8, 2)), info


def test_frames_reach_the_tracker_whole_and_a_batch_without_motion_trains_nothing():
    from sslcli.augment import Augmenter

    spec, model, info = tiny_tracking(min_correlation=0.5)
    g = torch.Generator().manual_seed(0)
    still = torch.randint(0, 256, (4, 1, 3, 16, 16), dtype=torch.uint8, generator=g).expand(4, 8, 3, 16, 16)
    views = Augmenter(model.views(spec.augment), info.mean, info.std, torch.Generator().manual_seed(0))(still)
    # No crop, flip or colour change drawn per frame: every frame of a still window stays the same frame.
    assert views[0].shape == (4, 8, 3, 16, 16) and torch.equal(views[0], views[0][:, :1].expand_as(views[0]))
    out = model(views, 0)
    out.loss.backward()
    assert out.logs["tracked"] == 0 and out.loss.item() == 0.0
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() and not g.any() for g in grads)
    # The same model on windows that move (an 8 px square shaken back and forth by a pixel over a still
    # background, so that the patch never leaves the 16 px frame) does train.
    moving = still.clone()
    square = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=g)
    for t in range(8):
        moving[:, t, :, 4 + t % 2:12 + t % 2, 4 + t % 2:12 + t % 2] = square
    model.zero_grad()
    out = model(Augmenter(model.views(spec.augment), info.mean, info.std, torch.Generator().manual_seed(0))(moving), 0)
    out.loss.backward()
    assert out.logs["tracked"] == 1 and out.loss.item() > 0
    assert any(p.grad.abs().sum() > 0 for p in model.encoder.parameters() if p.grad is not None)


def test_a_tracking_run_resumed_mid_epoch_equals_the_uninterrupted_one(videos_small: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch):
    from safetensors.torch import load_file

    from sslcli import checkpoint
    from sslcli.commands import pretrain
    from sslcli.errors import Interrupted
    from sslcli.spec import PretrainSpec, resolve
    from tests.test_resume import stop_after

    def spec_of(out: Path) -> PretrainSpec:
        return resolve(PretrainSpec, options={"method.name": "tracking", "data.path": str(videos_small), "out": str(out)},
                       sets=["data.image_size=32", "data.fps=3", "encoder.name=resnet10t", "train.batch_size=8",
                             "train.epochs=2", "data.num_workers=0", "monitor.knn_every=0", "monitor.report=false",
                             "train.checkpoint_every=1", "train.log_every=1", "train.precision=fp32",
                             "method.track_frames=4", "method.head_hidden_dim=32", "method.embedding_dim=16"])

    whole = pretrain.run(spec_of(tmp_path / "whole"))
    assert whole["steps"] == 10  # 30 + 12 frames at 3 fps: 5 steps of 8 windows an epoch
    logged = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert any(m.get("tracked", 0) > 0 for m in logged), "the real clips give tracks"
    with monkeypatch.context() as m:
        stop_after(m, 3)
        with pytest.raises(Interrupted):
            pretrain.run(spec_of(tmp_path / "split"))
    resumed = pretrain.run(spec_of(tmp_path / "split"), resume="auto")
    assert resumed["resumed_from_step"] == 3
    a, b = (load_file(str(checkpoint.complete_states(tmp_path / k / "checkpoints")[-1])) for k in ("whole", "split"))
    assert a.keys() == b.keys() and not [k for k in a if not torch.equal(a[k], b[k])]


@pytest.mark.slow
def test_pretrain_tracking_on_the_real_clips_end_to_end(videos: Path, tmp_path: Path):
    """`sslcli pretrain VIDEOS/ --method tracking`: the three real clips at 4 fps, 32 px frames, one epoch."""
    proc = sslcli_run("pretrain", str(videos), "--method", "tracking", "--epochs", "1", "--batch-size", "16",
                      "--out", str(tmp_path / "run"), "--set", "data.image_size=32", "--set", "data.fps=4",
                      "--set", "encoder.name=resnet10t", "--set", "data.num_workers=0", "--set", "monitor.report=false",
                      "--set", "method.track_frames=4", "--set", "train.log_every=1", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["images"] == 77 and summary["steps"] == 4 and np.isfinite(summary["final_loss"])
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= m["tracked"] <= 1 for m in logged if "tracked" in m) and any(m.get("tracked") for m in logged)
    assert (tmp_path / "run" / "encoder.safetensors").is_file()
