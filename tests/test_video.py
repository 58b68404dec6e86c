"""Video input: clips found and decoded at data.fps into the frame cache, bad clips under --on-bad-image, the
frame-tuple samplers of the temporal methods (TCN, Shuffle and Learn), their losses, and runs on the real clips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslcli import data, video, video_data
from sslcli.errors import UsageError
from sslcli.methods.temporal import MultiViewSampler, OrderSampler, TimeContrastiveSampler
from tests.test_cli import sslcli_run


def frame_folder(root: Path, name: str, sizes: list[tuple[int, int]]) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(len(sizes))
    for i, (w, h) in enumerate(sizes, start=1):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")
    return folder


def test_a_real_clip_is_sampled_at_the_requested_rate_at_the_storage_size(videos: Path):
    every = video.decode_clip(video.Clip(videos / "carphone_pristine.mp4"), 24, None)
    assert every.shape == (120, 3, 24, 24) and every.dtype == np.uint8  # every frame at its own 29.97 fps
    five = video.decode_clip(video.Clip(videos / "carphone_pristine.mp4"), 24, 5.0)
    assert len(five) == 20  # the last frame is at 119 / 29.97 = 3.97 s: ticks 0, 0.2, ..., 3.8
    # Kept frames are frames of the clip, not blends: each 5 fps frame is one of the full-rate frames.
    assert all(any(np.array_equal(f, g) for g in every) for f in five[:4])
    assert five.std() > 10  # real pictures, not a constant


def test_clips_are_found_as_video_files_and_frame_folders_with_classes(tmp_path: Path, videos: Path):
    (tmp_path / "walk").mkdir()
    (tmp_path / "walk" / "a.mp4").symlink_to(videos / "bikes.mp4")
    frame_folder(tmp_path / "run", "clip1", [(20, 16)] * 3)
    clips = video.find_clips(tmp_path)
    assert [c.path.relative_to(tmp_path).as_posix() for c in clips.clips] == ["run/clip1", "walk/a.mp4"]
    assert clips.classes == ["run", "walk"] and clips.labels == [0, 1]
    assert len(clips.clips[0].frames) == 3
    assert video.holds_videos(tmp_path) and not video.holds_videos(tmp_path / "run")
    with pytest.raises(UsageError, match="no clips found"):
        video.find_clips(tmp_path / "run" / "clip1")


def bad_inputs(root: Path, videos: Path) -> dict[str, str]:
    """A folder of one good clip and each kind of bad one: name -> the reason expected."""
    (root / "good.mp4").symlink_to(videos / "carphone_pristine.mp4")
    (root / "truncated.mp4").write_bytes((videos / "bikes.mp4").read_bytes()[:200_000])
    (root / "notes.mp4").write_text("this is not a video\n")
    frame_folder(root, "empty", [])
    frame_folder(root, "mixed", [(20, 16), (20, 16), (16, 20)])
    return {"truncated.mp4": "truncated or corrupt video", "notes.mp4": "not a video", "empty": "zero frames",
            "mixed": "frames of different sizes"}


def test_each_bad_clip_is_one_line_and_skipped_and_the_cache_reports_it_again(tmp_path: Path, videos: Path,
                                                                              capsys: pytest.CaptureFixture):
    root = tmp_path / "clips"
    root.mkdir()
    expected = bad_inputs(root, videos)
    clips = video.find_clips(root).clips
    policy = data.BadImagePolicy("skip")
    frames = video_data.open_or_build(clips, 16, 10.0, tmp_path / "cache", policy, num_workers=0)
    lines = [line for line in capsys.readouterr().err.splitlines() if "skipping unreadable video" in line]
    assert len(lines) == 4 and policy.count == 4
    for name, reason in expected.items():
        assert sum(name in line and reason in line for line in lines) == 1, (name, lines)
    good = [c.path.name for c in clips].index("good.mp4")
    assert frames.index.lengths[good] == 40 and frames.index.lengths.sum() == 40 == frames.count  # 0 .. 3.9 s at 10 fps
    # Reopened from the cache: nothing decoded again, the same frames, the bad clips reported again.
    again_policy = data.BadImagePolicy("skip")
    again = video_data.open_or_build(clips, 16, 10.0, tmp_path / "cache", again_policy, num_workers=0)
    assert "reusing" in capsys.readouterr().err and again_policy.count == 4
    assert np.array_equal(np.asarray(again.images.array), np.asarray(frames.images.array))
    with pytest.raises(UsageError, match="cannot read video .*(truncated|notes|empty|mixed)"):
        video_data.open_or_build(clips, 16, 10.0, tmp_path / "cache", data.BadImagePolicy("fail"), num_workers=0)


def test_on_bad_image_fail_stops_a_video_run_with_one_line_and_exit_2(tmp_path: Path, videos: Path):
    root = tmp_path / "clips"
    root.mkdir()
    (root / "good.mp4").symlink_to(videos / "carphone_pristine.mp4")
    (root / "notes.mp4").write_text("this is not a video\n")
    proc = sslcli_run("pretrain", str(root), "--method", "tcn", "--epochs", "1", "--on-bad-image", "fail",
                      "--out", str(tmp_path / "run"), "--set", "data.image_size=16", "--set", "data.num_workers=0")
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "notes.mp4" in errors[0] and "not a video" in errors[0]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "encoder.safetensors").exists()


def clip_index(lengths: list[int], motion: list[np.ndarray] | None = None,
               groups: list[int] | None = None) -> video_data.ClipIndex:
    lengths_ = np.asarray(lengths, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths_)[:-1]]).astype(np.int64)
    moving = np.concatenate(motion) if motion else np.ones(int(lengths_.sum()), dtype=np.float32)
    return video_data.ClipIndex(starts, lengths_, moving, None if groups is None else np.asarray(groups))


def test_tcn_tuples_hold_a_near_positive_and_a_far_negative_of_the_anchors_clip():
    index = clip_index([30, 5, 12])  # the 5-frame clip is too short for a negative beyond 4 frames
    rows = TimeContrastiveSampler(pos_window=2, neg_margin=4)(index, 500, np.random.default_rng(0))
    clip = index.clip_of[rows]
    assert (clip == clip[:, :1]).all() and not (clip == 1).any()
    a, p, n = rows.T
    assert ((np.abs(p - a) <= 2) & (p != a)).all() and (np.abs(n - a) > 4).all()
    assert {1, 2} <= set(np.abs(p - a)) and (n < a).any() and (n > a).any()  # every offset and side is drawn
    # Seeded: the same generator state gives the same batch (what makes a resume exact).
    again = TimeContrastiveSampler(2, 4)(index, 500, np.random.default_rng(0))
    assert np.array_equal(rows, again)


def test_order_tuples_are_ordered_inside_one_clip_and_follow_the_motion():
    still, moving = np.zeros(40, dtype=np.float32), np.full(40, 20.0, dtype=np.float32)
    index = clip_index([40, 40], [still, moving])
    rows = OrderSampler(max_span=8, min_gap=2)(index, 400, np.random.default_rng(0))
    a, b, c, d, e = rows.T
    assert ((a <= b - 2) & (b < c) & (c < d) & (d - b <= 8) & (e >= d + 2)).all()
    clip = index.clip_of[rows]
    assert (clip == clip[:, :1]).all()
    assert (clip[:, 0] == 1).mean() > 0.99  # weighted by motion: tuples come from the moving clip
    uniform = OrderSampler(8, 2, motion_weighted=False)(index, 400, np.random.default_rng(0))
    assert 0.35 < (index.clip_of[uniform[:, 0]] == 1).mean() < 0.65


def test_tuple_batches_replay_by_seed_epoch_and_batch_and_split_over_ranks(tmp_path: Path, videos_small: Path):
    clips = video.find_clips(videos_small).clips
    frames = video_data.open_or_build(clips, 16, 5.0, tmp_path, data.BadImagePolicy(), num_workers=0)
    sampler = TimeContrastiveSampler(2, 8)
    whole = list(video_data.tuple_batches(frames, sampler, 8, seed=3, epoch=1, steps=4))
    assert len(whole) == 4 and whole[0][0].shape == (8, 3, 3, 16, 16) and whole[0][0].dtype == torch.uint8
    tail = list(video_data.tuple_batches(frames, sampler, 8, seed=3, epoch=1, steps=4, skip=2))
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(whole[2:], tail, strict=True))
    assert not torch.equal(whole[0][1], next(video_data.tuple_batches(frames, sampler, 8, 3, 2, 1))[1])
    halves = [next(video_data.tuple_batches(frames, sampler, 8, 3, 1, 4, shard=(r, 2))) for r in (0, 1)]
    assert torch.equal(torch.cat([h[0] for h in halves]), whole[0][0])
    x, rows = whole[0]
    assert torch.equal(x[2, 1], torch.from_numpy(np.array(frames.images.array[int(rows[2, 1])])))


def test_triplet_margin_and_n_pairs_match_their_equations():
    from sslcli.losses import n_pairs_info_nce, triplet_margin

    g = torch.Generator().manual_seed(0)
    a, p, n = (torch.nn.functional.normalize(torch.randn(6, 4, generator=g), dim=1) for _ in range(3))
    reference = torch.clamp((a - p).pow(2).sum(1) - (a - n).pow(2).sum(1) + 0.2, min=0).mean()
    torch.testing.assert_close(triplet_margin(a, p, n, 0.2), reference)
    logits = torch.cat([a @ p.T, (a * n).sum(1, keepdim=True)], dim=1) / 0.1
    expected = -torch.log_softmax(logits, dim=1).diagonal().mean()
    torch.testing.assert_close(n_pairs_info_nce(a, p, 0.1, n), expected)
    torch.testing.assert_close(n_pairs_info_nce(a[3:], p, 0.1, n[3:], offset=3),
                               -torch.log_softmax(logits[3:], dim=1)[:, 3:6].diagonal().mean())


def test_shuffle_labels_a_quarter_in_order_and_alternates_the_swapped_frame():
    from sslcli.methods.shuffle.model import tuple_kinds

    kinds = tuple_kinds(16, 0.25, torch.device("cpu"))
    assert (kinds == 0).sum() == 4 and (kinds == 1).sum() > 0 and (kinds == 2).sum() > 0
    # Each rank's half of a global batch gets the labels the global batch gives those positions.
    assert torch.equal(torch.cat([tuple_kinds(8, 0.25, torch.device("cpu"))] * 2), kinds)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["tcn", "shuffle", "monodepth", "simclr"])
def test_pretrain_on_the_real_clips_end_to_end(method: str, videos: Path, tmp_path: Path):
    """`sslcli pretrain VIDEOS/ --method M`: the three real clips at 4 fps into the frame cache, one epoch."""
    proc = sslcli_run("pretrain", str(videos), "--method", method, "--epochs", "1", "--batch-size", "16",
                      "--out", str(tmp_path / "run"), "--set", "data.image_size=32", "--set", "data.fps=4",
                      "--set", "encoder.name=resnet10t", "--set", "data.num_workers=0", "--set", "monitor.report=false",
                      "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    # Frames up to 5.24 s, 9.96 s and 3.97 s at 4 fps: 21 + 40 + 16 frames, 4 steps of 16.
    assert summary["images"] == 77 and summary["steps"] == 4 and np.isfinite(summary["final_loss"])
    assert (tmp_path / "run" / "encoder.safetensors").is_file() and "77 frames from 3 clips" in proc.stderr


def test_a_temporal_run_resumed_mid_epoch_equals_the_uninterrupted_one(videos_small: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch):
    from safetensors.torch import load_file

    from sslcli import checkpoint
    from sslcli.commands import pretrain
    from sslcli.errors import Interrupted
    from sslcli.spec import PretrainSpec, resolve
    from tests.test_resume import stop_after

    def spec_of(out: Path, method: str) -> PretrainSpec:
        return resolve(PretrainSpec, options={"method.name": method, "data.path": str(videos_small), "out": str(out)},
                       sets=["data.image_size=16", "data.fps=3", "encoder.name=resnet10t", "train.batch_size=8",
                             "train.epochs=2", "data.num_workers=0", "monitor.knn_every=0", "monitor.report=false",
                             "train.checkpoint_every=1", "train.log_every=1", "train.precision=fp32", *(f"method.{k}={v}" for k, v in
                                                                                  settings.get(method, {}).items())])

    # Monodepth draws its flips, colour jitter and auto-mask noise from the checkpointed RNG: a test-sized one.
    settings = {"tcn": {"neg_margin": 4}, "monodepth": {"pose_encoder": "resnet10t", "pose_width": 8,
                                                        "decoder_channels": [4, 4, 8, 8, 8]}}
    for method in ("tcn", "shuffle", "monodepth"):
        whole = pretrain.run(spec_of(tmp_path / f"{method}-whole", method))
        assert whole["steps"] == 10  # 30 + 12 frames at 3 fps: 5 steps of 8 a epoch
        with monkeypatch.context() as m:
            stop_after(m, 3)
            with pytest.raises(Interrupted):
                pretrain.run(spec_of(tmp_path / f"{method}-split", method))
        resumed = pretrain.run(spec_of(tmp_path / f"{method}-split", method), resume="auto")
        assert resumed["resumed_from_step"] == 3
        a, b = (load_file(str(checkpoint.complete_states(tmp_path / f"{method}-{k}" / "checkpoints")[-1]))
                for k in ("whole", "split"))
        assert a.keys() == b.keys() and not [k for k in a if not torch.equal(a[k], b[k])], method


def test_a_video_folder_gets_its_image_size_from_the_clips(videos_small: Path):
    assert video.auto_frame_size(videos_small) == (224, 208.0, 2)  # shorter sides 272 and 144: median 208


def test_frame_tuples_are_augmented_frame_by_frame_and_keep_their_shape():
    from sslcli.augment import Augmenter
    from sslcli.views import ViewConfig

    x = torch.randint(0, 256, (4, 3, 3, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    views = [ViewConfig(size=16)]
    tuples = Augmenter(views, (0.5,) * 3, (0.25,) * 3, torch.Generator().manual_seed(1))(x)
    flat = Augmenter(views, (0.5,) * 3, (0.25,) * 3, torch.Generator().manual_seed(1))(x.flatten(0, 1))
    assert tuples[0].shape == (4, 3, 3, 16, 16)
    torch.testing.assert_close(tuples[0].flatten(0, 1), flat[0])


def test_multi_view_tuples_take_the_same_moment_from_another_view_and_another_moment_from_the_anchors():
    # Sequence 0: three views of 20, 22 and 20 frames; sequence 1: one view (no positive possible); sequence 2:
    # two views of 12.
    index = clip_index([20, 22, 20, 30, 12, 12], groups=[0, 0, 0, 1, 2, 2])
    rows = MultiViewSampler(neg_margin=3)(index, 600, np.random.default_rng(0))
    clip = index.clip_of[rows]
    t = rows - index.starts[clip]
    a, p, n = clip.T
    assert (index.groups[a] == index.groups[p]).all() and (a != p).all() and (n == a).all()
    assert not (a == 3).any()  # the single-view sequence gives nothing
    assert (t[:, 0] == t[:, 1]).all() and (np.abs(t[:, 2] - t[:, 0]) > 3).all()
    assert (t[index.groups[a] == 0] < 20).all()  # within the shortest view of the sequence
    assert {0, 1, 2, 4, 5} == set(a)
    assert not MultiViewSampler(3).usable(clip_index([20, 30], groups=[0, 1]))


def test_multi_view_tcn_trains_on_sequence_view_folders(videos: Path, tmp_path: Path):
    """Two synchronised views of one real clip (the same file twice) and a frame-folder sequence."""
    for view in ("left.mp4", "right.mp4"):
        (tmp_path / "data" / "street").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "street" / view).symlink_to(videos / "carphone_pristine.mp4")
    for view in ("top", "side"):
        frame_folder(tmp_path / "data" / "desk", view, [(20, 16)] * 12)
    from sslcli.commands import pretrain
    from sslcli.spec import PretrainSpec, resolve

    spec = resolve(PretrainSpec, options={"method.name": "tcn", "data.path": str(tmp_path / "data"),
                                          "out": str(tmp_path / "run")},
                   sets=["method.multi_view=true", "method.neg_margin=4", "method.pos_window=1", "data.fps=5",
                         "data.image_size=16", "encoder.name=resnet10t", "train.batch_size=16", "train.epochs=1",
                         "data.num_workers=0", "monitor.knn_every=0", "monitor.report=false", "method.head_hidden_dim=32"])
    summary = pretrain.run(spec)
    assert summary["images"] == 64 and summary["steps"] == 4  # 2 x 20 frames at 5 fps + 2 x 12 frames
    # A folder of clips with one view each has no positive for multi-view TCN: refused with the reason.
    single = tmp_path / "single"
    single.mkdir()
    (single / "a.mp4").symlink_to(videos / "carphone_pristine.mp4")
    spec = resolve(PretrainSpec, options={"method.name": "tcn", "data.path": str(single), "out": str(tmp_path / "r2")},
                   sets=["method.multi_view=true", "data.fps=5", "data.image_size=16", "encoder.name=resnet10t",
                         "train.batch_size=4", "data.num_workers=0"])
    with pytest.raises(UsageError, match="at least two views"):
        pretrain.run(spec)


def labeled_videos(root: Path, videos: Path) -> Path:
    """train/ and val/ with two classes of clips each: real videos and frame folders."""
    for split in ("train", "val"):
        (root / split / "city").mkdir(parents=True)
        (root / split / "city" / "bikes.mp4").symlink_to(videos / "bikes.mp4")
        (root / split / "city" / "phone.mp4").symlink_to(videos / "carphone_pristine.mp4")
        frame_folder(root / split / "noise", "clip1", [(40, 40)] * 3)
        frame_folder(root / split / "noise", "clip2", [(40, 40)] * 4)
    return root


def test_embed_and_probe_take_video_folders_a_clip_being_the_mean_of_its_frames(resnet10t_encoder: Path,
                                                                              videos: Path, tmp_path: Path):
    from safetensors.torch import load_file

    from sslcli import checkpoint
    from sslcli.commands import embed, probe
    from sslcli.features import extract_features
    from sslcli.spec import EmbedSpec, ProbeSpec

    root = labeled_videos(tmp_path / "data", videos)
    out = tmp_path / "emb.safetensors"
    result = embed.run(EmbedSpec(encoder=resnet10t_encoder, data=root / "train", out=out, num_workers=0))
    assert result["count"] == 4 and result["labeled"]
    rows = (tmp_path / "emb.csv").read_text().splitlines()
    assert [r.split(",")[1].split("/")[-1] for r in rows[1:]] == ["bikes.mp4", "phone.mp4", "clip1", "clip2"]
    embeddings = load_file(str(out))["embeddings"]
    # The frame folder's row is the mean of its three frames' features as images.
    model, info, _ = checkpoint.load_encoder(resnet10t_encoder)
    frames = sorted((root / "train" / "noise" / "clip1").iterdir())
    features, _ = extract_features(model, info, frames, batch_size=8, num_workers=0, device=torch.device("cpu"),
                                   policy=data.BadImagePolicy())
    torch.testing.assert_close(embeddings[2], features.mean(0), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(embeddings[0], embeddings[1])
    scored = probe.run(ProbeSpec(encoder=resnet10t_encoder, data={"path": root, "num_workers": 0},
                                 probe={"knn_k": [1], "baseline": False, "linear_weight_decays": [1e-4]}))
    assert scored["n_train"] == 4 and scored["n_eval"] == 4 and scored["num_classes"] == 2
    assert scored["knn"]["k1"]["top1"] == 1.0  # each eval clip is a train clip: its nearest neighbour


def test_probe_and_embed_read_clips_at_the_rate_the_encoder_was_trained_with():
    from sslcli.clip_features import training_fps

    assert training_fps({"spec": json.dumps({"data": {"fps": 4}})}) == 4.0
    assert training_fps({"spec": json.dumps({"data": {"fps": None}})}) is None
    assert training_fps({}) is None and training_fps({"spec": "not json"}) is None
