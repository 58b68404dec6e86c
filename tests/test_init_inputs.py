"""What starting weights fix about the input, and what the user sets over them: the resampling filter
(data.interpolation), the normalisation (data.mean, data.std) and the channels (an RGB input conv adapted to
data.channels by timm's adapt_input_conv).

Offline: the weights are built on disk (tests.test_init_weights' local-dir folder and torchvision file)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sslcli import cache, checkpoint, data, weights
from sslcli.errors import UsageError
from sslcli.spec import PretrainSpec, resolve
from tests.test_cli import assert_one_clean_error, sslcli_run
from tests.test_init_weights import _offline_hub, local_dir, torchvision_file  # noqa: F401 - fixtures
from tests.test_inputs import _generated

# ---------------------------------------------------------------- interpolation


@pytest.mark.parametrize("name", ["bilinear", "bicubic", "nearest"])
def test_decoding_resizes_with_the_named_filter_as_torchvision_does(tmp_path: Path, name: str):
    from torchvision import transforms

    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(path)
    decoded = data.decode_image(path, 16, interpolation=name)
    reference = transforms.Compose([transforms.Resize(16, interpolation=transforms.InterpolationMode[name.upper()]),
                                    transforms.CenterCrop(16), transforms.PILToTensor()])(Image.open(path))
    assert torch.equal(decoded, reference)
    if name != "bilinear":
        assert not torch.equal(decoded, data.decode_image(path, 16))  # bilinear stays the default


def test_the_decode_cache_key_names_the_filter_and_keeps_the_bilinear_caches(tmp_path: Path):
    paths = [tmp_path / "a.png"]
    Image.new("RGB", (20, 20)).save(paths[0])
    keys = {name: cache.cache_key(paths, 16, 3, name) for name in ("bilinear", "bicubic", "nearest")}
    assert len(set(keys.values())) == 3 and keys["bilinear"] == cache.cache_key(paths, 16)


def test_init_takes_the_weights_filter_and_normalisation_and_probe_embed_export_reuse_them(
        local_dir: Path, cifar_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: F811
    run = tmp_path / "run"
    proc = sslcli_run("pretrain", str(cifar_tiny), "--init", f"local-dir:{local_dir}", "--epochs", "1",
                      "--batch-size", "32", "--out", str(run), "--set", "monitor.report=false",
                      "--set", "monitor.knn_every=0", "--set", "data.num_workers=0")
    assert proc.returncode == 0, proc.stderr
    assert "data.interpolation auto: bicubic, the resampling filter of local-dir:" in proc.stderr
    assert json.loads((run / "spec.json").read_text())["data"]["interpolation"] == "bicubic"
    _, info, meta = checkpoint.load_encoder(run / "encoder.safetensors")
    assert meta["interpolation"] == "bicubic" and info.interpolation == "bicubic"
    assert info.mean == (0.5, 0.4, 0.3) and info.std == (0.2, 0.25, 0.3)  # the weights' over the default

    from torchvision import transforms

    from sslcli.api import load_encoder
    from sslcli.commands import export, probe
    from sslcli.spec import ExportSpec, ProbeSpec

    resize = next(t for t in load_encoder(run).transform.transforms if isinstance(t, transforms.Resize))
    assert resize.interpolation == transforms.InterpolationMode.BICUBIC
    folder = tmp_path / "cache"
    monkeypatch.setenv("SSLCLI_CACHE_DIR", str(folder))
    probe.run(resolve(ProbeSpec, options={"encoder": str(run), "data.path": str(cifar_tiny), "probe.baseline": False,
                                          "data.cache": "on", "probe.knn_k": [5]}))
    written = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    assert written and all(m["interpolation"] == "bicubic" for m in written)  # probe decoded with the filter
    export.run(resolve(ExportSpec, options={"encoder": str(run), "to": "timm", "out": str(tmp_path / "timm")}))
    config = json.loads((tmp_path / "timm" / "config.json").read_text())["pretrained_cfg"]
    assert config["interpolation"] == "bicubic" and config["mean"] == [0.5, 0.4, 0.3]


def test_the_user_filter_and_normalisation_win_over_the_weights(local_dir: Path, cifar_tiny: Path,  # noqa: F811
                                                                tmp_path: Path):
    run = tmp_path / "run"
    proc = sslcli_run("pretrain", str(cifar_tiny), "--init", f"local-dir:{local_dir}", "--epochs", "1",
                      "--batch-size", "32", "--out", str(run), "--set", "monitor.report=false",
                      "--set", "monitor.knn_every=0", "--set", "data.num_workers=0",
                      "--set", "data.interpolation=nearest", "--set", "data.mean=[0.1, 0.2, 0.3]",
                      "--set", "data.std=[0.3, 0.4, 0.5]")
    assert proc.returncode == 0, proc.stderr
    assert "data.interpolation auto" not in proc.stderr
    meta = checkpoint.read_metadata(run / "encoder.safetensors")
    assert meta["interpolation"] == "nearest"
    assert json.loads(meta["mean"]) == [0.1, 0.2, 0.3] and json.loads(meta["std"]) == [0.3, 0.4, 0.5]
    state = json.loads(next((run / "checkpoints").glob("state-*.json")).read_text())
    assert state["fingerprint_parts"]["interpolation"] == "nearest"
    assert state["fingerprint_parts"]["normalisation"] == {"mean": [0.1, 0.2, 0.3], "std": [0.3, 0.4, 0.5]}


def test_without_init_the_default_is_bilinear_and_a_user_mean_is_used(tmp_path: Path):
    from sslcli.pretraining import build_model, loop_config

    spec = resolve(PretrainSpec, options={"data.image_size": 16, "method.name": "simclr", "encoder.name": "resnet10t"},
                   sets=["data.mean=[0.2, 0.3, 0.4]"])
    model = build_model(spec, loop_config(spec, 1, torch.device("cpu")), torch.device("cpu"))
    assert model.info.interpolation == "bilinear" and model.info.mean == (0.2, 0.3, 0.4)
    assert model.info.std == (0.229, 0.224, 0.225)  # ImageNet's, as before
    assert model.augment.mean == pytest.approx((0.2, 0.3, 0.4))


# ---------------------------------------------------------------- mean and std


@pytest.mark.parametrize(("sets", "fragment"), [
    (["data.mean=[0.5]"], "data.mean has 1 value(s) but data.channels is 3"),
    (["data.channels=1", "data.std=[0.2, 0.2, 0.2]"], "data.std has 3 value(s) but data.channels is 1"),
    (["data.std=[0.2, 0, 0.2]"], "data.std"),
    (["data.mean=[0.5, nan, 0.5]"], "data.mean"),
    (["data.interpolation=lanczos"], "data.interpolation"),
])
def test_a_normalisation_or_filter_that_does_not_fit_is_a_spec_error(sets: list[str], fragment: str):
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        resolve(PretrainSpec, options={"data.image_size": 32}, sets=sets)


def test_a_wrong_mean_on_the_command_line_is_one_line_and_exit_2(cifar_tiny: Path):
    proc = sslcli_run("pretrain", str(cifar_tiny), "--set", "data.mean=[0.5, 0.5]", "--set", "data.image_size=32",
                      "--dry-run")
    assert_one_clean_error(proc, 2, "data.mean has 2 value(s) but data.channels is 3")


# ---------------------------------------------------------------- channels


@pytest.mark.parametrize("channels", [1, 4])
def test_rgb_weights_adapted_to_other_channels_are_timms_adapt_input_conv(local_dir: Path,  # noqa: F811
                                                                           channels: int, capsys):
    from timm.models import adapt_input_conv

    source = weights.locate(f"local-dir:{local_dir}")
    model, info = weights.build_from(source, "resnet10t", None, channels=channels)
    saved = load_file(local_dir / "model.safetensors")
    state = model.state_dict()
    assert torch.equal(state["conv1.0.weight"], adapt_input_conv(channels, saved["conv1.0.weight"]))
    assert state["conv1.0.weight"].shape[1] == channels
    for key, value in state.items():  # everything else as saved, bit for bit
        if key != "conv1.0.weight":
            assert torch.equal(value, saved[key]), key
    assert info.channels == channels and info.mean == (0.5,) * channels and info.std == (0.25,) * channels
    assert info.init["adapted_input_conv"] == {"convs": ["conv1.0"], "from": 3, "to": channels,
                                               "by": "timm.models.adapt_input_conv"}
    lines = [line for line in capsys.readouterr().err.splitlines() if "adapt_input_conv" in line]
    assert len(lines) == 1 and f"adapted from 3 to {channels} channels" in lines[0]


def test_a_torchvision_resnet_adapted_to_greyscale_sums_its_rgb_filters(torchvision_file: Path):  # noqa: F811
    model, info = weights.build_from(weights.locate(str(torchvision_file)), "resnet18", 64, channels=1)
    expected = load_file(torchvision_file)["conv1.weight"].sum(dim=1, keepdim=True)
    assert torch.allclose(model.conv1.weight, expected) and info.init["adapted_input_conv"]["to"] == 1


def test_an_sslcli_rgb_encoder_as_init_is_adapted_too(encoder_file: Path):
    from timm.models import adapt_input_conv

    model, info = weights.build_from(weights.locate(str(encoder_file)), "resnet10t", None, channels=1)
    rgb = checkpoint.load_encoder(encoder_file)[0].state_dict()["conv1.0.weight"]
    assert torch.equal(model.state_dict()["conv1.0.weight"], adapt_input_conv(1, rgb))
    assert info.channels == 1 and info.mean == (0.5,) and info.init["adapted_input_conv"]["from"] == 3


@pytest.mark.parametrize(("kind", "channels"), [("grey", 1), ("bands", 4)])
def test_pretrain_from_rgb_weights_on_other_channels_then_probe(local_dir: Path, tmp_path: Path,  # noqa: F811
                                                                kind: str, channels: int):
    train, val = _generated(tmp_path, kind)
    run = tmp_path / "run"
    proc = sslcli_run("pretrain", str(train), "--val", str(val), "--init", f"local-dir:{local_dir}", "--epochs", "1",
                      "--batch-size", "8", "--out", str(run), "--set", f"data.channels={channels}",
                      "--set", "monitor.report=false", "--set", "monitor.knn_every=0", "--set", "data.num_workers=0")
    assert proc.returncode == 0, proc.stderr
    assert f"adapted from 3 to {channels} channels by timm's adapt_input_conv" in proc.stderr
    _, info, meta = checkpoint.load_encoder(run / "encoder.safetensors")
    assert info.channels == channels and json.loads(meta["init"])["adapted_input_conv"]["to"] == channels
    from sslcli.commands import inspect

    shown = inspect.format_text(inspect.run(resolve(inspect.InspectSpec, options={"file": str(run / "encoder.safetensors")})))
    assert f"input conv conv1.0 adapted from 3 to {channels} channels" in shown
    from sslcli.commands import probe
    from sslcli.spec import ProbeSpec

    result = probe.run(resolve(ProbeSpec, options={"encoder": str(run), "data.path": str(train), "data.val": str(val),
                                                   "probe.baseline": False, "probe.start": "pretrained",
                                                   "probe.knn_k": [3]}))
    assert result["n_eval"] == 8 and result["start"]["sha256"] == weights.sha256_of(local_dir / "model.safetensors")
    assert 0 <= result["start"]["knn"]["k3"]["top1"] <= 1


def test_a_distill_teacher_takes_four_channel_views_through_its_adapted_conv(local_dir: Path):  # noqa: F811
    from timm.models import adapt_input_conv

    from sslcli.encoders import build_encoder
    from sslcli.methods import method_class
    from sslcli.methods.base import Budget
    from sslcli.methods.distill.config import DistillConfig

    encoder, info = build_encoder("resnet10t", 16, small_stem=False, channels=4)
    model = method_class("distill")(DistillConfig(teacher=f"local-dir:{local_dir}", proj_hidden_dim=32), encoder,
                                    info.feature_dim, Budget(1, 1, 0))
    saved = load_file(local_dir / "model.safetensors")["conv1.0.weight"]
    assert torch.equal(model.teacher.conv1[0].weight, adapt_input_conv(4, saved))
    out = model([torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)], 0)
    assert torch.isfinite(out.loss) and model.teacher_input(torch.zeros(1, 4, 16, 16)).shape == (1, 4, 24, 24)


def test_video_input_keeps_the_bilinear_frames_and_says_so(tmp_path: Path):
    from sslcli.pretraining import load_data

    spec = resolve(PretrainSpec, options={"data.path": str(tmp_path), "method.name": "tcn", "data.image_size": 32},
                   sets=["data.interpolation=bicubic"])
    with pytest.raises(UsageError, match="video frames are resized bilinearly.*not bicubic"):
        load_data(spec, torch.device("cpu"))
