"""What a timm model folder holds besides the weights: config.json (read by timm.create_model("local-dir:DIR")
and "hf-hub:ORG/NAME") and, for the Hugging Face Hub, a model card (README.md) written from the encoder's
metadata and the probe results found beside it.

No torch here: only the metadata, the run folder's JSON files and text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sslcli import data
from sslcli.encoders import EncoderInfo
from sslcli.methods import CONFIGS

# What timm cannot express in config.json (its ResNet has no stride-1, pool-free stem), said where users read.
SMALL_STEM_NOTE = ("the CIFAR stem (3x3 stride-1 first conv, no max-pool) must be applied before the weights load: "
                   "timm.create_model(\"local-dir:DIR\", pretrained=False), change conv1 and maxpool as the model "
                   "card's README.md shows, then load model.safetensors strictly")


def timm_config(info: EncoderInfo, meta: dict[str, str], encoder_path: Path,
                classifier: str | None) -> dict[str, Any]:
    """timm's hub-style config.json, read by timm.create_model("local-dir:FOLDER").

    `classifier` names the head module, so that create_model(..., num_classes=N) knows the file has no
    head for it and builds a fresh one instead of failing the load.
    """
    size = info.image_size
    config = {
        "architecture": info.name,
        "num_classes": 0,  # a feature extractor; pass num_classes=N to create_model for a fresh head
        "num_features": info.feature_dim,
        # in_chans only for other than RGB, so RGB configs stay as they were.
        "model_args": {**info.kwargs, **({"in_chans": info.channels} if info.channels != 3 else {})},
        "pretrained_cfg": {
            "input_size": [info.channels, size, size],
            "mean": list(info.mean),
            "std": list(info.std),
            "interpolation": info.interpolation,
            # Images were stored with the shorter side at storage_size_for(size) and centre-cropped.
            "crop_pct": size / data.storage_size_for(size),
            "crop_mode": "center",
            "num_classes": 0,
            "classifier": classifier,
        },
        "sslcli": provenance(info, meta, encoder_path),
    }
    if info.small_stem:
        config["sslcli"]["small_stem_load"] = SMALL_STEM_NOTE
    return config


def provenance(info: EncoderInfo, meta: dict[str, str], encoder_path: Path) -> dict[str, Any]:
    return {"small_stem": info.small_stem, "source_encoder": str(encoder_path), "method": meta.get("method"),
            "epoch": meta.get("epoch"), "sslcli_version": meta.get("sslcli_version")}


# ---------------------------------------------------------------- the model card


def probe_results(encoder_path: Path) -> list[dict[str, Any]]:
    """The probe-*.json files beside the encoder (sslcli probe's default output), oldest name first; files that
    are not a probe result of this encoder are left out."""
    results = []
    for path in sorted(Path(encoder_path).parent.glob("probe-*.json")):
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(result, dict) and isinstance(result.get("knn"), dict) and isinstance(result.get("linear"), dict):
            results.append({**result, "file": path.name})
    return results


def load_code(info: EncoderInfo, folder: Path, stem_is_conv: bool) -> str:
    """The Python that loads the folder as the encoder: one create_model line, or for the small stem the lines
    that change it before a strict load. Tested by running exactly this text."""
    where = f"local-dir:{folder}"
    if not info.small_stem:
        return f'import timm\n\nmodel = timm.create_model("{where}", pretrained=True).eval()\n'
    conv = ("model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)" if stem_is_conv
            else "model.conv1[0].stride = (1, 1)")
    return ("import timm\nfrom timm.models import load_checkpoint\nfrom torch import nn\n\n"
            f'model = timm.create_model("{where}", pretrained=False)\n'
            "# the CIFAR stem it was trained with, which config.json cannot express: stride-1 first conv, no max-pool\n"
            f"{conv}\n"
            "model.maxpool = nn.Identity()\n"
            f'load_checkpoint(model, "{folder / "model.safetensors"}", strict=True)\n'
            "model = model.eval()\n")


FEATURES_CODE = ("config = timm.data.resolve_data_config({}, model=model)\n"
                 "transform = timm.data.create_transform(**config)   # resize, centre crop, normalise\n"
                 "features = model(transform(image.convert(\"RGB\")).unsqueeze(0))   # image: a PIL image\n")


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f} %"


def _probe_rows(results: list[dict[str, Any]]) -> list[str]:
    if not results:
        return ["No probe result was found beside the encoder (run `sslcli probe ENCODER --data DIR` before "
                "exporting to add one here)."]
    lines = ["| eval data | train / eval images | kNN top-1 | linear top-1 | random init kNN / linear | chance |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        knn = r["knn"].get("k20") or next(iter(r["knn"].values()), {})
        k = "k=20" if "k20" in r["knn"] else next(iter(r["knn"]), "")
        base = r.get("baseline") or {}
        base_knn = (base.get("knn") or {}).get("k20") or next(iter((base.get("knn") or {}).values()), None)
        reference = (f"{_pct((base_knn or {}).get('top1'))} / {_pct((base.get('linear') or {}).get('top1'))}"
                     if base else "not measured")
        spec_data = (r.get("spec") or {}).get("data") or {}
        where = spec_data.get("val") or spec_data.get("path") or r["file"]
        fraction = f", {r['label_fraction']:g} of the labels" if r.get("label_fraction") else ""
        lines.append(f"| `{where}`{fraction} | {r.get('n_train', '?')} / {r.get('n_eval', '?')} | "
                     f"{_pct(knn.get('top1'))} ({k}) | {_pct(r['linear'].get('top1'))} | {reference} | "
                     f"{_pct(r.get('chance'))} |")
    lines += ["", "kNN: weighted cosine kNN on frozen features; linear: logistic regression on frozen features; "
              "random init: the same architecture at a seeded random init, probed the same way (what the "
              "pretraining added is the difference)."]
    return lines


def card(info: EncoderInfo, meta: dict[str, str], encoder_path: Path, folder: Path, stem_is_conv: bool) -> str:
    """README.md for the Hub: front matter the Hub reads, then what the encoder is, how it was trained, how it
    scores and how to load it."""
    method = meta.get("method", "")
    config = CONFIGS.get(method)
    spec = _json(meta.get("spec")) or {}
    train, optim = spec.get("train") or {}, spec.get("optim") or {}
    data_path = (spec.get("data") or {}).get("path")
    tags = ["timm", "image-feature-extraction", "sslcli"] + (["self-supervised", method] if config else [])
    trained = (f"**{method}**: {config.summary} ([paper]({config.paper}))" if config
               else f"`{method or 'unknown'}` (not one of sslcli's methods: no pretraining)")
    rows = [
        ("method", trained),
        ("encoder", f"timm `{info.name}`" + (f" with `{json.dumps(info.kwargs)}`" if info.kwargs else "")
         + (", CIFAR stem (stride-1 first conv, no max-pool)" if info.small_stem else "")),
        ("input", f"{info.image_size} x {info.image_size} px RGB, normalised with mean {list(info.mean)}, "
                  f"std {list(info.std)}"),
        ("features", f"{info.feature_dim}-d (the pooled features; no classifier)"),
        ("pretraining data", f"`{data_path}`" if data_path else "not recorded"),
        ("schedule", f"epoch {meta.get('epoch', '?')}, step {meta.get('step', '?')}"
                     + (f", batch {train['batch_size']}" if "batch_size" in train else "")
                     + (f", {optim['name']} base lr {optim.get('base_lr')}" if "name" in optim else "")),
    ]
    if meta.get("trained_input"):
        rows.append(("trained on", meta["trained_input"]))
    rows.append(("written by", f"sslcli {meta.get('sslcli_version', '?')}, torch {meta.get('torch_version', '?')}, "
                               f"timm {meta.get('timm_version', '?')}"))
    lines = ["---", "library_name: timm", "pipeline_tag: image-feature-extraction", "tags:",
             *[f"- {tag}" for tag in tags], "---", "",
             f"# {info.name} · {method or 'sslcli'}", "",
             "An image encoder written by sslcli, the self-supervised pretraining command line. It outputs feature "
             "vectors for retrieval, clustering, probing or fine-tuning.", "",
             "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]
    if info.small_stem:
        lines += ["**The CIFAR stem must be applied by hand.** `timm.create_model(..., pretrained=True)` alone "
                  "builds the standard stride-4 stem, which timm's `config.json` cannot change: "
                  + ("the weights then fail to load." if stem_is_conv else
                     "the weights then load but give other features. Use the lines below."), ""]
    lines += ["## Probe results", "", *_probe_rows(probe_results(encoder_path)), "",
              "## Use", "", "```python", load_code(info, folder, stem_is_conv).rstrip("\n"), "```", "",
              "Features of one image (timm's eval transform from `config.json`: resize, centre crop, normalise):",
              "", "```python", FEATURES_CODE.rstrip("\n"), "```", "",
              "`timm.create_model(..., num_classes=N)` adds a fresh classifier for fine-tuning.", "",
              "## Publish", "", "This folder is a Hugging Face Hub model repository as it is:", "",
              "```", f"hf upload ORG/NAME {folder}", "```", "",
              "(`huggingface-cli upload ORG/NAME DIR` with older `huggingface_hub`). It then loads with "
              "`\"hf-hub:ORG/NAME\"` in place of the `local-dir:` name above"
              + (" and `huggingface_hub.hf_hub_download(\"ORG/NAME\", \"model.safetensors\")` in place of the "
                 "weights' path." if info.small_stem else "."), "",
              "## Training spec", "", "<details><summary>the resolved sslcli spec</summary>", "", "```json",
              json.dumps(spec, indent=2, sort_keys=True), "```", "", "</details>", ""]
    return "\n".join(lines)


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None
