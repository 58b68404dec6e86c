"""make bench-augment: augment.py (batched, per-sample parameters) vs a torchvision.transforms.v2
per-image pipeline fed by DataLoader workers, on the same uint8 CIFAR-10 images and the same recipe
(SimCLR's: random resized crop, flip, colour jitter, grayscale, blur; two views per image).

The last line is one JSON object with the figures. Target on CPU: ours / reference >= 5.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
from torchvision.transforms import v2

from bench.common import SHARED_DATA, peak_rss_mb, run_phase
from sslcli import cache, data
from sslcli.augment import Augmenter, ViewConfig
from sslcli.spec import PretrainSpec, resolve

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def recipe() -> ViewConfig:
    return resolve(PretrainSpec, preset="simclr-cifar10").augment


def load_images(count: int) -> torch.Tensor:
    images = data.find_images(SHARED_DATA / "cifar10" / "train")
    paths = images.paths[:: max(1, len(images) // count)][:count]
    decoded = cache.open_or_build(paths, 32, cache.default_cache_dir(), data.BadImagePolicy(), num_workers=1)
    return torch.from_numpy(decoded.array[decoded.good_indices])


def torchvision_pipeline(cfg: ViewConfig) -> v2.Compose:
    return v2.Compose([
        v2.RandomResizedCrop(cfg.size, scale=cfg.scale, ratio=cfg.ratio, antialias=True),
        v2.RandomHorizontalFlip(cfg.hflip_p),
        v2.RandomApply([v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)], p=cfg.jitter_p),
        v2.RandomGrayscale(cfg.gray_p),
        v2.RandomApply([v2.GaussianBlur(cfg.blur_kernel_size, sigma=cfg.blur_sigma)], p=cfg.blur_p),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(MEAN, STD),
    ])


class TwoViews(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, transform: v2.Compose):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.transform(self.images[i])


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)


def measure_ours(images: torch.Tensor, batch: int) -> float:
    cfg = recipe()
    augment = Augmenter([cfg, cfg], MEAN, STD, torch.Generator().manual_seed(0))
    augment(images[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(images) - batch + 1, batch):
        augment(images[i:i + batch])
    return (len(images) // batch * batch) / (time.perf_counter() - start)


def measure_torchvision(images: torch.Tensor, batch: int, workers: int) -> float:
    loader = torch.utils.data.DataLoader(TwoViews(images, torchvision_pipeline(recipe())), batch_size=batch,
                                         num_workers=workers, drop_last=True, persistent_workers=workers > 0,
                                         worker_init_fn=_one_thread if workers else None)
    iterator = iter(loader)
    next(iterator)  # workers started and warm
    start = time.perf_counter()
    count = sum(views[0].shape[0] for views in iterator)
    return count / (time.perf_counter() - start)


def phase(args: argparse.Namespace) -> None:
    images = load_images(args.images)
    if args.phase == "ours":
        rate = measure_ours(images, args.batch)
    else:
        rate = measure_torchvision(images, args.batch, int(args.phase.split("-")[1]))
    print(json.dumps({"images_per_s": rate, "peak_rss_mb": peak_rss_mb()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=10240)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--phase", default=None)
    args = parser.parse_args()
    if args.phase:
        return phase(args)
    common = ["--images", str(args.images), "--batch", str(args.batch)]
    ours = run_phase("bench.augment", "ours", common)
    cores = os.cpu_count() or 1
    references = {w: run_phase("bench.augment", f"torchvision-{w}", common) for w in sorted({0, cores})}
    best_workers = max(references, key=lambda w: references[w]["images_per_s"])
    ref = references[best_workers]
    ratio = ours["images_per_s"] / ref["images_per_s"]
    print(f"{'augmentation, 2 views of 32 px, batch ' + str(args.batch):<52} {'images/s':>10} {'peak RSS MiB':>13}")
    print(f"{'sslcli augment.py (batched, in-process)':<52} {ours['images_per_s']:>10.0f} {ours['peak_rss_mb']:>13.0f}")
    for w, r in references.items():
        print(f"{f'torchvision v2 per image, {w} DataLoader workers':<52} {r['images_per_s']:>10.0f} "
              f"{r['peak_rss_mb']:>13.0f}")
    print(f"{'ratio ours / best reference':<52} {ratio:>10.2f}")
    print(json.dumps({
        "ours_images_per_s": round(ours["images_per_s"], 1),
        "torchvision_images_per_s": round(ref["images_per_s"], 1),
        "torchvision_workers": best_workers,
        "ratio": round(ratio, 2),
        "ours_peak_rss_mb": ours["peak_rss_mb"],
        "torchvision_peak_rss_mb": ref["peak_rss_mb"],
        "device": "cpu",
        "cpu_count": cores,
        "machine": platform.machine(),
    }, sort_keys=True))


if __name__ == "__main__":
    main()
