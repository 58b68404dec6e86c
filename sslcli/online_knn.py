"""Online kNN during pretraining: "is it learning?" answered with labels while the run goes on.

Every `monitor.knn_every` epochs the encoder (the teacher for DINO) embeds a labeled bank and an eval split
with the eval preprocessing (centre crop, no augmentation), and a weighted kNN (as `sslcli probe`)
classifies the eval images. The bank is the labeled train split of DATA (a seeded class-balanced subset
of at most monitor.knn_bank_max images), the eval split is --val DIR or DATA's val/ or test/ (at most
monitor.knn_val_max images). When the training images are unlabeled, the labeled eval split is cut into
two class-stratified halves: one is the bank, the other is classified. The features of the last
evaluation also give the neighbour grid of report/neighbors.png, built here (report.py only draws it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslcli import cache, console, data, distributed
from sslcli.encoders import EncoderInfo
from sslcli.errors import UsageError
from sslcli.evaluate import knn_evaluate, linear_probe, stratified_split
from sslcli.features import extract_features
from sslcli.splits import match_classes

if TYPE_CHECKING:
    from sslcli.spec import PretrainSpec


@dataclass
class KnnSplits:
    bank: data.ImageSet
    bank_labels: Tensor
    val: data.ImageSet
    val_labels: Tensor  # in the bank's class indices
    classes: list[str]
    bank_from_val: bool = False  # unlabeled training images: the bank is the other half of the eval folder


@dataclass
class NeighbourGrid:
    """8 eval images, each with its nearest bank images (cosine on the encoder's features), and how often the
    8 nearest share the query's class over all eval images (precision@8; a picture of 8 rows is too few)."""

    query_paths: list[Path]
    query_labels: list[int]
    neighbour_paths: list[list[Path]]
    neighbour_labels: list[list[int]]
    classes: list[str]
    image_size: int
    same_class: float  # over every eval image, not only the 8 drawn
    queries: int  # eval images it is measured over
    bank_name: str = "train images"
    channels: int = 3  # of the images, as the encoder takes them (report.py shows 1 as grey, N by their first 3)

    @property
    def chance(self) -> float:
        return 1 / max(1, len(self.classes))


@dataclass
class KnnResult:
    top1: float
    bank_features: Tensor
    bank_labels: Tensor
    bank_paths: list[Path]
    val_features: Tensor
    val_labels: Tensor
    val_paths: list[Path]


def _capped(images: data.ImageSet, limit: int, seed: int) -> data.ImageSet:
    """A seeded class-balanced subset of at most about `limit` images (all of them when fewer)."""
    if len(images) <= limit:
        return images
    return data.subset(images, data.label_fraction_subset(images.labels, limit / len(images), seed))


def find_splits(data_path: Path | None, val: Path | None, bank_max: int, val_max: int,
                seed: int) -> KnnSplits | None:
    """The labeled bank and eval split, or None (with the reason on stderr) when there are none."""
    if data_path is None:
        return None
    train_dir, found_val = data.split_folders(data_path)
    val_dir = val or found_val
    if val_dir is None:
        console.info("online kNN off: DATA holds no train/ with val/ or test/ (pass --val DIR to turn it on)")
        return None
    bank = data.find_images(train_dir)
    try:
        evaluation = data.find_images(val_dir, name="--val" if val is not None else "DATA's eval split")
    except UsageError as exc:  # an empty or missing eval split: the run trains, without the monitor
        console.warn(f"online kNN off: {exc}")
        return None
    if evaluation.labels is None:
        console.warn(f"online kNN off: {val_dir} is not labeled (one sub-folder per class is needed)")
        return None
    if bank.labels is None:  # unlabeled training images: the labeled split gives both bank and queries
        return _halves(evaluation, bank_max, val_max, seed)
    index = {name: i for i, name in enumerate(bank.classes or [])}
    try:  # the rule of sslcli probe: every eval class must be a train class
        match_classes(bank, evaluation)
    except UsageError as exc:
        console.warn(f"online kNN off: {exc}")
        return None
    evaluation = _capped(evaluation, val_max, seed)
    bank = _capped(bank, bank_max, seed)
    val_labels = torch.tensor([index[(evaluation.classes or [])[label]] for label in evaluation.labels])
    return KnnSplits(bank, torch.tensor(bank.labels), evaluation, val_labels, list(bank.classes or []))


def _halves(labeled: data.ImageSet, bank_max: int, val_max: int, seed: int) -> KnnSplits:
    """Bank and eval set from one labeled folder: a seeded class-stratified half each."""
    bank_idx, eval_idx = stratified_split(torch.tensor(labeled.labels), 0.5, seed)
    bank = _capped(data.subset(labeled, bank_idx.tolist()), bank_max, seed)
    evaluation = _capped(data.subset(labeled, eval_idx.tolist()), val_max, seed)
    console.info(f"online kNN: DATA is unlabeled, so {labeled.root} gives the bank and the eval images (half each)")
    return KnnSplits(bank, torch.tensor(bank.labels), evaluation, torch.tensor(evaluation.labels),
                     list(labeled.classes or []), bank_from_val=True)


def evaluate(encoder: nn.Module, info: EncoderInfo, splits: KnnSplits, *, k: int, batch_size: int,
             num_workers: int, device: torch.device, caching: cache.CachePolicy = cache.CachePolicy(),
             policy: data.BadImagePolicy | None = None) -> KnnResult:
    """Weighted kNN top-1 (t = 0.07, as probe) of the encoder on the splits; leaves the encoder in eval mode.

    Unreadable images are skipped; pass the same policy to every evaluation so each is reported once."""
    policy = policy or data.BadImagePolicy("skip")
    # No progress lines of its own: one line per evaluation is enough inside a training log.
    common = dict(batch_size=batch_size, num_workers=num_workers, device=device, policy=policy, caching=caching,
                  show_progress=False)
    bank_f, bank_kept = extract_features(encoder, info, splits.bank.paths, **common)
    val_f, val_kept = extract_features(encoder, info, splits.val.paths, **common)
    bank_y, val_y = splits.bank_labels[bank_kept], splits.val_labels[val_kept]
    scores = knn_evaluate(bank_f, bank_y, val_f, val_y, len(splits.classes), ks=[min(k, len(bank_y))])
    top1 = next(iter(scores.values()))["top1"]
    return KnnResult(top1, bank_f, bank_y, [splits.bank.paths[i] for i in bank_kept.tolist()], val_f, val_y,
                     [splits.val.paths[i] for i in val_kept.tolist()])


def nearest_neighbours(result: KnnResult, queries: int = 8, k: int = 8, seed: int = 0) -> tuple[list[int], Tensor]:
    """(query indices into the eval split, [queries, k] bank indices by cosine similarity).

    Queries are one image from each of `queries` classes where there are that many (seeded), so the grid
    shows a spread of classes rather than eight of the most common one."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(result.val_labels), generator=generator).tolist()
    picked, seen = [], set()
    for i in order:  # one per class first, then fill up
        if int(result.val_labels[i]) not in seen:
            picked.append(i)
            seen.add(int(result.val_labels[i]))
        if len(picked) == queries:
            break
    picked += [i for i in order if i not in picked][:queries - len(picked)]
    q = F.normalize(result.val_features[picked].float(), dim=1)
    bank = F.normalize(result.bank_features.float(), dim=1)
    return picked, (q @ bank.T).topk(min(k, bank.shape[0]), dim=1).indices


def same_class_fraction(result: KnnResult, k: int = 8, chunk: int = 1024) -> float:
    """Precision@k over every eval image: the fraction of its k nearest bank images (cosine) of its class."""
    bank = F.normalize(result.bank_features.float(), dim=1)
    k = min(k, bank.shape[0])
    hits = 0
    for start in range(0, len(result.val_labels), chunk):
        q = F.normalize(result.val_features[start:start + chunk].float(), dim=1)
        nearest = (q @ bank.T).topk(k, dim=1).indices
        hits += int((result.bank_labels[nearest] == result.val_labels[start:start + chunk, None]).sum())
    return hits / max(1, k * len(result.val_labels))


def grid_from(result: KnnResult, classes: list[str], image_size: int, bank_from_val: bool = False,
              channels: int = 3) -> NeighbourGrid:
    """The neighbour grid of an online-kNN result (features already extracted)."""
    queries, neighbours = nearest_neighbours(result)
    return NeighbourGrid(
        query_paths=[result.val_paths[i] for i in queries],
        query_labels=[int(result.val_labels[i]) for i in queries],
        neighbour_paths=[[result.bank_paths[j] for j in row.tolist()] for row in neighbours],
        neighbour_labels=[[int(result.bank_labels[j]) for j in row.tolist()] for row in neighbours],
        classes=classes, image_size=image_size, same_class=same_class_fraction(result),
        queries=len(result.val_labels),
        bank_name="images of the other half of --val" if bank_from_val else "train images", channels=channels)


def evaluation_count(epochs: int, every: int) -> int:
    """Evaluations of a run of `epochs` epochs: at the start, every `every` epochs and after the last."""
    return 1 + epochs // every + (1 if epochs % every else 0) if every else 0


def evaluations_after(epochs_done: int, epochs: int, every: int) -> int:
    """The evaluations a run of `epochs` epochs still makes after `epochs_done` whole epochs."""
    if not every or epochs <= epochs_done:
        return 0
    return epochs // every - epochs_done // every + (1 if epochs % every else 0)


class OnlineKnn:
    """The online kNN before the first step (at_start), every monitor.knn_every epochs and after the last one."""

    def __init__(self, spec: PretrainSpec, info: EncoderInfo, device: torch.device, method: nn.Module,
                 metrics: console.MetricsLog | None, caching: cache.CachePolicy):
        self.spec, self.info, self.device, self.method = spec, info, device, method
        self.metrics, self.caching = metrics, caching
        monitor = spec.monitor
        self.splits = (find_splits(spec.data.path, spec.data.val, monitor.knn_bank_max, monitor.knn_val_max,
                                   spec.train.seed) if monitor.knn_every else None)
        self.final_epoch = spec.train.epochs  # always scored; a re-planned --budget run moves it
        self.last_top1: float | None = None
        self.start_top1: float | None = None  # at random init (at_start)
        self.last_result: KnnResult | None = None
        self.grid: NeighbourGrid | None = None
        self.grid_is_new = False
        self.bad_images = data.BadImagePolicy("skip")  # one for every evaluation: each bad file is reported once

    def new_grid(self) -> NeighbourGrid | None:
        """The neighbour grid once after each evaluation (None otherwise: neighbors.png is already drawn)."""
        grid, self.grid_is_new = (self.grid if self.grid_is_new else None), False
        return grid

    def at_start(self) -> None:
        """Before the first step: the random-init encoder's top-1, so curves start where training started
        (a resumed run has it already)."""
        if self.splits is not None:
            self._evaluate(0, 0)
            self.start_top1 = self.last_top1

    def at_epoch_end(self, epochs_done: int, step: int) -> None:
        every, last = self.spec.monitor.knn_every, self.final_epoch
        if self.splits is None or not (epochs_done % every == 0 or epochs_done == last):
            return
        self._evaluate(epochs_done, step)

    def _evaluate(self, epochs_done: int, step: int) -> None:
        start = time.perf_counter()
        result = evaluate(self.method.export_encoder(), self.info, self.splits, k=self.spec.monitor.knn_k,
                          batch_size=256, num_workers=data.default_workers(self.spec.data.num_workers), device=self.device,
                          caching=self.caching, policy=self.bad_images)
        self.method.train()  # extraction left the encoder in eval mode
        self.last_top1, self.last_result = result.top1, result
        chance = 1 / max(1, len(self.splits.classes))
        if self.metrics is not None:
            self.metrics.write({"step": step, "epoch": epochs_done, "knn_top1": result.top1, "knn_chance": chance})
        if distributed.is_main():
            self.grid = grid_from(result, self.splits.classes, self.info.image_size, self.splits.bank_from_val,
                                  self.info.channels)
            self.grid_is_new = True
        origin = "starting weights" if (self.spec.encoder.init or self.spec.init_from) else "random init"
        when = f"epoch 0 ({origin})" if epochs_done == 0 else f"epoch {epochs_done}"
        console.info(f"{when}: online kNN top-1 {100 * result.top1:.2f} % (chance {100 * chance:.0f} %, "
                     f"k={self.spec.monitor.knn_k}, {len(result.bank_labels)} train / {len(result.val_labels)} eval "
                     f"images, {time.perf_counter() - start:.0f} s)")

    def measure(self) -> None:
        """One evaluation that records nothing (to time it for --budget)."""
        evaluate(self.method.export_encoder(), self.info, self.splits, k=self.spec.monitor.knn_k, batch_size=256,
                 num_workers=data.default_workers(self.spec.data.num_workers), device=self.device,
                 caching=self.caching)
        self.method.train()

    def evaluations(self, epochs: int) -> int:
        """How many evaluations a new run of `epochs` epochs makes (at the start, every knn_every epochs and
        after the last)."""
        return evaluation_count(epochs, self.spec.monitor.knn_every) if self.splits is not None else 0

    def evaluations_after(self, epochs_done: int, epochs: int) -> int:
        """How many evaluations a run of `epochs` epochs still makes after `epochs_done` whole epochs."""
        if self.splits is None:
            return 0
        return evaluations_after(epochs_done, epochs, self.spec.monitor.knn_every)

    def linear_top1(self) -> float | None:
        """A linear probe on the last online-kNN features, for the closing summary (rank 0 only)."""
        if self.last_result is None or not distributed.is_main():
            return None
        r = self.last_result
        return linear_probe(r.bank_features, r.bank_labels, r.val_features, r.val_labels,
                            len(self.splits.classes), seed=self.spec.train.seed)["top1"]
