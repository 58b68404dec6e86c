"""sslcli finetune: a classifier on the encoder, trained by train.fit, scored on val every epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sslcli import checkpoint, data
from sslcli.commands.finetune import build_classifier, head_keys, labeled_splits, make_optimizer
from sslcli.errors import RunError, UsageError
from sslcli.features import eval_view
from sslcli.spec import FinetuneSpec
from tests.test_cli import sslcli_run


def test_finetune_end_to_end_on_a_label_fraction(tmp_path: Path, resnet10t_encoder: Path, cifar_small: Path):
    out = tmp_path / "ft"
    proc = sslcli_run("finetune", str(resnet10t_encoder), "--data", str(cifar_small), "--label-fraction", "0.25",
                      "--epochs", "2", "--batch-size", "32", "--out", str(out), "--set", "augment.mixup_alpha=0.2",
                      "--set", "augment.cutmix_alpha=1.0", "--set", "train.log_every=1", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["n_train"] == 100 and result["n_eval"] == 200 and result["steps"] == 6
    assert [h["epoch"] for h in result["history"]] == [1, 2]  # val scored after every epoch
    assert json.loads((out / "finetune.json").read_text())["top1"] == result["top1"]
    assert "val top-1" in proc.stderr and (out / "metrics.jsonl").is_file()

    with safe_open(str(out / "classifier.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["sslcli_format"] == "sslcli.classifier.v1" and meta["source_encoder"] == str(resnet10t_encoder)
    assert json.loads(meta["classes"])[0] == "airplane" and meta["source_method"] == "random-init"
    model = timm.create_model(meta["encoder"], num_classes=int(meta["num_classes"]))
    model.load_state_dict(load_file(out / "classifier.safetensors"), strict=True)
    # Re-scoring the saved classifier reproduces the reported top-1: the file is the model that was scored.
    _, info, _ = checkpoint.load_encoder(resnet10t_encoder)
    val = data.find_images(cifar_small / "test")
    x = eval_view(torch.stack([data.decode_image(p, 32) for p in val.paths]), info)
    with torch.no_grad():
        top1 = (model.eval()(x).argmax(1) == torch.tensor(val.labels)).float().mean().item()
    assert top1 == pytest.approx(result["top1"], abs=1e-6)


def test_classifier_holds_the_encoder_weights_and_a_fresh_head(resnet10t_encoder: Path):
    encoder, info, _ = checkpoint.load_encoder(resnet10t_encoder)
    model = build_classifier(info, encoder, num_classes=3)
    assert head_keys(model) == {"fc.weight", "fc.bias"} and model.fc.out_features == 3
    for key, value in encoder.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    damaged = timm.create_model("resnet18", num_classes=0)  # the wrong architecture for this metadata
    with pytest.raises(RunError, match="do not fit a resnet10t classifier"):
        build_classifier(info, damaged, num_classes=3)


def test_layer_decay_groups_carry_lr_scale_for_the_loop():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=5)
    spec = FinetuneSpec(optim={"layer_decay": 0.5})
    scales = sorted({group["lr_scale"] for group in make_optimizer(model, spec).param_groups})
    assert scales[-1] == 1.0 and scales[0] == pytest.approx(0.5 ** 13)  # 12 blocks + embeddings below the head
    plain = make_optimizer(model, FinetuneSpec(optim={"name": "sgd"}))
    assert all("lr_scale" not in group for group in plain.param_groups)


def test_finetune_needs_labeled_data(tmp_path: Path, cifar_small: Path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in data.find_images(cifar_small / "test").paths[:4]:
        (flat / p.name).symlink_to(p)
    with pytest.raises(UsageError, match="not labeled"):
        labeled_splits(FinetuneSpec(data={"train": flat, "val": cifar_small / "test"}))
