"""`sslcli probe`: frozen features extracted once, then weighted kNN and a linear probe on them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from sslcli import cache, checkpoint, console, data, distributed
from sslcli.encoders import rebuild_encoder
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
    baseline_f = None
    if spec.baseline:
        # The same architecture (kwargs, small stem) at a seeded random init: what the training added is the
        # difference. Its images come from the decode cache the first extraction filled.
        console.info(f"random-init baseline: the same {info.name} at seed {spec.seed}, features again")
        torch.manual_seed(spec.seed)
        random_init = rebuild_encoder(info)
        baseline_f = (extract_features(random_init, info, train_set.paths, **common)[0],
                      extract_features(random_init, info, val_set.paths, **common)[0])
    train_y = torch.tensor(train_set.labels)[train_kept]
    val_y = val_labels_all[val_kept]
    if not distributed.is_main():
        return {}  # rank 0 fits the kNN and linear probe on the gathered features and reports them

    console.info("kNN and linear probe on the cached features")
    knn, linear = _scores(spec, train_f, train_y, val_f, val_y, num_classes)
    baseline = None
    if baseline_f is not None:
        base_knn, base_linear = _scores(spec, baseline_f[0], train_y, baseline_f[1], val_y, num_classes)
        baseline = {"knn": base_knn, "linear": base_linear, "seed": spec.seed}
    if policy.summary():
        console.warn(policy.summary())
    result = {
        "encoder": str(spec.encoder),
        "method": meta.get("method"),
        "encoder_name": info.name,
        "knn": knn,
        "knn_k": list(spec.knn_k),
        "knn_temperature": spec.knn_temperature,
        "linear": linear,
        "chance": 1 / max(1, num_classes),
        "baseline": baseline,
        "label_fraction": spec.label_fraction,
        "n_train": int(train_y.numel()),
        "n_eval": int(val_y.numel()),
        "num_classes": num_classes,
        "feature_dim": int(train_f.shape[1]),
        "seconds": round(time.perf_counter() - start, 2),
    }
    checkpoint.atomic_write_json(Path(spec.encoder).parent / "probe.json", result)
    return result


def _scores(spec: ProbeSpec, train_f: torch.Tensor, train_y: torch.Tensor, val_f: torch.Tensor,
            val_y: torch.Tensor, num_classes: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Weighted kNN at every k and the linear probe on one set of features."""
    knn = knn_evaluate(train_f, train_y, val_f, val_y, num_classes, ks=spec.knn_k, temperature=spec.knn_temperature)
    linear = linear_probe(train_f, train_y, val_f, val_y, num_classes, weight_decays=spec.linear_weight_decays,
                          seed=spec.seed)
    return knn, {"top1": linear["top1"], "top5": linear["top5"], "weight_decay": linear["weight_decay"]}


def format_text(result: dict[str, Any]) -> str:
    """The scores beside their references: the random-init encoder of the same architecture, and chance."""
    base = result.get("baseline")
    rows = [("kNN k=" + key[1:], v, (base or {}).get("knn", {}).get(key)) for key, v in result["knn"].items()]
    rows.append(("linear", result["linear"], (base or {}).get("linear")))
    lines = [f"{'probe':<12} {'top-1':>7} {'top-5':>7}" + (f"   {'random init top-1':>17}" if base else "")]
    for name, scores, reference in rows:
        line = f"{name:<12} {100 * scores['top1']:>6.2f}% {100 * scores['top5']:>6.2f}%"
        if reference is not None:
            line += f"   {100 * reference['top1']:>16.2f}%"
        lines.append(line)
    lines.append(f"chance {100 * result['chance']:.2f} % (1 / {result['num_classes']} classes)"
                 + ("" if base else "; --baseline adds a random-init encoder's scores"))
    lines.append(f"{result['n_train']} train / {result['n_eval']} eval images, {result['num_classes']} classes, "
                 f"features {result['feature_dim']}-d, {result['seconds']:.1f} s")
    return "\n".join(lines)
