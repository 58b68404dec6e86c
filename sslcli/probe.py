"""`sslcli probe`: frozen features extracted once, then weighted kNN and a linear probe on them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sslcli import cache, checkpoint, console, data, distributed
from sslcli.encoders import EncoderInfo
from sslcli.errors import UsageError
from sslcli.evaluate import knn_evaluate, linear_probe
from sslcli.pretrain import default_workers
from sslcli.spec import ProbeSpec
from sslcli.train import resolve_device


def eval_splits(train: Path, val: Path | None) -> tuple[Path, Path]:
    """--data/--val, or a --data folder holding train/ and val/ or test/."""
    if val is not None:
        return train, val
    train_dir, eval_dir = data.split_folders(train)
    if eval_dir is None:
        raise UsageError(f"no eval split: {train} holds no train/ with val/ or test/; pass --val DIR")
    return train_dir, eval_dir


def labeled_images(folder: Path, role: str) -> data.ImageSet:
    images = data.find_images(folder)
    if images.labels is None:
        raise UsageError(f"the {role} folder {folder} is not labeled: probing needs one sub-folder per class")
    return images


def match_classes(train: data.ImageSet, val: data.ImageSet) -> list[int]:
    """Labels of the eval images in the train split's class indices (class folders are matched by name)."""
    index = {name: i for i, name in enumerate(train.classes or [])}
    unknown = sorted(set(val.classes or []) - set(index))
    if unknown:
        raise UsageError(f"eval classes not in the train split: {', '.join(unknown[:5])}; "
                         "both folders need the same class sub-folders")
    return [index[val.classes[label]] for label in val.labels]


def eval_view(x: torch.Tensor, info: EncoderInfo) -> torch.Tensor:
    """uint8 images decoded at the storage size -> the centre crop at the encoder's input size, normalised.

    The same geometry the encoder saw in training; shared by probe, embed and fine-tuning's evaluation.
    """
    offset = (x.shape[-1] - info.image_size) // 2
    x = x[:, :, offset:offset + info.image_size, offset:offset + info.image_size]
    mean = torch.tensor(info.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(info.std, device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255 - mean) / std


def _eval_batches(paths: list[Path], storage: int, batch_size: int, num_workers: int, device: torch.device,
                  policy: data.BadImagePolicy, use_cache: bool) -> tuple[Iterator[tuple[torch.Tensor, torch.Tensor]], int]:
    """(uint8 batches with their indices, in file order; the number of batches): from the decode cache when
    the images fit it, so a second probe of the same folder decodes nothing, else decoded on the fly.

    Under torchrun each rank reads its contiguous share of the images (indices stay global)."""
    folder = cache.usable_folder(paths, storage) if use_cache else None
    if folder is not None:
        with distributed.main_first():  # one process decodes; the others open what it wrote
            decoded = cache.open_or_build(paths, storage, folder, policy, num_workers)
        part = distributed.shard(len(decoded.good_indices))
        mine = decoded.good_indices[part.start:part.stop]
        return cache.in_order(decoded, batch_size, mine), -(-len(mine) // batch_size)
    part = distributed.shard(len(paths))
    shard_paths = paths[part.start:part.stop]
    loader = data.make_loader(shard_paths, storage, batch_size, shuffle=False, drop_last=False,
                              num_workers=num_workers, seed=0, pin_memory=device.type == "cuda")
    batches = ((x, idx + part.start) for x, idx in data.iter_batches(loader, policy, shard_paths))
    return batches, len(loader)


@torch.no_grad()
def extract_features(model: nn.Module, info: EncoderInfo, paths: list[Path], *, batch_size: int, num_workers: int,
                     device: torch.device, policy: data.BadImagePolicy, use_cache: bool = True,
                     show_progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of every readable image with deterministic eval preprocessing; returns (features, kept indices).

    Images are decoded at the training storage size and centre-cropped to the encoder's input size,
    the same geometry the encoder saw in training.
    """
    batches, total = _eval_batches(paths, data.storage_size_for(info.image_size), batch_size, num_workers, device,
                                   policy, use_cache)
    model.to(device).eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    features, kept = [], []
    progress = console.Progress(total, f"features {info.name}", every=10, unit="feature batch",
                                visible=show_progress)
    try:
        for batch, (x, idx) in enumerate(batches, start=1):
            x = eval_view(x.to(device, non_blocking=True), info)
            with autocast:
                features.append(model(x).float().cpu())
            kept.append(idx)
            progress.update(batch, {"images": int(sum(len(k) for k in kept))})
    finally:
        progress.close()
    features_t = torch.cat(features) if features else torch.zeros(0, info.feature_dim)
    kept_t = torch.cat(kept) if kept else torch.zeros(0, dtype=torch.long)
    # Under torchrun every rank extracted its share: put the whole split together, in file order.
    features_t, kept_t = distributed.gather_uneven(features_t), distributed.gather_uneven(kept_t)
    if not len(kept_t):
        raise UsageError("no readable images to extract features from")
    return features_t, kept_t


def run(spec: ProbeSpec) -> dict[str, Any]:
    start = time.perf_counter()
    device = distributed.init(resolve_device(spec.device))  # under torchrun the ranks share the extraction
    model, info, meta = checkpoint.load_encoder(spec.encoder)
    train_dir, val_dir = eval_splits(spec.data, spec.val)
    train_set, val_set = labeled_images(train_dir, "train"), labeled_images(val_dir, "eval")
    if spec.label_fraction is not None:
        train_set = data.subset(train_set, data.label_fraction_subset(train_set.labels, spec.label_fraction,
                                                                      spec.seed))
    val_labels_all = torch.tensor(match_classes(train_set, val_set))
    num_classes = len(train_set.classes or [])
    policy = data.BadImagePolicy(spec.on_bad_image)
    workers = default_workers(spec.num_workers)
    console.info(f"extracting features: {len(train_set)} train and {len(val_set)} eval images, "
                 f"{info.name} at {info.image_size} px on {device}")
    common = dict(batch_size=spec.batch_size, num_workers=workers, device=device, policy=policy,
                  use_cache=spec.cache)
    train_f, train_kept = extract_features(model, info, train_set.paths, **common)
    val_f, val_kept = extract_features(model, info, val_set.paths, **common)
    train_y = torch.tensor(train_set.labels)[train_kept]
    val_y = val_labels_all[val_kept]
    if not distributed.is_main():
        return {}  # rank 0 fits the kNN and linear probe on the gathered features and reports them

    console.info("kNN and linear probe on the cached features")
    knn = knn_evaluate(train_f, train_y, val_f, val_y, num_classes, ks=spec.knn_k, temperature=spec.knn_temperature)
    linear = linear_probe(train_f, train_y, val_f, val_y, num_classes, weight_decays=spec.linear_weight_decays,
                          seed=spec.seed)
    if policy.summary():
        console.warn(policy.summary())
    result = {
        "encoder": str(spec.encoder),
        "method": meta.get("method"),
        "encoder_name": info.name,
        "knn": knn,
        "knn_k": list(spec.knn_k),
        "knn_temperature": spec.knn_temperature,
        "linear": {"top1": linear["top1"], "top5": linear["top5"], "weight_decay": linear["weight_decay"]},
        "label_fraction": spec.label_fraction,
        "n_train": int(train_y.numel()),
        "n_eval": int(val_y.numel()),
        "num_classes": num_classes,
        "feature_dim": int(train_f.shape[1]),
        "seconds": round(time.perf_counter() - start, 2),
    }
    checkpoint.atomic_write_json(Path(spec.encoder).parent / "probe.json", result)
    return result


def format_table(result: dict[str, Any]) -> str:
    rows = [("kNN k=" + key[1:], v["top1"], v["top5"]) for key, v in result["knn"].items()]
    rows.append(("linear", result["linear"]["top1"], result["linear"]["top5"]))
    lines = [f"{'probe':<12} {'top-1':>7} {'top-5':>7}"]
    lines += [f"{name:<12} {100 * t1:>6.2f}% {100 * t5:>6.2f}%" for name, t1, t5 in rows]
    lines.append(f"{result['n_train']} train / {result['n_eval']} eval images, {result['num_classes']} classes, "
                 f"features {result['feature_dim']}-d, {result['seconds']:.1f} s")
    return "\n".join(lines)
