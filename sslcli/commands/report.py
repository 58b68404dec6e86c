"""`sslcli report RUN_DIR`: redraw RUN/report/ (curves.png, neighbors.png, summary.json; map.png with --map;
attention.png for a ViT encoder).

Curves and summary come from metrics.jsonl; the neighbour grid is rebuilt from the run's encoder and its
labeled data (online_knn.py extracts the features, report.py draws); a ViT's last-block CLS attention on a few
eval images comes from attention_maps.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sslcli import attention_maps, checkpoint, console, data, embedding_map, online_knn, report
from sslcli.device import resolve_device
from sslcli.encoders import is_vit
from sslcli.errors import UsageError
from sslcli.spec import PretrainSpec, ReportSpec


def run(spec: ReportSpec) -> dict[str, Any]:
    run_dir = Path(spec.run_dir)
    if not (run_dir / "metrics.jsonl").is_file() or not (run_dir / "spec.json").is_file():
        raise UsageError(f"{run_dir} is not a run folder (no metrics.jsonl and spec.json); give the folder "
                         "`sslcli pretrain` wrote")
    try:
        run_spec = PretrainSpec.model_validate(json.loads((run_dir / "spec.json").read_text()))
    except (ValueError, OSError) as exc:
        raise UsageError(f"{run_dir / 'spec.json'} cannot be read as a pretraining spec ({exc})") from None
    grid, points = None, None
    encoder_path = run_dir / "encoder.safetensors"
    monitor = run_spec.monitor
    val = spec.val if spec.val is not None else run_spec.data.val
    if spec.val is not None:
        data.find_images(spec.val, name="--val")  # a wrong --val is an error here, not a report without neighbours
    splits = online_knn.find_splits(run_spec.data.path, val, monitor.knn_bank_max, monitor.knn_val_max,
                                    run_spec.train.seed) if encoder_path.is_file() else None
    if splits is not None:
        encoder, info, _ = checkpoint.load_encoder(encoder_path)
        result = online_knn.evaluate(encoder, info, splits, k=monitor.knn_k, batch_size=256,
                                     num_workers=data.default_workers("auto"), device=resolve_device(spec.device))
        grid = online_knn.grid_from(result, splits.classes, info.image_size, splits.bank_from_val, info.channels)
        if spec.map:
            points = embedding_map.project(result.val_features, result.val_labels.tolist(), splits.classes,
                                           seed=run_spec.train.seed)
            console.info(f"map.png: {points.method} of {len(points.labels)} eval images")
    elif not encoder_path.is_file():
        console.info(f"no encoder in {run_dir} yet: curves and summary only")
    if spec.map and points is None:
        raise UsageError(f"--map draws the labeled eval images' features: {run_dir} has "
                         + ("no encoder yet" if not encoder_path.is_file() else "no labeled eval split (give --val DIR)"))
    attention = vit_attention(encoder_path, splits, run_spec, spec) if encoder_path.is_file() else None
    return report.write(run_dir, grid, points, attention)


def vit_attention(encoder_path: Path, splits: online_knn.KnnSplits | None, run_spec: PretrainSpec,
                  spec: ReportSpec) -> attention_maps.AttentionMaps | None:
    """A ViT encoder's last-block CLS attention on a few eval images (the labeled eval split, else DATA's
    images); one info line and None for another encoder."""
    encoder, info, _ = checkpoint.load_encoder(encoder_path)
    if not is_vit(encoder):
        console.info(f"attention.png: drawn for ViT encoders only (this run's encoder is {info.name})")
        return None
    images = splits.val if splits is not None else None
    if images is None and run_spec.data.path is not None and Path(run_spec.data.path).exists():
        images = data.find_images(run_spec.data.path)
    if images is None or not len(images):
        console.info("attention.png: no images to draw on (give --val DIR)")
        return None
    try:
        maps = attention_maps.compute(encoder, info, images, resolve_device(spec.device))
    except ValueError as exc:
        console.info(f"attention.png: {exc}")
        return None
    except (AttributeError, RuntimeError, StopIteration) as exc:  # a ViT variant whose blocks timm lays out otherwise
        console.info(f"attention.png: the attention of this {info.name} cannot be read ({exc})")
        return None
    console.info(f"attention.png: the last block's CLS attention of {maps.maps.shape[1]} heads on "
                 f"{maps.maps.shape[0]} eval images")
    return maps


def format_text(summary: dict[str, Any]) -> str:
    return "\n".join(f"{name:<12} {path}" for name, path in summary["files"].items())
