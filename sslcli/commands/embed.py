"""`sslcli embed`: the encoder's features for every image in a folder, as safetensors plus a CSV index, or one
Parquet or CSV file (the format follows --out's suffix; embedding_files.py writes them).

Features come from features.extract_features, so they are exactly what `sslcli probe` classifies: the same
decode, centre crop and normalisation, in file order (sorted), with unreadable files skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sslcli import __version__, checkpoint, clip_features, console, data, embedding_files, video
from sslcli.device import resolve_device
from sslcli.embedding_files import EMBEDDINGS_FORMAT, format_of, index_path, targets
from sslcli.errors import UsageError
from sslcli.features import extract_features
from sslcli.files import sha256_of
from sslcli.spec import EmbedSpec


def run(spec: EmbedSpec) -> dict[str, Any]:
    encoder, data_dir, out = spec.encoder, spec.data, Path(spec.out)
    kind = format_of(out)
    if kind == "parquet":  # before the features are computed, not after
        from sslcli.extras import require

        require("pyarrow", "parquet", "--out FILE.parquet")
    for target in targets(out):
        if target.exists() and not target.is_file():
            raise UsageError(f"{target} exists and is not a file; choose another --out (the embeddings go to "
                             f"{', '.join(t.name for t in targets(out))})")
    sibling = out.with_suffix(".safetensors")
    if kind == "csv" and sibling.is_file():  # this CSV would replace the index the embeddings beside it need
        raise UsageError(f"{out} is the index of {sibling}; choose another --out for the CSV with vectors")
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
    rows = [(row, str(images.paths[i]), images.labels[i] if images.labels is not None else None,
             images.classes[images.labels[i]] if images.labels is not None and images.classes is not None else None)
            for row, i in enumerate(kept)]
    metadata = {
        "format": "pt",
        "sslcli_format": EMBEDDINGS_FORMAT,
        "sslcli_version": __version__,  # the writer's; the encoder's own is source_sslcli_version
        "source_encoder": str(encoder),
        # `sslcli neighbors` embeds an image query with this very encoder, and refuses another one.
        "source_encoder_sha256": sha256_of(Path(encoder)),
        "source_sslcli_version": meta.get("sslcli_version", ""),
        "encoder": info.name,
        "method": meta.get("method", ""),
        "feature_dim": str(features.shape[1]),
        "image_size": str(info.image_size),
        "channels": str(info.channels),
        "interpolation": info.interpolation,
        "count": str(len(kept)),
        "data": str(data_dir),
        "classes": json.dumps(images.classes),
    }
    embedding_files.write(out, features, rows, metadata)
    if policy.summary():
        console.warn(policy.summary())
    result = {"embeddings": str(out), "format": kind, "count": len(kept), "feature_dim": int(features.shape[1]),
              "labeled": images.labels is not None, "skipped_images": policy.count}
    if kind == "safetensors":
        result["index"] = str(index_path(out))
    return result


def format_text(result: dict[str, Any]) -> str:
    index = f"; index {result['index']}" if "index" in result else ""
    return f"{result['embeddings']}  ({result['count']} x {result['feature_dim']}, {result['format']}{index})"
