"""`sslcli export`: an sslcli encoder as a timm local-dir model folder or a torchvision ResNet state dict.

Both exports write the weights as safetensors (no pickle) plus a config.json, and are checked by loading
them back the way the README tells users to before anything is reported as done.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save as save_bytes
from torch import nn

from sslcli import checkpoint, console, data
from sslcli.encoders import EncoderInfo, apply_small_stem
from sslcli.errors import UsageError
from sslcli.files import atomic_write_bytes, atomic_write_json
from sslcli.spec import ExportSpec

# timm's plain ResNets use torchvision's layer names one for one; the d/t variants (deep stem, average-pool
# shortcut) and other widths have modules torchvision does not, so they are refused rather than guessed.
TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def run(spec: ExportSpec) -> dict[str, Any]:
    encoder_path, to, out = spec.encoder, spec.to, Path(spec.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; export writes a folder (model.safetensors and config.json): "
                         "choose a new or empty folder")
    if (out / "model.safetensors").exists():
        raise UsageError(f"{out} already holds an exported model; choose another --out so nothing is overwritten")
    encoder, info, meta = checkpoint.load_encoder(encoder_path)
    if to == "torchvision":
        check_torchvision_compatible(info)
    state = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
    if to == "timm":
        config = timm_config(info, meta, encoder_path, classifier=encoder.pretrained_cfg.get("classifier"))
    else:
        config = torchvision_config(info, meta, encoder_path)
    # The exported folder holds the encoder alone: drop the pointer to a projection head left beside the source.
    exported_meta = {key: value for key, value in meta.items() if key != "projector"}
    atomic_write_bytes(out / "model.safetensors", save_bytes(state, metadata=exported_meta))
    atomic_write_json(out / "config.json", config)
    load_timm(out) if to == "timm" else load_torchvision(out)  # proves the documented load works
    console.info(f"exported {info.name} for {to} to {out}")
    return {"to": to, "out": str(out), "weights": str(out / "model.safetensors"), "config": str(out / "config.json"),
            "encoder": str(encoder_path), "architecture": config["architecture"], "small_stem": info.small_stem,
            "tensors": len(state)}


def _provenance(info: EncoderInfo, meta: dict[str, str], encoder_path: Path) -> dict[str, Any]:
    return {"small_stem": info.small_stem, "source_encoder": str(encoder_path), "method": meta.get("method"),
            "epoch": meta.get("epoch"), "sslcli_version": meta.get("sslcli_version")}


def timm_config(info: EncoderInfo, meta: dict[str, str], encoder_path: Path,
                classifier: str | None) -> dict[str, Any]:
    """timm's hub-style config.json, read by timm.create_model("local-dir:FOLDER").

    `classifier` names the head module, so that create_model(..., num_classes=N) knows the file has no
    head for it and builds a fresh one instead of failing the load.
    """
    size = info.image_size
    return {
        "architecture": info.name,
        "num_classes": 0,  # a feature extractor; pass num_classes=N to create_model for a fresh head
        "num_features": info.feature_dim,
        # in_chans only for other than RGB, so RGB configs stay as they were.
        "model_args": {**info.kwargs, **({"in_chans": info.channels} if info.channels != 3 else {})},
        "pretrained_cfg": {
            "input_size": [info.channels, size, size],
            "mean": list(info.mean),
            "std": list(info.std),
            "interpolation": "bilinear",
            # Images were stored with the shorter side at storage_size_for(size) and centre-cropped.
            "crop_pct": size / data.storage_size_for(size),
            "crop_mode": "center",
            "num_classes": 0,
            "classifier": classifier,
        },
        "sslcli": _provenance(info, meta, encoder_path),
    }


def torchvision_config(info: EncoderInfo, meta: dict[str, str], encoder_path: Path) -> dict[str, Any]:
    return {
        "architecture": f"torchvision.models.{info.name}",
        "fc": "absent: set model.fc = torch.nn.Identity() before load_state_dict (the output is the feature vector)",
        "num_features": info.feature_dim,
        "image_size": info.image_size,
        "in_channels": info.channels,
        "mean": list(info.mean),
        "std": list(info.std),
        "sslcli": _provenance(info, meta, encoder_path),
    }


def check_torchvision_compatible(info: EncoderInfo) -> None:
    if info.name not in TORCHVISION_RESNETS or info.kwargs:
        raise UsageError(f"cannot export {info.name}{' with ' + json.dumps(info.kwargs) if info.kwargs else ''} "
                         f"to torchvision: only plain {', '.join(TORCHVISION_RESNETS)} share its layout; "
                         "use --to timm instead")


def _small_stem_from_config(folder: Path) -> bool:
    return bool(json.loads((Path(folder) / "config.json").read_text())["sslcli"]["small_stem"])


def load_timm(folder: Path) -> nn.Module:
    """The documented timm load: one create_model line, or three more for the small-image stem."""
    import timm
    from safetensors.torch import load_file

    folder = Path(folder)
    if not _small_stem_from_config(folder):
        return timm.create_model(f"local-dir:{folder}", pretrained=True)
    # The stem changes conv1's shape (plain ResNets) or stride (deep stems): build, change, then load.
    model = apply_small_stem(timm.create_model(f"local-dir:{folder}", pretrained=False))
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    return model


def load_torchvision(folder: Path) -> nn.Module:
    """The documented torchvision load: resnetNN() with fc = Identity, strict load of model.safetensors."""
    import torchvision
    from safetensors.torch import load_file

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    model = getattr(torchvision.models, config["architecture"].rsplit(".", 1)[1])()
    model.fc = nn.Identity()
    channels = config.get("in_channels", 3)
    if config["sslcli"]["small_stem"]:  # the CIFAR stem: 3x3 stride-1 conv1, no max-pool
        model.conv1 = nn.Conv2d(channels, model.conv1.out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif channels != 3:  # greyscale or multi-band: the same 7x7 stride-2 conv1 with other input channels
        model.conv1 = nn.Conv2d(channels, model.conv1.out_channels, 7, 2, 3, bias=False)
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    return model


def format_text(result: dict[str, Any]) -> str:
    return (f"{result['weights']}  ({result['architecture']}, {result['tensors']} tensors; "
            f"config {result['config']})")
