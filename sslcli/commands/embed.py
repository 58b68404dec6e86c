"""`sslcli embed`: the encoder's features for every image in a folder, as safetensors plus a CSV index.

Features come from features.extract_features, so they are exactly what `sslcli probe` classifies: the same
decode, centre crop and normalisation, in file order (sorted), with unreadable files skipped.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_bytes

from sslcli import __version__, checkpoint, clip_features, console, data, video
from sslcli.device import resolve_device
from sslcli.errors import UsageError
from sslcli.features import extract_features
from sslcli.files import atomic_write_bytes
from sslcli.spec import EmbedSpec

EMBEDDINGS_FORMAT = "sslcli.embeddings.v1"


def index_path(out: Path) -> Path:
    """The CSV beside the embeddings file: emb.safetensors -> emb.csv."""
    return Path(out).with_suffix(".csv")


def index_csv(images: data.ImageSet, kept: list[int]) -> str:
    """row, path, label, class for every embedded image; label and class are empty for unlabeled folders."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["row", "path", "label", "class"])
    for row, i in enumerate(kept):
        label = images.labels[i] if images.labels is not None else ""
        name = images.classes[label] if images.classes is not None else ""
        writer.writerow([row, str(images.paths[i]), label, name])
    return buffer.getvalue()


def run(spec: EmbedSpec) -> dict[str, Any]:
    encoder, data_dir, out = spec.encoder, spec.data, Path(spec.out)
    if out.suffix != ".safetensors":
        raise UsageError(f"--out must end in .safetensors (got {out}); the CSV index is written beside it")
    for target in (out, index_path(out)):
        if target.exists() and not target.is_file():
            raise UsageError(f"{target} exists and is not a file; choose another --out (the embeddings go to "
                             f"{out.name}, their index to {index_path(out).name})")
    model, info, meta = checkpoint.load_encoder(encoder)
    policy = data.BadImagePolicy(spec.on_bad_image)
    common = dict(batch_size=spec.batch_size, num_workers=data.default_workers(spec.num_workers),
                  device=resolve_device(spec.device), policy=policy)
    if clip_features.is_video_folder(data_dir):  # one row per clip: the mean of its frames' features
        images = video.find_clips(data_dir)
        fps = clip_features.training_fps(meta)
        console.info(f"embedding {len(images)} clips from {data_dir} with {info.name} at {info.image_size} px, each "
                     f"the mean of its frames ({f'{fps:g} fps' if fps else 'every frame'})")
        features, kept_t = clip_features.extract_clip_features(model, info, images.clips, fps=fps, **common)
    else:
        images = data.find_images(data_dir)
        console.info(f"embedding {len(images)} images from {data_dir} with {info.name} at {info.image_size} px")
        features, kept_t = extract_features(model, info, images.paths, **common)
    kept = kept_t.tolist()
    tensors = {"embeddings": features.contiguous()}
    if images.labels is not None:
        tensors["labels"] = torch.tensor([images.labels[i] for i in kept], dtype=torch.int64)
    metadata = {
        "format": "pt",
        "sslcli_format": EMBEDDINGS_FORMAT,
        "sslcli_version": __version__,  # the writer's; the encoder's own is source_sslcli_version
        "source_encoder": str(encoder),
        "source_sslcli_version": meta.get("sslcli_version", ""),
        "encoder": info.name,
        "method": meta.get("method", ""),
        "feature_dim": str(features.shape[1]),
        "image_size": str(info.image_size),
        "count": str(len(kept)),
        "data": str(data_dir),
        "classes": json.dumps(images.classes),
        "index": index_path(out).name,
    }
    # Both files or neither: each is made in memory first (a name that is not UTF-8 keeps its own bytes in
    # the CSV), and the embeddings are removed again if the index cannot be written.
    index = index_csv(images, kept).encode("utf-8", errors="surrogateescape")
    atomic_write_bytes(out, save_bytes(tensors, metadata=metadata))
    try:
        atomic_write_bytes(index_path(out), index)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    if policy.summary():
        console.warn(policy.summary())
    return {"embeddings": str(out), "index": str(index_path(out)), "count": len(kept),
            "feature_dim": int(features.shape[1]), "labeled": images.labels is not None,
            "skipped_images": policy.count}


def format_text(result: dict[str, Any]) -> str:
    return f"{result['embeddings']}  ({result['count']} x {result['feature_dim']}; index {result['index']})"
