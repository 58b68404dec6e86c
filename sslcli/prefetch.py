"""Batches onto the device, each prepared (Step.prepare: pretraining's augmentation) before its step; with
train.prefetch on CUDA, the next batch is copied and prepared on a side stream while this one trains."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from sslcli.guard import SyncWatch


def device_batches(batches: Iterable[Any], device: torch.device, memory_format: torch.memory_format,
                   prepare: Callable[[Any], Any] | None, watch: SyncWatch, ahead: bool = False) -> Iterator[Any]:
    """(batch on the device, its number of images), the batch prepared when there is a `prepare`.

    With `ahead` on CUDA (train.prefetch) the next batch is pinned, copied and prepared on a side stream
    before this one trains, so its copy and augmentation overlap this step's kernels; an event orders each
    batch before the step that uses it, and record_stream keeps its memory from being reused before that step
    is done."""
    def ready(batch: Any) -> Any:
        with watch.checking():
            batch = _to_device(batch, device, memory_format)
            return batch if prepare is None else prepare(batch)

    if device.type != "cuda" or not ahead:
        for batch in batches:
            yield ready(batch), batch_size(batch)
        return
    side, main = torch.cuda.Stream(device), torch.cuda.current_stream(device)
    side.wait_stream(main)  # whatever the main stream made so far (the augmentation's constants) is ready

    def on_side_stream(batch: Any) -> tuple[Any, int, torch.cuda.Event]:
        pinned = _pinned(batch)
        with torch.cuda.stream(side):
            out = ready(pinned)
            done = torch.cuda.Event()
            done.record(side)
        return out, batch_size(batch), done

    iterator = iter(batches)
    following = next(iterator, None)
    upcoming = None if following is None else on_side_stream(following)
    while upcoming is not None:
        current, size, done = upcoming
        following = next(iterator, None)
        upcoming = None if following is None else on_side_stream(following)
        main.wait_event(done)
        _record_stream(current, main)
        yield current, size


def batch_size(batch: Any) -> int:
    """The images in a batch: a tensor of images, or a tuple whose first item is."""
    return (batch[0] if isinstance(batch, tuple) else batch).shape[0]


def _record_stream(batch: Any, stream: torch.cuda.Stream) -> None:
    """Tell the caching allocator that `stream` uses these side-stream tensors."""
    if torch.is_tensor(batch):
        batch.record_stream(stream)
    elif isinstance(batch, (tuple, list)):
        for item in batch:
            _record_stream(item, stream)


def _pinned(batch: Any) -> Any:
    if batch is None:  # a part of a (images, labels, indices) batch that this run does not use
        return None
    if isinstance(batch, tuple):
        return tuple(_pinned(t) for t in batch)
    return batch if batch.is_pinned() else batch.pin_memory()


def _to_device(batch: Any, device: torch.device, memory_format: torch.memory_format) -> Any:
    if batch is None:
        return None
    if isinstance(batch, tuple):
        return tuple(_to_device(t, device, memory_format) for t in batch)
    batch = batch.to(device, non_blocking=True)
    return batch.contiguous(memory_format=memory_format) if batch.ndim == 4 else batch
