"""`sslcli probe`: frozen features extracted once, then weighted kNN and a linear probe on them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from sslcli import cache, checkpoint, console, data, distributed
from sslcli.evaluate import knn_evaluate, linear_probe
from sslcli.features import extract_features
from sslcli.spec import ProbeSpec
from sslcli.splits import eval_splits, labeled_images, match_classes
from sslcli.train import resolve_device


def run(spec: ProbeSpec) -> dict[str, Any]:
    start = time.perf_counter()
    device = distributed.init(resolve_device(spec.device))  # under torchrun the ranks share the extraction
    model, info, meta = checkpoint.load_encoder(spec.encoder)
    train_dir, val_dir = eval_splits(spec.data, spec.val)
    train_set = labeled_images(train_dir, "train")
    val_set = labeled_images(val_dir, "eval", "--val" if spec.val is not None else "--data")
    if spec.label_fraction is not None:
        train_set = data.subset(train_set, data.label_fraction_subset(train_set.labels, spec.label_fraction,
                                                                      spec.seed))
    val_labels_all = torch.tensor(match_classes(train_set, val_set))
    num_classes = len(train_set.classes or [])
    policy = data.BadImagePolicy(spec.on_bad_image)
    workers = data.default_workers(spec.num_workers)
    console.info(f"extracting features: {len(train_set)} train and {len(val_set)} eval images, "
                 f"{info.name} at {info.image_size} px on {device}")
    common = dict(batch_size=spec.batch_size, num_workers=workers, device=device, policy=policy,
                  caching=cache.CachePolicy(spec.cache))
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


def format_text(result: dict[str, Any]) -> str:
    rows = [("kNN k=" + key[1:], v["top1"], v["top5"]) for key, v in result["knn"].items()]
    rows.append(("linear", result["linear"]["top1"], result["linear"]["top5"]))
    lines = [f"{'probe':<12} {'top-1':>7} {'top-5':>7}"]
    lines += [f"{name:<12} {100 * t1:>6.2f}% {100 * t5:>6.2f}%" for name, t1, t5 in rows]
    lines.append(f"{result['n_train']} train / {result['n_eval']} eval images, {result['num_classes']} classes, "
                 f"features {result['feature_dim']}-d, {result['seconds']:.1f} s")
    return "\n".join(lines)
