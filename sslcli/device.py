"""Where and in what precision a run computes: the device, mixed precision, channels_last and the sync-free
step, each 'auto' setting resolved for the machine at hand. Shared by every command that runs a model, so
probe, embed and report need not import the training loop."""

from __future__ import annotations

import torch

from sslcli.errors import UsageError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"device '{name}' is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device '{name}' was asked for but CUDA is not available here; use --set train.device=cpu")
    return device


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls and convs run natively (elsewhere they are emulated and slower)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto': bf16 on CUDA (no loss scaling needed) and on CPUs with native bf16, else fp32.

    Measured on a 2-core AVX512-BF16 EPYC: a resnet10t SimCLR step runs 1.4x faster in bf16 autocast.
    """
    if precision == "auto":
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
        return "bf16" if native else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise UsageError("fp16 needs a CUDA device; use --set train.precision=fp32 (or bf16)")
    return precision


def resolve_sync_free(setting: bool | str, device: torch.device) -> bool:
    """'auto': on for CUDA (bf16, fp32 and fp16), where a per-step host read leaves the GPU idle; off on
    CPU, where the read costs nothing."""
    if setting != "auto":
        return bool(setting)
    return device.type == "cuda"


def resolve_channels_last(setting: bool | str, device: torch.device) -> bool:
    """'auto': on for CUDA and for CPUs with oneDNN, whose convolutions are faster in NHWC (+10 % measured)."""
    if setting != "auto":
        return bool(setting)
    return device.type == "cuda" or (device.type == "cpu" and torch.backends.mkldnn.is_available())


def prepare_device(device: torch.device) -> None:
    """On CUDA: cuDNN picks the fastest convolution for the (fixed) input shapes, and fp32 matmuls and
    convolutions use TF32 tensor cores (bf16 autocast covers most of the step; the rest is fp32)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a clock read that must include it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
