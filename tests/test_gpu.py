"""CUDA paths: run with `make test-gpu` on a machine with a GPU (deselected by `make test`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sslcli.augment import Augmenter, ViewConfig
from tests.test_cli import sslcli_run

pytestmark = pytest.mark.gpu


def test_augment_on_cuda_stays_on_device_and_matches_cpu_statistics():
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    views = [ViewConfig(size=32)] * 2
    cuda = Augmenter(views, (0.5,) * 3, (0.25,) * 3, torch.Generator("cuda").manual_seed(0))(x.cuda())
    cpu = Augmenter(views, (0.5,) * 3, (0.25,) * 3, torch.Generator().manual_seed(0))(x)
    assert all(v.is_cuda and v.dtype == torch.float32 for v in cuda)
    for a, b in zip(cuda, cpu, strict=True):
        assert torch.isfinite(a).all()
        assert abs(a.mean().item() - b.mean().item()) < 0.2  # same recipe, different random streams


def test_pretrain_bf16_channels_last_on_cuda(cifar_small: Path, tmp_path: Path):
    run = tmp_path / "run"
    proc = sslcli_run("pretrain", str(cifar_small), "--preset", "quickstart", "--epochs", "1", "--batch-size", "64",
                      "--out", str(run), "--set", "train.device=cuda", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["device"].startswith("cuda") and summary["final_loss"] > 0
    assert "(bf16)" in proc.stderr
    probe = sslcli_run("probe", str(run / "encoder.safetensors"), "--data", str(cifar_small), "--json")
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout)["linear"]["top1"] > 0.1


def test_fp16_with_grad_scaler_and_compile_on_cuda(cifar_small: Path, tmp_path: Path):
    proc = sslcli_run("pretrain", str(cifar_small), "--preset", "quickstart", "--epochs", "1", "--batch-size", "64",
                      "--out", str(tmp_path / "run"), "--set", "train.device=cuda", "--set", "train.precision=fp16",
                      "--set", "train.compile=true", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["final_loss"] > 0


@pytest.mark.parametrize("method", ["simclr", "mocov2", "mocov3", "byol", "simsiam", "swav", "barlow", "vicreg",
                                    "dino", "mae"])
def test_every_cpu_preset_trains_on_cuda_in_bf16(method: str, cifar_small: Path, tmp_path: Path):
    proc = sslcli_run("pretrain", str(cifar_small), "--preset", f"{method}-cpu", "--epochs", "2", "--batch-size",
                      "64", "--out", str(tmp_path / "run"), "--set", "train.device=cuda", "--set",
                      "data.max_images=256", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["device"].startswith("cuda") and summary["steps"] == 8
