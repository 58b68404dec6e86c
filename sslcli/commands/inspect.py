"""`sslcli inspect`: what an sslcli artifact holds, from its safetensors header alone (weights and torch are not loaded).

Works on encoders, classifiers, training states, embeddings and exported models, and on any other
safetensors file (it then says the file carries no sslcli tag).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sslcli.console import plural
from sslcli.headers import read_metadata, tensor_shapes
from sslcli.spec import InspectSpec

KINDS = {  # the sslcli_format tags of checkpoint.py, headers.py, commands/finetune.py and commands/embed.py
    "sslcli.encoder.v1": "encoder",
    "sslcli.classifier.v1": "classifier",
    "sslcli.train-state.v1": "training state",
    "sslcli.embeddings.v1": "embeddings",
    "sslcli.projector.v1": "projection head",
}


def run(spec: InspectSpec) -> dict[str, Any]:
    """Kind, metadata (verbatim strings), tensor count and sizes; a training state adds its JSON's step/epoch."""
    path = Path(spec.file)
    meta = read_metadata(path)  # one clear error for missing or non-safetensors files
    shapes = tensor_shapes(path)
    numel = sum(math.prod(shape) for shape in shapes.values())
    kind = KINDS.get(meta.get("sslcli_format", ""), "safetensors file without an sslcli tag")
    described: dict[str, Any] = {"path": str(path), "kind": kind, "metadata": meta, "tensors": len(shapes),
                                 "elements": numel}
    if meta.get("init"):  # an encoder that started from weights sslcli did not train
        try:
            described["init"] = json.loads(meta["init"])
        except ValueError:
            described["init"] = None
    if "embeddings" in shapes:
        described["embeddings_shape"] = shapes["embeddings"]
    companion = path.with_suffix(".json")
    if kind == "training state" and companion.is_file():
        record = json.loads(companion.read_text())
        described["state"] = {key: record.get(key) for key in ("step", "epoch")}
    return described


def format_text(described: dict[str, Any]) -> str:
    """Readable lines; metadata values holding JSON objects (specs) are indented, all else printed as stored."""
    lines = [f"{described['path']}: {described['kind']}, {plural(described['tensors'], 'tensor')}, "
             f"{described['elements']:,} {'value' if described['elements'] == 1 else 'values'}"]
    if "embeddings_shape" in described:
        lines.append(f"embeddings: {' x '.join(str(n) for n in described['embeddings_shape'])}")
    init = described.get("init")
    if isinstance(init, dict):
        adapted = init.get("adapted_input_conv")
        adapted = (f"; input conv {', '.join(adapted.get('convs') or [])} adapted from {adapted.get('from')} to "
                   f"{adapted.get('to')} channels" if isinstance(adapted, dict) else "")
        lines.append(f"started from: {init.get('ref')} ({init.get('kind')}; {init.get('file')}, sha256 "
                     f"{init.get('sha256')}{adapted})")
    for key, value in described.get("state", {}).items():
        lines.append(f"{key}: {value}")
    meta = described["metadata"]
    width = max((len(key) for key in meta), default=0)
    for key in sorted(meta):
        lines.append(f"{key:<{width}}  {_readable(meta[key])}")
    return "\n".join(lines)


def _readable(value: str) -> str:
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    if isinstance(parsed, dict) and parsed:
        return "\n" + json.dumps(parsed, indent=2, sort_keys=True)
    return value
