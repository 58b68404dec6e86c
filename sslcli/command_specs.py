"""The spec of each command from its arguments: one function per command, shared by the CLI (cli.py, whose
typed options are these arguments) and the Python API (api.py), so both build the same spec the same way.

Precedence, lowest first: the model's defaults < a preset < the typed arguments < `sets` (`--set a.b=v`) <
`overrides` (the API's keyword arguments, dotted keys). Nothing here imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sslcli.spec import EmbedSpec, ExportSpec, FinetuneSpec, NeighborsSpec, PretrainSpec, ProbeSpec, resolve


def _path(value: str | Path | None) -> str | None:
    return str(value) if value is not None else None


WEIGHTS_PREFIXES = ("pretrained:", "hf-hub:", "local-dir:")  # weights sslcli did not train (weights.py)


def checked_encoder(value: str | Path, weights_ok: bool = False) -> str:
    """An encoder file, or a run folder's encoder.safetensors (said on stderr), checked from its header without
    torch, so a wrong file is refused at once. weights_ok (probe, finetune): also weights sslcli did not train."""
    from sslcli.headers import checked_encoder as check

    if weights_ok and str(value).startswith(WEIGHTS_PREFIXES):
        return str(value)
    return str(check(Path(value)))


def as_sets(overrides: dict[str, Any] | None) -> list[str]:
    """API keyword overrides ({"train.epochs": 2}, or a section {"train": {"epochs": 2}}) as --set items."""
    items = []
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and value:
            items += as_sets({f"{key}.{k}": v for k, v in value.items()})
        else:
            items.append(f"{key}={json.dumps(str(value) if isinstance(value, Path) else value)}")
    return items


def _layers(sets: list[str] | None, overrides: dict[str, Any] | None) -> list[str]:
    return [*(sets or []), *as_sets(overrides)]


def pretrain_spec(data: str | Path, *, method: str | None = None, preset: str | None = None,
                  encoder: str | None = None, epochs: int | None = None, budget: str | float | None = None,
                  batch_size: int | None = None, out: str | Path | None = None, on_bad_image: str | None = None,
                  init_from: str | Path | None = None, init: str | None = None, on_nan: str | None = None, val: str | Path | None = None,
                  sync_bn: bool | None = None, label_fraction: float | None = None, log_to: str | list[str] | None = None,
                  sets: list[str] | None = None, overrides: dict[str, Any] | None = None) -> PretrainSpec:
    options: dict[str, Any] = {
        "data.path": str(data), "method.name": method, "encoder.name": encoder, "train.epochs": epochs,
        "train.budget": budget, "train.batch_size": batch_size, "out": _path(out), "data.on_bad_image": on_bad_image,
        "init_from": _path(init_from), "encoder.init": init, "train.on_nan": on_nan, "train.sync_bn": sync_bn, "data.val": _path(val),
        "data.label_fraction": label_fraction, "logging.to": log_to,
    }
    return resolve(PretrainSpec, preset=preset, options=options, sets=_layers(sets, overrides))


def probe_spec(encoder: str | Path, data: str | Path, *, val: str | Path | None = None,
               label_fraction: float | None = None, on_bad_image: str | None = None,
               baseline: str | bool | None = None, no_baseline: bool = False, out: str | Path | None = None,
               sets: list[str] | None = None, overrides: dict[str, Any] | None = None) -> ProbeSpec:
    """baseline: "random" (the default), "pretrained" (also the starting weights the encoder's --init recorded)
    or weights (FILE, local-dir:DIR, ...) scored beside the encoder; False or no_baseline: no random init."""
    off = no_baseline or baseline is False or baseline == "none"
    start = None if baseline in (None, True, False, "random", "none") else str(baseline)
    options = {"encoder": checked_encoder(encoder, weights_ok=True), "data.path": str(data), "data.val": _path(val),
               "data.on_bad_image": on_bad_image, "data.label_fraction": label_fraction,
               "probe.baseline": False if off else None, "probe.start": start, "out": _path(out)}
    return resolve(ProbeSpec, options=options, sets=_layers(sets, overrides))


def finetune_spec(encoder: str | Path, data: str | Path, *, val: str | Path | None = None,
                  epochs: int | None = None, batch_size: int | None = None, label_fraction: float | None = None,
                  preset: str | None = None, out: str | Path | None = None, on_bad_image: str | None = None,
                  baseline: bool | None = None, keep_projection_layers: int | None = None,
                  log_to: str | list[str] | None = None, sla: bool | None = None, sla_distill: bool | None = None,
                  distill_from: str | Path | None = None, unlabeled: str | Path | None = None,
                  sets: list[str] | None = None, overrides: dict[str, Any] | None = None) -> FinetuneSpec:
    """sla_distill (--sla-distill) implies sla (--sla): SLA with its self-distillation head."""
    options: dict[str, Any] = {
        "sla.enabled": True if sla or sla_distill else None, "sla.self_distill": sla_distill,
        "distill.teacher": _path(distill_from), "distill.unlabeled": _path(unlabeled),
        "encoder": checked_encoder(encoder, weights_ok=True), "data.path": str(data), "data.val": _path(val),
        "data.label_fraction": label_fraction, "data.on_bad_image": on_bad_image, "train.epochs": epochs,
        "train.batch_size": batch_size, "out": _path(out), "baseline": baseline,
        "keep_projection_layers": keep_projection_layers, "logging.to": log_to,
    }
    return resolve(FinetuneSpec, preset=preset, options=options, sets=_layers(sets, overrides))


def export_spec(encoder: str | Path, *, to: str, out: str | Path, data: str | Path | None = None) -> ExportSpec:
    """data: the images an ONNX export is verified on (--to onnx)."""
    options = {"encoder": checked_encoder(encoder), "to": to, "out": str(out), "data": _path(data)}
    return resolve(ExportSpec, options=options)


def embed_spec(encoder: str | Path, data: str | Path, *, out: str | Path, batch_size: int | None = 256,
               device: str | None = "auto", on_bad_image: str | None = None,
               overrides: dict[str, Any] | None = None) -> EmbedSpec:
    options = {"encoder": checked_encoder(encoder), "data": str(data), "out": str(out), "batch_size": batch_size,
               "device": device, "on_bad_image": on_bad_image}
    return resolve(EmbedSpec, options=options, sets=as_sets(overrides))


def neighbors_spec(embeddings: str | Path, *, query: str, k: int = 10, encoder: str | Path | None = None,
                   png: str | Path | None = None, device: str = "auto") -> NeighborsSpec:
    options = {"embeddings": str(embeddings), "query": query, "k": k,
               "encoder": checked_encoder(encoder) if encoder is not None else None, "png": _path(png),
               "device": device}
    return resolve(NeighborsSpec, options=options)
