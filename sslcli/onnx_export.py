"""An encoder as one ONNX file, checked against torch in onnxruntime before it is kept.

The exporter is torch.onnx.export(dynamo=True), the torch.export-based one: the TorchScript tracer
(dynamo=False) still works on torch 2.14 but warns that it will be removed, and on a ViT built with
dynamic_img_size it warns that its trace may be wrong (Python numbers taken from tensors). The torch.export
graph has a symbolic batch dimension instead. It needs onnxscript, hence the `onnx` extra's three packages.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sslcli import data
from sslcli.encoders import EncoderInfo
from sslcli.errors import RunError, UsageError
from sslcli.extras import require
from sslcli.features import eval_view
from sslcli.files import atomic_file

# Opset 18: what the torch.export exporter produces natively (no version conversion pass), and what
# onnxruntime has run since 1.14.
OPSET = 18
INPUT, OUTPUT = "images", "features"
# onnxruntime and torch compute the same graph with other kernels: fp32 results agree to about 1e-6 (measured
# up to 5e-6 on a ViT); a difference past these bounds means the graph is not the model.
RTOL, ATOL = 1e-3, 1e-4
VERIFY_IMAGES = 8
EXPORT_BATCH = 2  # the example batch; the batch axis is exported as symbolic, so any size runs


def check_available() -> None:
    """Before any work: torch's exporter and the three packages of the `onnx` extra."""
    if torch.__version__ < "2.6":
        raise UsageError(f"--to onnx needs torch >= 2.6 (the torch.export-based exporter); this is {torch.__version__}")
    for module in ("onnx", "onnxscript", "onnxruntime"):
        require(module, "onnx", "--to onnx")


def verification_batch(info: EncoderInfo, data_dir: Path | None, count: int = VERIFY_IMAGES) -> torch.Tensor:
    """`count` images as the encoder sees them (the probe's decode, centre crop and normalisation): spread over
    DATA's sorted files when given, else a seeded batch of random pixels (the same on every run)."""
    storage = data.storage_size_for(info.image_size)
    if data_dir is None:
        generator = torch.Generator().manual_seed(0)
        raw = torch.randint(0, 256, (count, info.channels, storage, storage), dtype=torch.uint8, generator=generator)
        return eval_view(raw, info)
    paths = data.find_images(data_dir, name="--data").paths
    step = max(1, len(paths) // count)
    chosen, decoded = paths[::step], []
    for path in chosen:
        try:
            decoded.append(data.decode_image(path, storage, info.channels, info.interpolation))
        except data.BadImageError:
            continue  # an unreadable file verifies nothing; the others do
        if len(decoded) == count:
            break
    if not decoded:
        raise UsageError(f"no readable image in --data {data_dir} to verify the ONNX export on")
    return eval_view(torch.stack(decoded), info)


def write_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Export with a symbolic batch axis into one self-contained file (weights inside: under protobuf's 2 GB)."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    torch.onnx.export(model, (example[:EXPORT_BATCH],), str(path), input_names=[INPUT], output_names=[OUTPUT],
                      dynamic_shapes=({0: batch},), opset_version=OPSET, dynamo=True, external_data=False,
                      verbose=False)


def onnx_features(path: Path, x: torch.Tensor) -> torch.Tensor:
    """What onnxruntime computes from the file (on the CPU provider, available everywhere)."""
    ort = require("onnxruntime", "onnx", "--to onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run([OUTPUT], {INPUT: x.numpy()})[0])


def max_difference(path: Path, model: nn.Module, x: torch.Tensor) -> tuple[float, bool]:
    """(largest |onnxruntime - torch| over the batch, whether every value is within RTOL/ATOL)."""
    with torch.no_grad():
        expected = model(x)
    got = onnx_features(path, x)
    if got.shape != expected.shape:
        raise RunError(f"the ONNX model gives {list(got.shape)} features, torch {list(expected.shape)}")
    return float((got - expected).abs().max()), bool(torch.allclose(got, expected, rtol=RTOL, atol=ATOL))


def export(model: nn.Module, info: EncoderInfo, out: Path, data_dir: Path | None) -> dict[str, float | int]:
    """Write `out` only if onnxruntime reproduces torch's features on the verification batch; else exit 1 with
    the largest difference and nothing written."""
    model = model.eval().float().cpu()
    x = verification_batch(info, data_dir)
    with atomic_file(out) as tmp:
        with torch.no_grad():
            write_onnx(model, x, tmp)
        difference, close = max_difference(tmp, model, x)
        if not close:
            raise RunError(f"the ONNX export does not reproduce the encoder: onnxruntime and torch differ by up to "
                           f"{difference:.3g} on {len(x)} images (allowed {ATOL:g} + {RTOL:g} x |value|); "
                           f"nothing was written")
    return {"max_abs_difference": difference, "verified_images": len(x), "opset": OPSET}
