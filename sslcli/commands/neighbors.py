"""`sslcli neighbors EMB --query IMAGE_OR_PATH`: the k nearest images among embeddings, by cosine similarity.

EMB is any file `sslcli embed` writes: a .safetensors (with its CSV index), a .parquet or a .csv.
A query that is a path of the index uses its stored vector (and is left out of its own neighbours); any other
image file is embedded with the encoder the embeddings were made with (recorded in their metadata, checked by
its sha256), or --encoder. Exact search, a chunk of rows at a time (nearest.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sslcli import checkpoint, console, data, nearest, report
from sslcli.device import resolve_device
from sslcli.embedding_files import EmbeddingsFile, open_embeddings
from sslcli.errors import UsageError
from sslcli.features import eval_view
from sslcli.files import sha256_of
from sslcli.spec import NeighborsSpec


def query_encoder(spec: NeighborsSpec, embeddings: EmbeddingsFile) -> Path:
    """The encoder for an image query: --encoder, else the one the embeddings record; it must be the very one
    (sha256) that made them, else the similarities mean nothing."""
    meta = embeddings.metadata
    recorded = meta.get("source_encoder")
    encoder = Path(spec.encoder) if spec.encoder is not None else Path(recorded) if recorded else None
    if encoder is None or not encoder.is_file():
        missing = (f"{spec.encoder} is not a file" if spec.encoder is not None else
                   f"its recorded {recorded} is not there" if recorded else
                   "they record none (a .csv keeps no provenance)")
        raise UsageError(f"an image query is embedded with the encoder that made {embeddings.path}, and {missing}: "
                         "give it with --encoder ENCODER, or query a path of the index")
    expected = meta.get("source_encoder_sha256")
    if expected and sha256_of(encoder) != expected:
        raise UsageError(f"{encoder} is not the encoder that made {embeddings.path} (its sha256 differs); image "
                         "queries must be embedded with that one")
    return encoder


@torch.no_grad()
def embed_image(encoder_path: Path, image: Path, embeddings: EmbeddingsFile, device: torch.device) -> torch.Tensor:
    model, info, _ = checkpoint.load_encoder(encoder_path)
    if info.feature_dim != embeddings.dim:
        raise UsageError(f"{encoder_path} gives {info.feature_dim}-d features, {embeddings.path} holds "
                         f"{embeddings.dim}-d ones: not the encoder that made them")
    try:
        raw = data.decode_image(image, data.storage_size_for(info.image_size), info.channels,
                                info.interpolation)
    except data.BadImageError as exc:
        raise UsageError(f"--query {image} cannot be read as an image ({exc.reason})") from None
    model = model.to(device).eval()
    return model(eval_view(raw[None].to(device), info)).float().cpu()[0]


def run(spec: NeighborsSpec) -> dict[str, Any]:
    embeddings = open_embeddings(Path(spec.embeddings))
    row = embeddings.find(spec.query)
    if row is not None:
        query = embeddings.vector(row)
    elif Path(spec.query).is_file():
        encoder = query_encoder(spec, embeddings)
        console.info(f"embedding {spec.query} with {encoder}")
        query = embed_image(encoder, Path(spec.query), embeddings, resolve_device(spec.device))
    else:
        raise UsageError(f"--query {spec.query} is neither an image file nor a path in the index of "
                         f"{embeddings.path}")
    found = nearest.top_k(embeddings, query, spec.k, exclude=row)
    neighbours = []
    for rank, (r, similarity) in enumerate(found, start=1):
        _, path, label, name = embeddings.rows[r]
        neighbours.append({"rank": rank, "row": r, "path": path, "label": label, "class": name,
                           "similarity": round(similarity, 6)})
    result = {"query": spec.query, "query_row": row, "embeddings": str(embeddings.path), "k": spec.k,
              "searched": embeddings.count - (row is not None), "neighbors": neighbours}
    if spec.png is not None:
        draw(spec, embeddings, row, neighbours)
        result["png"] = str(spec.png)
    return result


def draw(spec: NeighborsSpec, embeddings: EmbeddingsFile, row: int | None, neighbours: list[dict[str, Any]]) -> None:
    image_size = int(embeddings.metadata.get("image_size") or 64)
    channels = int(embeddings.metadata.get("channels") or 3)  # embeddings of RGB encoders may not record it
    query_class = embeddings.rows[row][3] if row is not None else None
    cells = [(Path(n["path"]), f"{n['rank']}. {n['similarity']:.3f}" + (f" {n['class']}" if n["class"] else ""))
             for n in neighbours]
    report.query_neighbours_png(Path(spec.query), "query" + (f" {query_class}" if query_class else ""), cells,
                                image_size, Path(spec.png),
                                f"{Path(spec.query).name}: its {len(neighbours)} nearest of {embeddings.count} "
                                f"images in {embeddings.path.name} (cosine similarity)", channels=channels)


def format_text(result: dict[str, Any]) -> str:
    lines = [f"{'rank':>4}  {'similarity':>10}  {'class':<12}  path"]
    for n in result["neighbors"]:
        lines.append(f"{n['rank']:>4}  {n['similarity']:>10.4f}  {console.literal(n['class'] or '-'):<12}  "
                     f"{console.literal(n['path'])}")
    if "png" in result:
        lines.append(f"grid {result['png']}")
    return "\n".join(lines)
