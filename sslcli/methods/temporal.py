"""What the temporal methods share: the frame-tuple samplers (which frames of one clip each sample takes, drawn
on the host with the batch's seeded numpy generator, video_data.tuple_batches) and the tuple's frames through the
encoder in one batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor, nn

from sslcli.video_data import ClipIndex


def long_clips(index: ClipIndex, min_frames: int) -> np.ndarray:
    return np.flatnonzero(index.lengths >= min_frames)


@dataclass(frozen=True)
class TimeContrastiveSampler:
    """TCN's single-view tuples (arXiv 1704.06888, section 3.1): an anchor frame, a positive within pos_window
    frames of it (not itself), a negative more than neg_margin frames away, in the same clip. Anchors are
    uniform over the frames of the clips long enough to hold a negative."""

    pos_window: int
    neg_margin: int

    @property
    def min_frames(self) -> int:
        return max(self.neg_margin + 2, 2)

    @property
    def needs(self) -> str:
        return f"a negative more than method.neg_margin={self.neg_margin} frames from its anchor"

    def usable(self, index: ClipIndex) -> bool:
        """Whether the clips give this sampler anything to draw."""
        return bool(len(long_clips(index, self.min_frames)))

    def __call__(self, index: ClipIndex, batch: int, rng: np.random.Generator) -> np.ndarray:
        clips = long_clips(index, self.min_frames)
        lengths = index.lengths[clips]
        out = np.empty((batch, 3), dtype=np.int64)
        for i in range(batch):
            c = rng.choice(len(clips), p=lengths / lengths.sum())
            n, m = int(lengths[c]), self.neg_margin
            while True:  # an anchor in the middle of a short clip may have no negative: draw again
                a = int(rng.integers(n))
                before, after = max(0, a - m), max(0, n - 1 - a - m)
                if before + after:
                    break
            low, high = max(0, a - self.pos_window), min(n - 1, a + self.pos_window)
            p = int(rng.integers(low, high))  # high - low >= 1: n >= 2
            p += p >= a  # skip the anchor itself
            j = int(rng.integers(before + after))
            neg = j if j < before else a + m + 1 + (j - before)
            out[i] = index.starts[clips[c]] + np.array([a, p, neg])
        return out


@dataclass(frozen=True)
class NeighbourSampler:
    """Monodepth2's monocular frames (arXiv 1806.01260, section 3): a target frame t and its neighbours t - gap and
    t + gap of the same clip, as (t - gap, t, t + gap, t): the fourth place is the stereo frame of
    StereoSampler's samples, here the target again (read once, unused). Targets are uniform over the frames of the
    clips that have both neighbours."""

    gap: int

    @property
    def min_frames(self) -> int:
        return 2 * self.gap + 1

    @property
    def needs(self) -> str:
        return f"source frames method.frame_gap={self.gap} frames before and after each target"

    def usable(self, index: ClipIndex) -> bool:
        return bool(len(long_clips(index, self.min_frames)))

    def __call__(self, index: ClipIndex, batch: int, rng: np.random.Generator) -> np.ndarray:
        clips = long_clips(index, self.min_frames)
        rows = np.concatenate([np.arange(index.starts[c] + self.gap, index.starts[c] + index.lengths[c] - self.gap)
                               for c in clips])
        centres = rng.choice(rows, size=batch)
        return np.stack([centres - self.gap, centres, centres + self.gap, centres], axis=1).astype(np.int64)


@dataclass(frozen=True)
class StereoSampler:
    """Monodepth2's stereo samples (its S and MS training): SEQUENCE/VIEW clips, the first two views of a sequence
    in name order a rectified, synchronised stereo pair (left, right: frame t of each the same moment). A sample is
    (t - gap, t, t + gap) of the left view and frame t of the right view; gap 0 (stereo only) gives (t, t, t, right
    t). Targets are uniform over the frames of the pairs' common length that have both neighbours."""

    gap: int

    @property
    def min_frames(self) -> int:
        return 2 * self.gap + 1

    @property
    def needs(self) -> str:
        return ("sequences of two synchronised views (SEQUENCE/left.mp4 and SEQUENCE/right.mp4, or frame folders), "
                f"each with frames method.frame_gap={self.gap} before and after a target")

    def pairs(self, index: ClipIndex) -> list[tuple[int, int, int]]:
        """(left clip, right clip, common length) of each sequence whose first two views are readable and long
        enough."""
        if index.groups is None:
            return []
        found = []
        for group in np.unique(index.groups):
            views = np.flatnonzero(index.groups == group)[:2]
            if len(views) == 2 and (common := int(index.lengths[views].min())) >= self.min_frames:
                found.append((int(views[0]), int(views[1]), common))
        return found

    def usable(self, index: ClipIndex) -> bool:
        return bool(self.pairs(index))

    def __call__(self, index: ClipIndex, batch: int, rng: np.random.Generator) -> np.ndarray:
        pairs = self.pairs(index)
        sizes = np.asarray([n - 2 * self.gap for _, _, n in pairs], dtype=np.float64)
        out = np.empty((batch, 4), dtype=np.int64)
        for i in range(batch):
            left, right, n = pairs[rng.choice(len(pairs), p=sizes / sizes.sum())]
            t = int(rng.integers(self.gap, n - self.gap))
            first = index.starts[left]
            out[i] = (first + t - self.gap, first + t, first + t + self.gap, index.starts[right] + t)
        return out


@dataclass(frozen=True)
class OrderSampler:
    """Shuffle and Learn's five frames a < b < c < d < e of one clip (arXiv 1603.08561, section 3.1): (b, c, d)
    span at most max_span frames, a and e lie outside it, at least min_gap frames from b and d. The tuple's middle
    frame c is drawn with probability proportional to its motion (mean absolute frame difference, the stand-in for
    the paper's optical-flow magnitude), so tuples come from where things move."""

    max_span: int
    min_gap: int
    motion_weighted: bool = True

    @property
    def min_frames(self) -> int:
        return 2 * self.min_gap + 3

    @property
    def needs(self) -> str:
        return f"frames a and e at least method.min_gap={self.min_gap} frames outside the tuple"

    def usable(self, index: ClipIndex) -> bool:
        """Whether the clips give this sampler anything to draw."""
        return bool(len(long_clips(index, self.min_frames)))

    def __call__(self, index: ClipIndex, batch: int, rng: np.random.Generator) -> np.ndarray:
        clips = long_clips(index, self.min_frames)
        rows = np.concatenate([np.arange(index.starts[c] + self.min_gap + 1,
                                         index.starts[c] + index.lengths[c] - self.min_gap - 1) for c in clips])
        weights = index.motion[rows].astype(np.float64) + 1e-3 if self.motion_weighted else np.ones(len(rows))
        centres = rng.choice(rows, size=batch, p=weights / weights.sum())
        clip_of = np.searchsorted(index.starts, centres, side="right") - 1
        out = np.empty((batch, 5), dtype=np.int64)
        half = max(1, self.max_span // 2)
        for i, (row, c) in enumerate(zip(centres, clip_of, strict=True)):
            first, last = index.starts[c], index.starts[c] + index.lengths[c] - 1
            # b before c and d after it, within half the span, leaving room for a and e outside.
            b = int(rng.integers(max(first + self.min_gap, row - half), row))
            d = int(rng.integers(row + 1, min(last - self.min_gap, row + half) + 1))
            a = int(rng.integers(first, b - self.min_gap + 1))
            e = int(rng.integers(d + self.min_gap, last + 1))
            out[i] = (a, b, row, d, e)
        return out


@dataclass(frozen=True)
class WindowSampler:
    """Tracking's windows (arXiv 1505.00687, section 3.1): `frames` frames in a row of one clip. The window's start
    s is drawn with probability proportional to the motion of frame s + 1 (its mean absolute difference from frame
    s, the measure Shuffle and Learn's sampler uses), so windows come from where the first two frames differ: where
    the tracker finds a moving patch."""

    frames: int
    motion_weighted: bool = True

    @property
    def min_frames(self) -> int:
        return self.frames

    @property
    def needs(self) -> str:
        return f"method.track_frames={self.frames} frames in a row"

    def usable(self, index: ClipIndex) -> bool:
        return bool(len(long_clips(index, self.min_frames)))

    def __call__(self, index: ClipIndex, batch: int, rng: np.random.Generator) -> np.ndarray:
        clips = long_clips(index, self.min_frames)
        starts = np.concatenate([np.arange(index.starts[c], index.starts[c] + index.lengths[c] - self.frames + 1)
                                 for c in clips])
        weights = index.motion[starts + 1].astype(np.float64) + 1e-3 if self.motion_weighted else np.ones(len(starts))
        first = rng.choice(starts, size=batch, p=weights / weights.sum())
        return first[:, None] + np.arange(self.frames)


@dataclass(frozen=True)
class MultiViewSampler:
    """Multi-view TCN's tuples (arXiv 1704.06888, section 3.1, figure 1): the views of a sequence are the clips of
    one folder (SEQUENCE/VIEW.mp4 or SEQUENCE/VIEW/000001.jpg), taken as synchronised, frame t of each being the
    same moment (the frames past the shortest view's end are not drawn). Anchor: frame t of one view; positive:
    frame t of another view of the sequence; negative: a frame of the anchor's view more than neg_margin frames
    from t."""

    neg_margin: int

    @property
    def min_frames(self) -> int:
        return self.neg_margin + 2

    @property
    def needs(self) -> str:
        return (f"sequences of at least two views (clips in one folder), each with a negative more than "
                f"method.neg_margin={self.neg_margin} frames from its anchor")

    def sequences(self, index: ClipIndex) -> list[tuple[np.ndarray, int]]:
        """(the sequence's readable views, their common length) for each sequence of two or more views."""
        if index.groups is None:
            return []
        found = []
        for group in np.unique(index.groups):
            views = np.flatnonzero((index.groups == group) & (index.lengths > 0))
            if len(views) >= 2 and (common := int(index.lengths[views].min())) >= self.min_frames:
                found.append((views, common))
        return found

    def usable(self, index: ClipIndex) -> bool:
        return bool(self.sequences(index))

    def __call__(self, index: ClipIndex, batch: int, rng: np.random.Generator) -> np.ndarray:
        sequences = self.sequences(index)
        sizes = np.asarray([len(v) * n for v, n in sequences], dtype=np.float64)
        out = np.empty((batch, 3), dtype=np.int64)
        for i in range(batch):
            views, n = sequences[rng.choice(len(sequences), p=sizes / sizes.sum())]
            first, second = rng.choice(len(views), size=2, replace=False)
            m = self.neg_margin
            while True:
                t = int(rng.integers(n))
                before, after = max(0, t - m), max(0, n - 1 - t - m)
                if before + after:
                    break
            j = int(rng.integers(before + after))
            neg = j if j < before else t + m + 1 + (j - before)
            anchor_view, positive_view = index.starts[views[first]], index.starts[views[second]]
            out[i] = (anchor_view + t, positive_view + t, anchor_view + neg)
        return out


def encode_frames(encoder: nn.Module, frames: Tensor) -> Tensor:
    """[B, K, 3, H, W] frames -> [B, K, D] pooled features, every frame in one encoder batch."""
    b, k = frames.shape[:2]
    return encoder(frames.flatten(0, 1)).unflatten(0, (b, k))
