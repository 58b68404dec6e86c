"""sslcli export: the documented timm, Hub, torchvision and ONNX loads give the same features as sslcli's own loader."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
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


# ---------------------------------------------------------------- ONNX


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_onnx_export_matches_torch_at_any_batch_size(tmp_path: Path, resnet10t_encoder: Path, cifar_small: Path):
    import onnxruntime

    out = tmp_path / "encoder.onnx"
    proc = sslcli_run("export", str(resnet10t_encoder), "--to", "onnx", "--out", str(out),
                      "--data", str(cifar_small / "test"), "--json", "-q")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr  # the exporter's own chatter stays out
    result = json.loads(proc.stdout)
    assert result["verified_images"] == 8 and result["max_abs_difference"] <= result["atol"]
    assert result["opset"] == 18 and leftovers(tmp_path) == []
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x, expected = reference_features(resnet10t_encoder, cifar_small)
    for batch in (x[:1], x[:5], x):  # the batch axis is dynamic: one image, or any number
        got = torch.from_numpy(session.run(["features"], {"images": batch.numpy()})[0])
        assert torch.allclose(got, expected[:len(batch)], rtol=1e-3, atol=1e-4)


def test_onnx_export_that_does_not_match_is_not_kept(tmp_path: Path, resnet10t_encoder: Path, monkeypatch,
                                                     capsys):
    from sslcli import onnx_export
    from sslcli.cli import main

    real = onnx_export.onnx_features
    monkeypatch.setattr(onnx_export, "onnx_features", lambda path, x: real(path, x) + 0.05)
    out = tmp_path / "encoder.onnx"
    with pytest.raises(SystemExit) as stopped:
        main(["export", str(resnet10t_encoder), "--to", "onnx", "--out", str(out), "-q"])
    assert stopped.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "differ by up to 0.05" in err[0] and "nothing was written" in err[0], err
    assert not out.exists() and leftovers(tmp_path) == []


def test_onnx_without_its_extra_names_the_install(tmp_path: Path, resnet10t_encoder: Path, monkeypatch, capsys):
    import importlib

    from sslcli.cli import main

    real = importlib.import_module

    def without_onnxruntime(name: str, *args):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_onnxruntime)
    with pytest.raises(SystemExit) as stopped:
        main(["export", str(resnet10t_encoder), "--to", "onnx", "--out", str(tmp_path / "e.onnx")])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == ("error: --to onnx needs the optional package onnxruntime: "
                                               "pip install 'sslcli[onnx]'")


def test_onnx_refuses_an_out_that_is_not_an_onnx_file(tmp_path: Path, resnet10t_encoder: Path):
    proc = sslcli_run("export", str(resnet10t_encoder), "--to", "onnx", "--out", str(tmp_path / "folder"))
    assert_one_clean_error(proc, 2, "--out must end in .onnx")


# ---------------------------------------------------------------- the Hugging Face Hub folder


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, re.S)


def run_card_code(folder: Path, image) -> dict:
    """Run the model card's two code blocks exactly as written (the second with `image` given)."""
    blocks = python_blocks((folder / "README.md").read_text())
    assert len(blocks) == 2, blocks
    namespace: dict = {}
    exec(blocks[0], namespace)
    namespace["image"] = image
    with torch.no_grad():
        exec(blocks[1], namespace)
    return namespace


@torch.no_grad()
def test_hf_export_loads_offline_with_timm_and_carries_the_probe(tmp_path: Path, resnet10t_encoder: Path,
                                                                  cifar_tiny: Path, cifar_small: Path):
    from PIL import Image

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    encoder = run_dir / "encoder.safetensors"
    encoder.write_bytes(resnet10t_encoder.read_bytes())
    probed = sslcli_run("probe", str(encoder), "--data", str(cifar_tiny), "--no-baseline", "-q", "--json")
    assert probed.returncode == 0, probed.stderr
    knn = json.loads(probed.stdout)["knn"]["k20"]["top1"]
    out = tmp_path / "hub"
    proc = sslcli_run("export", str(run_dir), "--to", "hf", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["probe_results"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["num_classes"] == 0 and config["architecture"] == "resnet10t"
    assert {"mean", "std", "input_size", "interpolation", "crop_pct", "crop_mode"} <= set(config["pretrained_cfg"])
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: timm\n") and "pipeline_tag: image-feature-extraction" in card
    assert f"{100 * knn:.2f} %" in card and "hf upload ORG/NAME" in card
    x, expected = reference_features(resnet10t_encoder, cifar_small)
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()  # offline: a local folder
    assert torch.equal(model(x), expected)
    path = data.find_images(cifar_small / "test").paths[0]
    namespace = run_card_code(out, Image.open(path))
    assert torch.equal(namespace["model"](x), expected)
    _, info, _ = checkpoint.load_encoder(resnet10t_encoder)
    first = eval_view(data.decode_image(path, data.storage_size_for(32))[None], info)
    assert torch.allclose(namespace["features"], namespace["model"](first), atol=1e-5)


@pytest.mark.parametrize("stem", ["conv", "deep"])
@torch.no_grad()
def test_hf_export_of_a_small_stem_encoder_loads_with_the_card_s_lines(tmp_path: Path, stem: str,
                                                                        resnet18_encoder: Path, cifar_small: Path):
    from PIL import Image

    from bench.common import save_random_encoder

    encoder = resnet18_encoder if stem == "conv" else save_random_encoder(
        tmp_path / "r10t-small" / "encoder.safetensors", "resnet10t", 32, True, spec={"note": "test"})
    out = tmp_path / "hub"
    run_export(ExportSpec(encoder=encoder, to="hf", out=out))
    config = json.loads((out / "config.json").read_text())
    assert config["sslcli"]["small_stem"] is True and "must be applied" in config["sslcli"]["small_stem_load"]
    assert "The CIFAR stem must be applied by hand" in (out / "README.md").read_text()
    x, expected = reference_features(encoder, cifar_small)
    path = data.find_images(cifar_small / "test").paths[0]
    namespace = run_card_code(out, Image.open(path))
    assert torch.equal(namespace["model"](x), expected)
    # The card's preprocessing block (timm's transform from config.json) gives what sslcli's evaluation gives.
    model, info, _ = checkpoint.load_encoder(encoder)
    first = eval_view(data.decode_image(path, data.storage_size_for(32))[None], info)
    assert torch.allclose(namespace["features"], model.eval()(first), atol=1e-5)
    # Without the card's lines the standard stem is built: a plain stem refuses the weights, a deep stem takes
    # them and computes something else, which is why the card says so in bold.
    if stem == "conv":
        with pytest.raises(RuntimeError, match="size mismatch"):
            timm.create_model(f"local-dir:{out}", pretrained=True)
    else:
        plain = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        assert not torch.allclose(plain(x), expected, atol=1e-3)
