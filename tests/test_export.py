"""sslcli export: the documented timm and torchvision loads give the same features as sslcli's own loader."""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch
import torchvision
from safetensors.torch import load_file
from torch import nn

from sslcli import checkpoint, data
from sslcli.commands.export import run as run_export
from sslcli.encoders import apply_small_stem
from sslcli.features import eval_view
from sslcli.spec import ExportSpec
from tests.test_cli import assert_one_clean_error, sslcli_run


def real_batch(cifar_small: Path, info) -> torch.Tensor:
    """Eight real test images, preprocessed the way probe and embed do."""
    paths = data.find_images(cifar_small / "test").paths[::25]
    raw = torch.stack([data.decode_image(p, data.storage_size_for(info.image_size)) for p in paths])
    return eval_view(raw, info)


@torch.no_grad()
def reference_features(encoder: Path, cifar_small: Path) -> tuple[torch.Tensor, torch.Tensor]:
    model, info, _ = checkpoint.load_encoder(encoder)
    x = real_batch(cifar_small, info)
    return x, model.eval()(x)


@torch.no_grad()
def test_timm_export_loads_with_one_line_and_matches(tmp_path: Path, resnet10t_encoder: Path, cifar_small: Path):
    proc = sslcli_run("export", str(resnet10t_encoder), "--to", "timm", "--out", str(tmp_path / "timm"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["architecture"] == "resnet10t"
    config = json.loads((tmp_path / "timm" / "config.json").read_text())
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32] and config["num_features"] == 512
    model = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()  # the README's line
    x, expected = reference_features(resnet10t_encoder, cifar_small)
    assert torch.allclose(model(x), expected, atol=1e-5)
    # And with a new head for fine-tuning elsewhere: the backbone still loads, the head is fresh.
    classifier = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True, num_classes=7).eval()
    assert classifier(x).shape == (len(x), 7)
    assert torch.allclose(classifier.forward_head(classifier.forward_features(x), pre_logits=True), expected,
                          atol=1e-5)


@torch.no_grad()
def test_timm_export_of_a_small_stem_encoder(tmp_path: Path, resnet18_encoder: Path, cifar_small: Path):
    run_export(ExportSpec(encoder=resnet18_encoder, to="timm", out=tmp_path))
    assert json.loads((tmp_path / "config.json").read_text())["sslcli"]["small_stem"] is True
    model = apply_small_stem(timm.create_model(f"local-dir:{tmp_path}", pretrained=False))
    model.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    x, expected = reference_features(resnet18_encoder, cifar_small)
    assert torch.allclose(model.eval()(x), expected, atol=1e-5)


@torch.no_grad()
def test_torchvision_export_loads_strictly_and_matches(tmp_path: Path, resnet18_encoder: Path, cifar_small: Path):
    proc = sslcli_run("export", str(resnet18_encoder), "--to", "torchvision", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    model = torchvision.models.resnet18()
    model.fc = nn.Identity()
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # the small-image stem, as the README says
    model.maxpool = nn.Identity()
    model.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    x, expected = reference_features(resnet18_encoder, cifar_small)
    assert torch.allclose(model.eval()(x), expected, atol=1e-5)


def test_torchvision_export_refuses_other_architectures(tmp_path: Path, resnet10t_encoder: Path):
    proc = sslcli_run("export", str(resnet10t_encoder), "--to", "torchvision", "--out", str(tmp_path / "tv"))
    assert_one_clean_error(proc, 2, "cannot export resnet10t to torchvision", "--to timm")
    assert not (tmp_path / "tv").exists()
