"""`sslcli export`: an sslcli encoder as a timm local-dir model folder, a Hugging Face Hub folder (the timm
folder plus a model card), a torchvision ResNet state dict, or one ONNX file.

The folders hold the weights as safetensors (no pickle) plus a config.json; every export is checked before
anything is reported as done: the folders by loading them back the way the docs tell users to, the ONNX file
by running it in onnxruntime against torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save as save_bytes
from torch import nn

from sslcli import checkpoint, console, hub_folder
from sslcli.encoders import EncoderInfo, apply_small_stem
from sslcli.errors import UsageError
from sslcli.files import atomic_write_bytes, atomic_write_json
from sslcli.hub_folder import provenance, timm_config
from sslcli.spec import ExportSpec

# timm's plain ResNets use torchvision's layer names one for one; the d/t variants (deep stem, average-pool
# shortcut) and other widths have modules torchvision does not, so they are refused rather than guessed.
TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def run(spec: ExportSpec) -> dict[str, Any]:
    if spec.to == "onnx":
        return run_onnx(spec)
    if spec.data is not None:
        raise UsageError("--data is for --to onnx (the images its export is verified on)")
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
    if to in ("timm", "hf"):
        config = timm_config(info, meta, encoder_path, classifier=encoder.pretrained_cfg.get("classifier"))
    else:
        config = torchvision_config(info, meta, encoder_path)
    # The exported folder holds the encoder alone: drop the pointer to a projection head left beside the source.
    exported_meta = {key: value for key, value in meta.items() if key != "projector"}
    atomic_write_bytes(out / "model.safetensors", save_bytes(state, metadata=exported_meta))
    atomic_write_json(out / "config.json", config)
    result = {"to": to, "out": str(out), "weights": str(out / "model.safetensors"), "config": str(out / "config.json"),
              "encoder": str(encoder_path), "architecture": config["architecture"], "small_stem": info.small_stem,
              "tensors": len(state)}
    if to == "hf":
        # The card's code names the folder absolutely, so it runs from anywhere on this machine.
        card = hub_folder.card(info, meta, Path(encoder_path), out.resolve(), stem_is_conv=_stem_is_conv(encoder))
        atomic_write_bytes(out / "README.md", card.encode("utf-8", errors="surrogateescape"))
        result["card"] = str(out / "README.md")
        result["probe_results"] = len(hub_folder.probe_results(Path(encoder_path)))
    load_torchvision(out) if to == "torchvision" else load_timm(out)  # proves the documented load works
    console.info(f"exported {info.name} for {to} to {out}")
    return result


def _stem_is_conv(encoder: nn.Module) -> bool:
    """A plain ResNet stem (one conv) rather than a deep stem (a Sequential): the card's stem lines differ."""
    return isinstance(getattr(encoder, "conv1", None), nn.Conv2d)


def run_onnx(spec: ExportSpec) -> dict[str, Any]:
    """One .onnx file with a dynamic batch axis, kept only if onnxruntime reproduces torch's features."""
    from sslcli import onnx_export

    out = Path(spec.out)
    if out.suffix != ".onnx":
        raise UsageError(f"--to onnx writes one file: --out must end in .onnx (got {out})")
    if out.exists():
        raise UsageError(f"{out} already exists; choose another --out so nothing is overwritten")
    onnx_export.check_available()
    encoder, info, _ = checkpoint.load_encoder(spec.encoder)
    console.info(f"exporting {info.name} to ONNX (opset {onnx_export.OPSET}), then checking it in onnxruntime on "
                 + (f"images of {spec.data}" if spec.data else "a seeded batch of random images"))
    checked = onnx_export.export(encoder, info, out, spec.data)
    console.info(f"onnxruntime matches torch on {checked['verified_images']} images "
                 f"(max difference {checked['max_abs_difference']:.2g})")
    return {"to": "onnx", "out": str(out), "encoder": str(spec.encoder), "architecture": info.name,
            "input": onnx_export.INPUT, "output": onnx_export.OUTPUT, "image_size": info.image_size,
            "feature_dim": info.feature_dim, "verified_on": str(spec.data) if spec.data else "random images (seed 0)",
            "rtol": onnx_export.RTOL, "atol": onnx_export.ATOL, **checked}


def torchvision_config(info: EncoderInfo, meta: dict[str, str], encoder_path: Path) -> dict[str, Any]:
    return {
        "architecture": f"torchvision.models.{info.name}",
        "fc": "absent: set model.fc = torch.nn.Identity() before load_state_dict (the output is the feature vector)",
        "num_features": info.feature_dim,
        "image_size": info.image_size,
        "in_channels": info.channels,
        "interpolation": info.interpolation,
        "mean": list(info.mean),
        "std": list(info.std),
        "sslcli": provenance(info, meta, encoder_path),
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
    if result["to"] == "onnx":
        return (f"{result['out']}  ({result['architecture']}, input {result['input']} [N, 3, {result['image_size']}, "
                f"{result['image_size']}], output {result['output']} [N, {result['feature_dim']}]; onnxruntime "
                f"matches torch to {result['max_abs_difference']:.2g} on {result['verified_images']} images)")
    card = f"; model card {result['card']}" if "card" in result else ""
    return (f"{result['weights']}  ({result['architecture']}, {result['tensors']} tensors; "
            f"config {result['config']}{card})")
