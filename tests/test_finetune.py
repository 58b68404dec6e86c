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
from sslcli.errors import RunError, UsageError
from sslcli.features import eval_view
from sslcli.finetuning import build_classifier, head_keys, kept_layers, kept_projection, make_optimizer
from sslcli.spec import FinetuneSpec
from sslcli.splits import labeled_splits
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
        labeled_splits(flat, cifar_small / "test", None, 0)


# ---------------------------------------------------------------- SimCLR v2: fine-tuning from a projection layer


@pytest.fixture(scope="module")
def simclr_run(tmp_path_factory: pytest.TempPathFactory, cifar_tiny: Path) -> Path:
    """A real 2-step SimCLR run with a 3-layer projection head: encoder.safetensors + projector.safetensors."""
    from sslcli.commands import pretrain
    from sslcli.spec import PretrainSpec, resolve

    run = tmp_path_factory.mktemp("simclrv2") / "run"
    sets = ["data.max_images=64", "train.batch_size=32", "train.epochs=1", "data.num_workers=0", "data.image_size=16",
            "monitor.knn_every=0", "monitor.report=false", "encoder.name=resnet10t", "encoder.small_stem=false",
            "method.proj_layers=3", "method.proj_hidden_dim=32", "method.proj_out_dim=16"]
    pretrain.run(resolve(PretrainSpec, options={"method.name": "simclr", "data.path": str(cifar_tiny), "out": str(run)},
                         sets=sets))
    return run


def test_simclr_saves_its_trained_projector_beside_an_unchanged_encoder(simclr_run: Path):
    with safe_open(str(simclr_run / "encoder.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["projector"] == "projector.safetensors"
    # The encoder file is still the plain timm state dict: timm alone loads it strictly, sslcli's loader too.
    model = timm.create_model("resnet10t", num_classes=0)
    model.load_state_dict(load_file(simclr_run / "encoder.safetensors"), strict=True)
    checkpoint.load_encoder(simclr_run / "encoder.safetensors")
    head, layout = checkpoint.load_projector(simclr_run / "encoder.safetensors")
    assert (layout.in_dim, layout.hidden_dim, layout.out_dim, layout.num_layers) == (512, 32, 16, 3)
    state = load_file(str(checkpoint.complete_states(simclr_run / "checkpoints")[-1]))  # what training ended with
    trained = {k[len("model/projector."):]: v for k, v in state.items() if k.startswith("model/projector.")}
    assert trained.keys() == head.state_dict().keys()
    assert all(torch.equal(head.state_dict()[k], v) for k, v in trained.items())


def test_finetune_keeps_the_first_projection_layer_and_its_classifier_loads_back(simclr_run: Path, cifar_tiny: Path,
                                                                                 tmp_path: Path):
    from sslcli.commands import finetune
    from sslcli.heads import MLPLayout, attach_projection

    encoder_path = simclr_run / "encoder.safetensors"
    spec = FinetuneSpec(encoder=encoder_path, keep_projection_layers=1, data={"path": cifar_tiny, "num_workers": 0},
                        train={"epochs": 1, "batch_size": 32}, out=tmp_path / "ft")
    # The classifier starts from the pretrained layer: Linear + BN (+ ReLU) of the head, then a fresh Linear.
    encoder, info, _ = checkpoint.load_encoder(encoder_path)
    head, layout = kept_projection(spec)
    model = build_classifier(info, encoder, 10, kept_layers(head, layout, spec.keep_projection_layers))
    state = load_file(str(checkpoint.complete_states(simclr_run / "checkpoints")[-1]))
    for key in ("0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var"):
        assert torch.equal(model.state_dict()[f"fc.{key}"], state[f"model/projector.{key}"]), key
    assert [type(m).__name__ for m in model.fc] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert (model.fc[3].in_features, model.fc[3].out_features) == (32, 10)

    result = finetune.run(spec)
    assert result["keep_projection_layers"] == 1
    with safe_open(result["classifier"], "pt") as f:
        meta = f.metadata()
    assert meta["projection_layers"] == "1"
    # The documented load: timm, the kept layers from the metadata, then a strict load of the file.
    loaded = timm.create_model(meta["encoder"], num_classes=int(meta["num_classes"]), **json.loads(meta["encoder_kwargs"]))
    attach_projection(loaded, MLPLayout.from_json(meta["projection_head"]), int(meta["projection_layers"]))
    loaded.load_state_dict(load_file(result["classifier"]), strict=True)
    val = data.find_images(cifar_tiny / "test")
    x = eval_view(torch.stack([data.decode_image(p, data.storage_size_for(16)) for p in val.paths]), info)
    with torch.no_grad():
        top1 = (loaded.eval()(x).argmax(1) == torch.tensor(val.labels)).float().mean().item()
    assert top1 == pytest.approx(result["top1"], abs=1e-6)  # the file is the classifier that was scored


def test_keep_projection_layers_needs_a_head_that_fits_its_encoder(simclr_run: Path, resnet10t_encoder: Path,
                                                                   cifar_tiny: Path, tmp_path: Path):
    from safetensors.torch import save_file


    # A plain encoder (no projector beside it): one line, exit 2, before any work.
    proc = sslcli_run("finetune", str(resnet10t_encoder), "--data", str(cifar_tiny), "--keep-projection-layers", "1",
                      "--out", str(tmp_path / "plain"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "carries no projection head" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "plain").exists()
    with pytest.raises(UsageError, match="the projection head beside .* has 3 layers"):
        kept_projection(FinetuneSpec(encoder=simclr_run / "encoder.safetensors", keep_projection_layers=4))
    # The head is bound to the encoder weights it was saved with: other weights under the same name are refused.
    moved = tmp_path / "moved"
    moved.mkdir()
    with safe_open(str(simclr_run / "encoder.safetensors"), "pt") as f:
        meta = f.metadata()
    weights = {k: v + 1 if v.is_floating_point() else v for k, v in load_file(simclr_run / "encoder.safetensors").items()}
    save_file(weights, moved / "encoder.safetensors", metadata=meta)
    (moved / "projector.safetensors").write_bytes((simclr_run / "projector.safetensors").read_bytes())
    with pytest.raises(UsageError, match="written with other encoder weights"):
        checkpoint.load_projector(moved / "encoder.safetensors")
    (moved / "projector.safetensors").unlink()
    with pytest.raises(UsageError, match="which is missing"):
        checkpoint.load_projector(moved / "encoder.safetensors")
