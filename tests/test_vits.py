"""ViTs as their papers train them: MoCo v3's per-architecture defaults, random frozen patch projection and fixed
sin-cos positions; DINO's weight-decay schedule and frozen last layer on a ViT; report/attention.png."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslcli import pretraining, train
from sslcli.augment import Augmenter
from sslcli.commands import pretrain, report
from sslcli.encoders import build_encoder
from sslcli.methods import CONFIGS, method_class
from sslcli.methods.base import Budget
from sslcli.spec import PretrainSpec, ReportSpec, resolve
from tests.test_methods import STEPS_PER_EPOCH, build, images, train_step

TINY_VIT = ["encoder.name=vit_tiny_patch16_224",
            'encoder.kwargs={"patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2}']


def build_with_vit(name: str, **method):
    """The method at test size on a 2-block ViT (4 px patches at 16 px), its augmentation and optimizer."""
    torch.manual_seed(0)
    sets = [*TINY_VIT, *(f"method.{k}={v}" for k, v in method.items())]
    spec = resolve(PretrainSpec, options={"method.name": name, "data.image_size": 16}, sets=sets)
    encoder, info = build_encoder(spec.encoder.name, 16, spec.encoder.small_stem, spec.encoder.kwargs)
    model = method_class(name)(spec.method, encoder, info.feature_dim, Budget(4 * STEPS_PER_EPOCH, STEPS_PER_EPOCH))
    augment = Augmenter(model.views(spec.augment), info.mean, info.std, torch.Generator().manual_seed(0))
    optimizer = pretraining.build_optimizer(model, spec.optim, 0.05)
    return spec, model.train(), augment, optimizer


def linears(module: torch.nn.Module) -> list[torch.nn.Linear]:
    return [m for m in module if isinstance(m, torch.nn.Linear)]


# ---------------------------------------------------------------- MoCo v3


def test_mocov3_defaults_follow_the_encoder_family_and_a_set_value_wins():
    small = {"proj_hidden_dim": 64, "proj_out_dim": 32, "pred_hidden_dim": 64}
    # ResNet (the official MoCo_ResNet): temperature 1.0, 2-layer projector, predictor without a last BN.
    _, resnet, *_ = build("mocov3")
    assert resnet.temperature == 1.0 and len(linears(resnet.projector)) == 2
    assert not isinstance(resnet.predictor[-1], torch.nn.BatchNorm1d)
    # ViT (MoCo_ViT): temperature 0.2, 3-layer projector, predictor ending in an affine-free BN.
    _, vit, *_ = build_with_vit("mocov3", **small)
    assert vit.temperature == 0.2 and len(linears(vit.projector)) == 3
    assert isinstance(vit.predictor[-1], torch.nn.BatchNorm1d) and not vit.predictor[-1].affine
    # What the user sets is what runs, on either family.
    _, chosen, *_ = build_with_vit("mocov3", temperature=0.5, proj_layers=2, **small)
    assert chosen.temperature == 0.5 and len(linears(chosen.projector)) == 2
    _, chosen, *_ = build("mocov3", temperature=0.3, proj_layers=3)
    assert chosen.temperature == 0.3 and len(linears(chosen.projector)) == 3


def test_mocov3_temperature_scales_the_loss_it_trains_with():
    """The resolved temperature is the one in the loss: 1.0 and 0.2 give different losses on the same batch."""
    _, at_one, augment, *_ = build("mocov3")
    _, at_fifth, *_ = build("mocov3", temperature=0.2)
    views = augment(images())
    assert not torch.isclose(at_one(views, 0).loss, at_fifth(views, 0).loss)


def test_mocov3_vit_trains_with_a_frozen_random_patch_projection_and_fixed_sincos_positions():
    from timm.layers import build_sincos2d_pos_embed

    _, model, augment, optimizer = build_with_vit("mocov3", proj_hidden_dim=64, proj_out_dim=32, pred_hidden_dim=64)
    encoder = model.encoder
    pos, proj = encoder.pos_embed, encoder.patch_embed.proj
    # The position embedding is timm's 2-D sin-cos of the 4 x 4 patch grid, zero at the class token.
    expected = build_sincos2d_pos_embed([4, 4], dim=32)
    torch.testing.assert_close(pos[0, 1:], expected)
    assert torch.equal(pos[0, 0], torch.zeros(32))
    frozen = {id(p) for p in (pos, proj.weight, proj.bias)}
    assert not any(p.requires_grad for p in (pos, proj.weight, proj.bias))
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not frozen & optimized, "the frozen parameters are left out of the optimizer"
    before = copy.deepcopy(encoder.state_dict())
    for step in range(2):
        train_step(model, augment, optimizer, step)
    after = encoder.state_dict()
    fixed = {"pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}
    for name in fixed:
        assert torch.equal(after[name], before[name]), f"{name} changed in training"
    moved = [n for n in after if n not in fixed and not torch.equal(after[n], before[n])]
    assert {"cls_token", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight", "norm.weight"} <= set(moved)
    # The momentum encoder holds the same fixed values (an EMA of equal tensors).
    torch.testing.assert_close(model.momentum_encoder.pos_embed, pos)
    torch.testing.assert_close(model.momentum_encoder.patch_embed.proj.weight, proj.weight)


def test_mocov3_vit_learns_them_when_turned_off():
    _, model, _, optimizer = build_with_vit("mocov3", proj_hidden_dim=64, proj_out_dim=32, pred_hidden_dim=64,
                                            freeze_patch_embed=False, sincos_pos_embed=False)
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert id(model.encoder.pos_embed) in optimized and id(model.encoder.patch_embed.proj.weight) in optimized


# ---------------------------------------------------------------- DINO on a ViT: weight decay, last layer


def test_the_weight_decay_schedule_runs_a_cosine_from_weight_decay_to_final_weight_decay():
    spec = resolve(PretrainSpec, preset="dino-vit-cpu")
    assert (spec.optim.weight_decay, spec.optim.final_weight_decay) == (0.04, 0.4)
    loop = train.LoopConfig(epochs=3, steps_per_epoch=10)
    wd = pretraining.weight_decay_schedule(spec, loop)
    assert len(wd) == 30 and wd[0] == pytest.approx(0.04) and wd[-1] == pytest.approx(0.4)
    assert wd[15] == pytest.approx(0.04 + (0.4 - 0.04) * 0.5 * (1 - np.cos(np.pi * 15 / 29)))
    assert bool((wd[1:] >= wd[:-1]).all()), "0.04 -> 0.4 only rises"
    # `--method dino` takes the paper's ViT schedule; the ResNet presets keep the official ResNet-50 constant.
    assert resolve(PretrainSpec, options={"method.name": "dino"}).optim.final_weight_decay == 0.4
    for preset in ("dino-cpu", "dino-cifar10", "dino-imagenette"):
        optim = resolve(PretrainSpec, preset=preset).optim
        assert optim.final_weight_decay == optim.weight_decay == 1e-6
    assert pretraining.weight_decay_schedule(resolve(PretrainSpec, options={"method.name": "simclr"}), loop) is None


def test_the_dino_vit_presets_clip_each_parameter_at_3_as_the_official_code():
    """main_dino.py's utils.clip_gradients bounds each parameter's gradient norm at 3.0, not the global norm:
    the presets say so and pretraining's loop gets it; other recipes keep the global norm."""
    for preset in ("dino-vit-cpu", "dino-vit-cifar10", "dino-vit-imagenette"):
        loop = pretraining.loop_config(resolve(PretrainSpec, preset=preset), 10, torch.device("cpu"))
        assert (loop.clip_grad, loop.clip_per_parameter) == (3.0, True), preset
    loop = pretraining.loop_config(resolve(PretrainSpec, preset="dinov2-cpu"), 10, torch.device("cpu"))
    assert (loop.clip_grad, loop.clip_per_parameter) == (3.0, False)


def test_the_loop_sets_the_scheduled_weight_decay_on_the_decayed_groups_only():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    spec = resolve(PretrainSpec, sets=["optim.name=adamw", "optim.weight_decay=0.04", "optim.final_weight_decay=0.4"])
    optimizer = pretraining.build_optimizer(model, spec.optim, 0.01)
    cfg = train.LoopConfig(epochs=2, steps_per_epoch=3, log_every=1)
    schedule = pretraining.weight_decay_schedule(spec, cfg)
    seen: list[list[float]] = []

    def loss(batch, step: int):
        seen.append([g["weight_decay"] for g in optimizer.param_groups])
        return train.StepOut(loss=model(batch).pow(2).mean())

    def batches(epoch: int, skip: int = 0):
        for _ in range(skip, 3):
            yield torch.randn(5, 4)

    step = train.Step(model=model, loss=loss, optimizer=optimizer, lr_schedule=torch.full((6,), 0.01),
                      wd_schedule=schedule)
    train.fit(step, batches, cfg, torch.device("cpu"))
    decayed = [g.get("decayed") for g in optimizer.param_groups]
    assert any(decayed) and not all(decayed)
    for at, values in enumerate(seen):
        for is_decayed, value in zip(decayed, values, strict=True):
            assert value == pytest.approx(float(schedule[at]) if is_decayed else 0.0)
    assert seen[0][decayed.index(True)] == pytest.approx(0.04) and seen[-1][decayed.index(True)] == pytest.approx(0.4)


def test_dino_vit_freezes_its_last_layer_for_the_first_epoch():
    _, model, augment, optimizer = build_with_vit("dino", out_dim=64, hidden_dim=64, bottleneck_dim=16,
                                                  num_local_crops=2, freeze_last_layer_epochs=1)
    last = model.head.last_layer.weight.detach().clone()
    blocks = model.encoder.blocks[0].attn.qkv.weight.detach().clone()
    for step in range(STEPS_PER_EPOCH):
        train_step(model, augment, optimizer, step)
    assert torch.equal(model.head.last_layer.weight, last), "the last layer moved during the first epoch"
    assert not torch.equal(model.encoder.blocks[0].attn.qkv.weight, blocks), "the ViT trains meanwhile"
    train_step(model, augment, optimizer, STEPS_PER_EPOCH)
    assert not torch.equal(model.head.last_layer.weight, last), "the last layer trains after the first epoch"


@pytest.mark.parametrize("name", ["dino", "dinov2"])
def test_dino_student_drops_paths_and_its_teacher_does_not(name: str):
    """timm's drop_path_rate reaches the student only, as the official main_dino.py (and dinov2's
    models/__init__.py) build the two: DINO's teacher has its drop path turned off, DINOv2's stays in eval mode."""
    torch.manual_seed(0)
    kwargs = {"patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2, "drop_path_rate": 0.5}
    encoder, info = build_encoder("vit_tiny_patch16_224", 16, "auto", kwargs)
    spec = resolve(PretrainSpec, options={"method.name": name, "data.image_size": 16},
                   sets=[f"method.{k}={v}" for k, v in CONFIGS[name].tiny.items()])
    model = method_class(name)(spec.method, encoder, info.feature_dim, Budget(4 * STEPS_PER_EPOCH, STEPS_PER_EPOCH))
    model.train()
    x = torch.randn(8, 3, 16, 16)
    assert not torch.equal(model.encoder(x), model.encoder(x)), "the student drops random paths in training"
    assert torch.equal(model.teacher_encoder(x), model.teacher_encoder(x)), "the teacher drops none"
    model.encoder.eval()
    torch.testing.assert_close(model.teacher_encoder(x), model.encoder(x))  # the same weights at the start


# ---------------------------------------------------------------- attention.png


def test_cls_attention_is_the_last_block_s_softmax_row_of_the_class_token():
    """What attention.png draws, against the attention computed by hand from the last block's q and k."""
    from sslcli.attention_maps import cls_attention

    torch.manual_seed(0)
    encoder, _ = build_encoder("vit_tiny_patch16_224", 16, "auto",
                               {"patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2})
    encoder.eval()
    x = torch.randn(3, 3, 16, 16)
    attn, seen = encoder.blocks[-1].attn, {}
    hook = attn.register_forward_hook(lambda module, args, out: seen.setdefault("x", args[0]))
    with torch.no_grad():
        encoder(x)
        hook.remove()
        b, n, _ = seen["x"].shape
        qkv = attn.qkv(seen["x"]).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        by_hand = (q @ k.transpose(-2, -1) * attn.scale).softmax(-1)[:, :, 0, 1:]
    maps = cls_attention(encoder, x)
    assert maps.shape == (3, 2, 4, 4)
    torch.testing.assert_close(maps.flatten(2), by_hand, rtol=1e-4, atol=1e-6)
    assert attn.fused_attn == encoder.blocks[0].attn.fused_attn, "the block runs as it did before"


def tiny_run(data: Path, out: Path, method: str, *sets: str) -> dict:
    spec = resolve(PretrainSpec, options={"method.name": method, "data.path": str(data), "out": str(out)},
                   sets=["data.max_images=32", "train.batch_size=16", "train.epochs=1", "data.num_workers=0",
                         "data.image_size=16", "monitor.knn_every=0", "monitor.report=false", *sets])
    return pretrain.run(spec)


@pytest.mark.slow
def test_report_draws_the_cls_attention_of_a_vit_encoder(cifar_tiny: Path, tmp_path: Path):
    from sslcli import attention_maps, checkpoint, data

    run = tmp_path / "vit"
    tiny_run(cifar_tiny, run, "dino", *TINY_VIT, "method.out_dim=64", "method.hidden_dim=64",
             "method.bottleneck_dim=16", "method.num_local_crops=0")
    summary = report.run(ReportSpec(run_dir=run, device="cpu"))
    png = run / "report" / "attention.png"
    assert summary["files"]["attention.png"] == str(png)
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 400 and image.height > 400
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 20, "the figure is blank"
    # One row per eval image, one map per head: they differ from image to image.
    encoder, info, _ = checkpoint.load_encoder(run / "encoder.safetensors")
    maps = attention_maps.compute(encoder, info, data.find_images(cifar_tiny / "test"), torch.device("cpu"))
    assert maps.maps.shape == (attention_maps.DEFAULT_IMAGES, 2, 4, 4)
    totals = maps.maps.sum((-2, -1))  # a softmax row over the patches and the class token itself
    assert bool((totals > 0).all() and (totals < 1).all())
    assert len(set(maps.titles)) == attention_maps.DEFAULT_IMAGES, "one image of each class"
    assert (maps.maps[0] - maps.maps[1]).abs().max() > 1e-4
    assert not any(m._forward_hooks for m in encoder.modules()), "the extraction's hooks are removed"


@pytest.mark.slow
def test_report_of_a_convnet_run_says_attention_maps_are_for_vits(cifar_tiny: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture):
    run = tmp_path / "resnet"
    tiny_run(cifar_tiny, run, "simclr", "encoder.name=resnet10t", "method.proj_hidden_dim=32")
    capsys.readouterr()
    summary = report.run(ReportSpec(run_dir=run, device="cpu"))
    assert "attention.png" not in summary["files"] and not (run / "report" / "attention.png").exists()
    assert "attention.png: drawn for ViT encoders only" in capsys.readouterr().err
    assert json.loads((run / "report" / "summary.json").read_text())["files"] == summary["files"]


def test_a_re_planned_run_stretches_the_weight_decay_schedule_to_its_new_end():
    """A --budget re-plan lays the rest of the schedule over the new total: continuous, and 0.4 on the last step."""
    wd = pretraining.weight_decay_schedule(resolve(PretrainSpec, preset="dino-vit-cpu"),
                                           train.LoopConfig(epochs=2, steps_per_epoch=10))
    longer = train.stretch_plan(wd, 20, 8, 32)
    assert len(longer) == 32 and torch.equal(longer[:8], wd[:8]) and longer[-1] == pytest.approx(0.4)
    assert bool((longer[1:] >= longer[:-1]).all())
    assert train.stretch_plan(None, 20, 8, 32) is None


@pytest.mark.slow
def test_spec_json_records_the_mocov3_settings_the_encoder_family_chose(cifar_tiny: Path, tmp_path: Path):
    """Unset, the temperature and projector depth follow the encoder; spec.json and the encoder's metadata
    say what ran, and a resume with the same command keeps matching the fingerprint."""
    from sslcli import checkpoint

    run = tmp_path / "resnet"
    tiny_run(cifar_tiny, run, "mocov3", "encoder.name=resnet10t", "method.proj_hidden_dim=32",
             "method.pred_hidden_dim=32", "method.proj_out_dim=16")
    recorded = json.loads((run / "spec.json").read_text())["method"]
    assert (recorded["temperature"], recorded["proj_layers"]) == (1.0, 2)
    _, _, meta = checkpoint.load_encoder(run / "encoder.safetensors")
    assert json.loads(meta["spec"])["method"]["temperature"] == 1.0
    again = resolve(PretrainSpec, options={"method.name": "mocov3", "data.path": str(cifar_tiny)},
                    sets=["data.max_images=32", "train.batch_size=16", "train.epochs=1", "data.num_workers=0",
                          "data.image_size=16", "monitor.knn_every=0", "monitor.report=false",
                          "encoder.name=resnet10t", "method.proj_hidden_dim=32", "method.pred_hidden_dim=32",
                          "method.proj_out_dim=16"])
    assert pretrain.run(again, resume=str(run))["already_complete"], "the same command resumes the same run"
    vit = tmp_path / "vit"
    tiny_run(cifar_tiny, vit, "mocov3", *TINY_VIT, "method.proj_hidden_dim=32", "method.pred_hidden_dim=32",
             "method.proj_out_dim=16", "method.temperature=0.5")
    recorded = json.loads((vit / "spec.json").read_text())["method"]
    assert (recorded["temperature"], recorded["proj_layers"]) == (0.5, 3), "a set value stays, the unset one follows"
