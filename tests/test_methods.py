"""The method contract, checked for every discovered method (CONFIGS) with tiny encoders on CPU: a new method
package is tested here without editing this file."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from sslcli import checkpoint, pretraining
from sslcli.augment import Augmenter
from sslcli.commands import pretrain
from sslcli.encoders import build_encoder
from sslcli.methods import CONFIGS, PRESET_FAMILIES, method_class
from sslcli.methods.base import Budget
from sslcli.pretraining import build_optimizer
from sslcli.spec import PretrainSpec, dump, list_presets, resolve

BATCH, STEPS_PER_EPOCH = 8, 2
NUM_IMAGES = BATCH * STEPS_PER_EPOCH  # a memory bank's size (uses_indices): each step's batch is its own images


def tiny_spec(name: str, vit: bool = False, **method) -> PretrainSpec:
    """The method at test size: its config's `tiny` settings (small heads, so a step takes milliseconds) on a
    tiny encoder of the kind it trains (a 2-block ViT, or resnet10t; a ViT too with `vit`)."""
    sets = [f"method.{k}={v}" if not isinstance(v, (list, tuple)) else f"method.{k}={list(v)}"
            for k, v in {**CONFIGS[name].tiny, **method}.items()]
    if CONFIGS[name].encoder_kind == "vit" or vit:
        sets += ["encoder.name=vit_tiny_patch16_224",
                 'encoder.kwargs={"patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2}']
    else:
        sets += ["encoder.name=resnet10t", "encoder.small_stem=false"]
    return resolve(PretrainSpec, options={"method.name": name, "data.image_size": 16}, sets=sets)


def build(name: str, prime: bool = True, **method):
    """The method, its augmentation and optimizer; with `prime`, a method that trains nothing in its first
    epochs (memory_pass_epochs: DeepCluster v2 fills its memory) has been stepped through them."""
    torch.manual_seed(0)
    spec = tiny_spec(name, **method)
    encoder, info = build_encoder(spec.encoder.name, 16, spec.encoder.small_stem, spec.encoder.kwargs)
    model = method_class(name)(spec.method, encoder, info.feature_dim,
                               Budget(4 * STEPS_PER_EPOCH, STEPS_PER_EPOCH, NUM_IMAGES))
    augment = Augmenter(model.views(spec.augment), info.mean, info.std, torch.Generator().manual_seed(0))
    optimizer = build_optimizer(model, spec.optim, 0.05, getattr(model, "fixed_lr_modules", ()))
    model.train()
    if prime:
        for step in range(first_step(name)):
            train_step(model, augment, optimizer, step)
    return spec, model, augment, optimizer, info


def first_step(name: str) -> int:
    """The first step that trains: after the memory-filling epochs of a method that has them."""
    return CONFIGS[name].memory_pass_epochs * STEPS_PER_EPOCH


def batch_indices(step: int) -> torch.Tensor:
    """The training-set positions of step's batch: every epoch goes over the NUM_IMAGES images in order."""
    return torch.arange(BATCH) + BATCH * (step % STEPS_PER_EPOCH)


def forward(model, views: list[torch.Tensor], step: int):
    """model(views, step), with the batch's indices for a method that keeps a memory bank (uses_indices)."""
    if CONFIGS[model.cfg.name].uses_indices:
        return model(views, step, batch_indices(step))
    return model(views, step)


def images(seed: int = 0, frames: int = 0) -> torch.Tensor:
    """A uint8 batch: BATCH images, or for a temporal method (frames = its frames_per_sample) BATCH tuples of
    that many frames [BATCH, frames, 3, 16, 16], as the frame cache gives it (clip_training.py)."""
    shape = (BATCH, *((frames,) if frames else ()), 3, 16, 16)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def batch_for(model, seed: int = 0) -> torch.Tensor:
    """images() of the kind the method trains on: single images, or its frame tuples."""
    return images(seed, CONFIGS[model.cfg.name].frames_per_sample)


def train_step(model, augment, optimizer, step: int):
    out = forward(model, augment(batch_for(model, step)), step)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    getattr(model, "cancel_gradients", lambda step: None)(step)  # as train.fit does after backward
    optimizer.step()
    model.on_step_end(step)
    return out


def targets_of(model) -> list[tuple[str, str]]:
    """(target, online) submodule pairs of EMA methods."""
    pairs = [("key_encoder", "encoder"), ("key_projector", "projector"), ("momentum_encoder", "encoder"),
             ("momentum_projector", "projector"), ("target_encoder", "encoder"), ("target_projector", "projector"),
             ("teacher_encoder", "encoder"), ("teacher_head", "head"), ("teacher_ibot_head", "ibot_head")]
    return [(t, o) for t, o in pairs if getattr(model, t, None) is not None]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_step_is_finite_and_trains_the_encoder(name: str, precision: str):
    """In fp32 and in bf16 autocast as train.fit runs it on a CPU (emulated where the CPU has no bf16), so every
    machine checks both: finite loss and gradients, a gradient that reaches the encoder, an update."""
    from sslcli.onednn import bf16_conv_fallback

    _, model, augment, optimizer, _ = build(name)
    before = copy.deepcopy(model.encoder.state_dict())
    step = first_step(name)
    dtype = torch.bfloat16 if precision == "bf16" else None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None), \
            bf16_conv_fallback(torch.device("cpu"), dtype):
        out = forward(model, augment(batch_for(model)), step)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss) and out.loss.dtype == torch.float32
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads), "no gradient reached the encoder"
    assert all(torch.isfinite(g).all() for g in grads)
    optimizer.step()
    model.on_step_end(step)
    changed = [k for k, v in model.encoder.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed, "the optimizer step left the encoder unchanged"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_targets_receive_no_gradient_and_follow_the_ema(name: str):
    _, model, augment, optimizer, _ = build(name)
    pairs = targets_of(model)
    if name in ("mocov2", "mocov3", "byol", "dino", "dinov2"):
        assert pairs, f"{name} should hold a momentum target"
    else:
        assert not pairs
        return
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for target, _ in pairs:
        assert all(not p.requires_grad and id(p) not in optimized for p in getattr(model, target).parameters())
    for step in range(2):
        old = {t: [p.detach().clone() for p in getattr(model, t).parameters()] for t, _ in pairs}
        train_step(model, augment, optimizer, step)
        m = model.momentum[step]
        for target, online in pairs:
            for before, now, new_online in zip(old[target], getattr(model, target).parameters(),
                                               getattr(model, online).parameters(), strict=True):
                torch.testing.assert_close(now, m * before + (1 - m) * new_online.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("name", "method"), [("mocov2", {"proj_layers": 1}),
                                              ("simclr", {"proj_layers": 1, "loss": "invariant_spread"}),
                                              ("simclr", {"proj_layers": 3})],
                         ids=["mocov1-linear-head", "invariantspread", "simclrv2-3-layer-head"])
def test_preset_family_settings_build_their_head_and_loss(name: str, method: dict):
    from sslcli.losses import invariant_spread, nt_xent

    _, model, augment, optimizer, _ = build(name, **method)
    linears = [m for m in model.projector if isinstance(m, torch.nn.Linear)]
    assert len(linears) == method["proj_layers"] and linears[-1].out_features == 32
    if method["proj_layers"] == 1:  # MoCo v1's fc, InvariantSpread's embedding: one Linear with its bias
        assert len(model.projector) == 1 and linears[0].bias is not None
    out = train_step(model, augment, optimizer, 0)
    assert torch.isfinite(out.loss)
    if name == "simclr":
        z1, z2 = out.embeddings["projections"]
        z = torch.cat([z1, z2]).detach()
        chosen = invariant_spread(z, z, 0.2) if method.get("loss") else nt_xent(z1, z2, 0.2)
        other = nt_xent(z1, z2, 0.2) if method.get("loss") else invariant_spread(z, z, 0.2)
        torch.testing.assert_close(out.loss.detach(), chosen.detach())
        assert (out.loss - other).abs() > 1e-3  # the config picks the loss


def test_ema_momentum_follows_the_cosine_schedule():
    _, model, *_ = build("byol", momentum=0.99, final_momentum=1.0)
    assert model.momentum[0] == pytest.approx(0.99)
    assert model.momentum[-1] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(model.momentum, model.momentum[1:], strict=False))


def test_mocov2_queue_takes_each_steps_keys_after_the_step():
    _, model, augment, optimizer, _ = build("mocov2")
    initial = model.queue.clone()
    out = model(augment(images()), 0)
    keys = model.staged("queue").args[-1].clone()
    assert torch.equal(model.queue, initial), "the queue must not change before the update is applied"
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    model.on_step_end(0)
    torch.testing.assert_close(model.queue[:BATCH], keys)
    torch.testing.assert_close(model.queue[BATCH:], initial[BATCH:])
    assert int(model.queue_ptr) == BATCH
    for step in range(1, 3):  # a queue of 20 wraps around after 3 batches of 8
        train_step(model, augment, optimizer, step)
    assert int(model.queue_ptr) == (3 * BATCH) % 20
    assert torch.allclose(model.queue.norm(dim=1), torch.ones(20))


def test_dino_center_is_an_ema_of_teacher_means_and_last_layer_is_frozen_for_an_epoch():
    _, model, augment, optimizer, _ = build("dino")
    last = model.head.last_layer.weight.detach().clone()
    for step in range(STEPS_PER_EPOCH):
        center = model.center.clone()
        out = model(augment(images(step)), step)
        batch_mean = model.staged("center").args[0].clone()
        optimizer.zero_grad()
        out.loss.backward()
        model.cancel_gradients(step)
        assert model.head.last_layer.weight.grad is None
        optimizer.step()
        model.on_step_end(step)
        torch.testing.assert_close(model.center, 0.9 * center + 0.1 * batch_mean)
    assert torch.equal(model.head.last_layer.weight, last), "the last layer moved during the first epoch"
    train_step(model, augment, optimizer, STEPS_PER_EPOCH)
    assert not torch.equal(model.head.last_layer.weight, last), "the last layer stays frozen after the first epoch"
    # The teacher temperature warms up linearly, then holds.
    assert model.teacher_temperature[0] == pytest.approx(0.04)
    assert model.export_encoder() is model.teacher_encoder


def test_swav_prototypes_are_normalised_frozen_for_an_epoch_and_the_queue_joins_when_full():
    _, model, augment, optimizer, _ = build("swav")
    train_step(model, augment, optimizer, 0)
    frozen = model.prototypes.weight.detach().clone()  # normalised at step 0, then frozen
    for step in range(1, STEPS_PER_EPOCH):
        train_step(model, augment, optimizer, step)
        assert model.prototypes.weight.grad is None
        # Re-normalising a unit vector may move its last bit; an update would move it by ~lr.
        torch.testing.assert_close(model.prototypes.weight.detach(), frozen, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(frozen.norm(dim=1), torch.ones(20))
    # queue 16, batch 8: filled by steps 0 and 1, used from step 2.
    assert not model.queue_ready(1) and model.queue_ready(2)
    assert (model.queue.abs().sum(dim=-1) > 0).all(), "both global crops' features fill the queue"
    train_step(model, augment, optimizer, STEPS_PER_EPOCH)
    assert (model.prototypes.weight - frozen).abs().max() > 1e-4, "prototypes stay frozen after the first epoch"
    views = model.views(tiny_spec("swav").augment)
    assert [v.size for v in views] == [16, 16, 8, 8]  # 2 global + 2 local crops (3/7 of the side, at least 8 px)


def test_deepcluster_fills_its_memory_in_the_first_epoch_then_trains_on_the_kmeans_of_it():
    from sslcli.errors import UsageError

    _, model, augment, optimizer, _ = build("deepcluster", prime=False)  # LARS, weight decay 1e-6
    weights = {k: p.detach().clone() for k, p in model.named_parameters()}
    for step in range(STEPS_PER_EPOCH):  # the first epoch: no cluster yet, nothing trains
        out = forward(model, augment(images(step)), step)
        assert out.loss.item() == 0.0
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        model.cancel_gradients(step)
        assert all(p.grad is None for p in model.parameters())
        optimizer.step()
        assert not model.filled[batch_indices(step)].any(), "memory entries are written after the step only"
        model.on_step_end(step)
        rows = batch_indices(step)
        torch.testing.assert_close(model.memory[:, rows], torch.stack([z.detach() for z in out.embeddings["projections"]]))
        assert model.filled[rows].all() and model.filled.sum() == BATCH * (step + 1)
    assert all(torch.equal(p, weights[k]) for k, p in model.named_parameters() if "prototypes" not in k), \
        "the memory-filling epoch changed a weight"
    # The k-means at the epoch's end: every image has a cluster of each head, the prototypes are its unit
    # centroids, and each image's cluster is its memory entry's nearest prototype (crop h % 2 for head h).
    assert ((model.assignments >= 0) & (model.assignments < torch.tensor([[4], [3]]))).all()
    for h, head in enumerate(model.prototypes):
        torch.testing.assert_close(head.weight.norm(dim=1), torch.ones(head.weight.shape[0]))
        assert torch.equal(model.assignments[h], (model.memory[h % 2] @ head.weight.T).argmax(dim=1))
    # Negative control of the weight check: a zero gradient, unlike none, still moves weights under LARS.
    probe = next(p for p in model.projector.parameters() if p.ndim == 2)
    kept = probe.detach().clone()
    probe.grad = torch.zeros_like(probe)
    optimizer.step()
    assert not torch.equal(probe, kept)
    # The same memory and epoch give the same clustering (every rank and every resume draws the same).
    clustered = model.assignments.clone(), [h.weight.clone() for h in model.prototypes]
    model.cluster(epoch=1)
    assert torch.equal(model.assignments, clustered[0])
    assert all(torch.equal(h.weight, w) for h, w in zip(model.prototypes, clustered[1], strict=True))
    # The second epoch trains on those clusters; the prototypes never get a gradient, the clusters hold
    # until the epoch's last step and change at it.
    step = STEPS_PER_EPOCH
    out = train_step(model, augment, optimizer, step)
    assert out.loss.item() > 0 and all(h.weight.grad is None for h in model.prototypes)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert torch.equal(model.assignments, clustered[0])
    train_step(model, augment, optimizer, step + 1)
    assert not all(torch.equal(h.weight, w) for h, w in zip(model.prototypes, clustered[1], strict=True))
    views = model.views(tiny_spec("deepcluster").augment)
    assert [v.size for v in views] == [16, 16, 8, 8]  # multi-crop as SwAV: 2 global + 2 local crops
    with pytest.raises(UsageError, match="num_prototypes"):
        build("deepcluster", prime=False, num_prototypes=[NUM_IMAGES + 1])


def test_pretrain_warns_when_a_deepcluster_run_ends_within_its_memory_pass():
    from sslcli.train import LoopConfig

    spec = tiny_spec("deepcluster")
    one, two = (pretraining.short_run_warnings(spec, LoopConfig(epochs=e, steps_per_epoch=5)) for e in (1, 2))
    assert any("filling its memory" in line and "stays at its initialisation" in line for line in one)
    assert not any("filling its memory" in line for line in two)
    assert not any("filling its memory" in line for line in pretraining.short_run_warnings(
        tiny_spec("swav"), LoopConfig(epochs=1, steps_per_epoch=5)))


def test_simsiam_predictor_keeps_the_peak_lr():
    from sslcli.train import _set_lr

    _, model, _, optimizer, _ = build("simsiam")
    _set_lr(optimizer, 0.01, peak=0.5)
    predictor = {id(p) for p in model.predictor.parameters()}
    for group in optimizer.param_groups:
        in_predictor = {id(p) in predictor for p in group["params"]}
        assert len(in_predictor) == 1  # a group is all predictor or none of it
        assert group["lr"] == (0.5 if in_predictor.pop() else 0.01)


def test_mae_masks_three_quarters_per_sample_and_exports_a_plain_vit():
    _, model, _, _, info = build("mae")
    kept, restore, mask = model.random_mask(model.mask_noise(4, 16, torch.device("cpu")))
    assert kept.shape == (4, 4) and mask.sum(dim=1).tolist() == [12.0] * 4
    for i in range(4):  # the kept patches are exactly the unmasked ones
        assert sorted(kept[i].tolist()) == torch.nonzero(mask[i] == 0).flatten().tolist()
    x = torch.randn(2, 3, 16, 16)
    patches = model.patchify(x)
    assert patches.shape == (2, 16, 48)
    torch.testing.assert_close(patches[0, 1].view(4, 4, 3).permute(2, 0, 1), x[0, :, 0:4, 4:8])
    import timm

    assert isinstance(model.export_encoder(), timm.models.vision_transformer.VisionTransformer)


def test_dinov2_masks_the_students_patches_freezes_both_last_layers_and_exports_the_teacher():
    _, model, augment, optimizer, _ = build("dinov2")
    assert not model.teacher_encoder.training and model.encoder.training  # the teacher is in eval mode (SSLMetaArch)
    # Masks: int(2n * 0.5) of the 2n global crops, each at most its slice of the ratio range (0.1-0.5) of 16 patches.
    masks, bound = model.draw_masks(BATCH, 4, 4, torch.device("cpu"))
    counts = masks.flatten(2).sum(-1).flatten()
    assert masks.shape == (BATCH, 2, 4, 4) and int((counts > 0).sum()) <= BATCH and int(counts.max()) <= 8
    assert int(counts.sum()) <= bound
    # The student's masked patches are the mask token: all patches masked, the image no longer matters.
    x1, x2 = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    everything = torch.ones(2, 16, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(model._tokens(model.encoder, x1, everything), model._tokens(model.encoder, x2, everything))
        assert not torch.allclose(model._tokens(model.encoder, x1, ~everything), model._tokens(model.encoder, x2, ~everything))
        torch.testing.assert_close(model._tokens(model.encoder, x1, ~everything), model.encoder.forward_features(x1))
    lasts = [model.head.last_layer.weight.detach().clone(), model.ibot_head.last_layer.weight.detach().clone()]
    for step in range(STEPS_PER_EPOCH):
        out = train_step(model, augment, optimizer, step)
        assert set(out.logs) == {"loss", "dino_loss", "ibot_loss", "koleo_loss"}
    assert model.mask_token.detach().abs().sum() > 0, "the mask token trains"
    assert torch.equal(model.head.last_layer.weight, lasts[0]) and torch.equal(model.ibot_head.last_layer.weight, lasts[1])
    train_step(model, augment, optimizer, STEPS_PER_EPOCH)
    assert not torch.equal(model.head.last_layer.weight, lasts[0]) and not torch.equal(model.ibot_head.last_layer.weight, lasts[1])
    assert model.teacher_temperature[0] == pytest.approx(0.04) and model.momentum[0] == pytest.approx(0.992)
    assert model.export_encoder() is model.teacher_encoder


def beit_block_mask(height: int, width: int, target: int, rng) -> torch.Tensor:
    """dinov2/data/masking.py MaskingGenerator (min 4 patches, aspect 0.3-3.3, max_num_patches half the grid, 10
    tries), written out as there, with a seeded random.Random."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    count, max_block = 0, 0.5 * height * width
    log_aspect = (math.log(0.3), math.log(1 / 0.3))
    while count < target:
        cap, delta = min(target - count, max_block), 0
        for _ in range(10):
            area, aspect = rng.uniform(4, cap), math.exp(rng.uniform(*log_aspect))
            h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if w < width and h < height:
                top, left = rng.randint(0, height - h), rng.randint(0, width - w)
                block = mask[top:top + h, left:left + w]
                if 0 < h * w - int(block.sum()) <= cap:
                    delta = h * w - int(block.sum())
                    block.fill_(True)
            if delta > 0:
                break
        if delta == 0:
            break
        count += delta
    return mask


def neighbours_masked(masks: torch.Tensor) -> float:
    """The fraction of masked patches with a masked 4-neighbour (1 for blocks, lower for scattered patches)."""
    padded = torch.nn.functional.pad(masks.float(), (1, 1, 1, 1))
    around = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    return float(((around > 0) & masks).sum() / masks.sum())


def test_dinov2_block_masks_follow_the_reference_generator_and_the_stratified_ratios():
    import random

    from sslcli.methods.dinov2.model import block_masks, mask_targets, random_masks

    torch.manual_seed(0)
    targets, bound = mask_targets(400, 64, 0.5, (0.1, 0.5), torch.device("cpu"))
    masked = targets[targets > 0].sort().values
    # 200 of the 400 crops are masked, the i-th smallest target in the i-th of 200 slices of [0.1, 0.5] x 64 patches.
    assert (targets > 0).sum() == 200 and bound >= int(targets.sum())
    slices = torch.linspace(0.1, 0.5, 201)
    assert ((masked >= (64 * slices[:-1]).floor()) & (masked <= (64 * slices[1:]).floor())).all()
    blocks = block_masks(masked, 8, 8, 32)
    counts = blocks.flatten(1).sum(1)
    assert (counts <= masked).all()
    rng = random.Random(0)
    reference = torch.stack([beit_block_mask(8, 8, int(t), rng) for t in masked])
    assert abs(counts.float().mean() - reference.flatten(1).sum(1).float().mean()) < 0.5
    assert abs(neighbours_masked(blocks) - neighbours_masked(reference)) < 0.05
    # Negative control: random masks of the same counts are exact but scattered.
    scattered = random_masks(masked, 8, 8)
    assert torch.equal(scattered.flatten(1).sum(1), masked.long())
    assert neighbours_masked(scattered) < neighbours_masked(blocks) - 0.1


def test_dinov2_shares_the_dino_head_on_request_and_refuses_a_non_vit():
    from sslcli.errors import UsageError

    _, model, augment, optimizer, _ = build("dinov2", ibot_separate_head=False, masking="random")
    assert model.ibot_head is None and model.teacher_ibot_head is None
    out = train_step(model, augment, optimizer, 0)
    assert torch.isfinite(out.loss) and out.logs["ibot_loss"] > 0
    spec = resolve(PretrainSpec, options={"method.name": "dinov2", "data.image_size": 16},
                   sets=["encoder.name=resnet10t", *(f"method.{k}={v}" for k, v in CONFIGS["dinov2"].tiny.items())])
    encoder, info = build_encoder("resnet10t", 16, False)
    with pytest.raises(UsageError, match="dinov2 needs a timm ViT"):
        method_class("dinov2")(spec.method, encoder, info.feature_dim, Budget(8, 2))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_exported_encoder_round_trips_through_safetensors(name: str, tmp_path: Path):
    spec, model, augment, optimizer, info = build(name)
    train_step(model, augment, optimizer, 0)
    path = tmp_path / "encoder.safetensors"
    meta = checkpoint.encoder_metadata(info, method=name, epoch=1, step=1, spec=dump(spec))
    checkpoint.save_encoder(path, model.export_encoder(), meta)
    loaded, loaded_info, loaded_meta = checkpoint.load_encoder(path)
    assert loaded_meta["method"] == name
    x = torch.randn(3, 3, 16, 16)
    exported = model.export_encoder().eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), exported(x))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_pretrain_from_defaults_then_probe(name: str, cifar_tiny: Path, videos_small: Path, tmp_path: Path):
    """`--method X` with the method's own defaults (only the size of the run shrunk: 16 px, 2 steps, a tiny
    labeled set) trains and probes."""
    from sslcli.commands import probe
    from sslcli.spec import ProbeSpec

    # The probe below scores the encoder; the online kNN and report (tested elsewhere) would only add time.
    sets = ["data.max_images=64", "train.batch_size=32", "train.epochs=1", "data.num_workers=0",
            "data.image_size=16", "monitor.knn_every=0", "monitor.report=false"]
    if name == "deepcluster":  # k-means of 64 images: its defaults ask for 3 x 3000 clusters
        sets.append("method.num_prototypes=[10,10,10]")
    # CPC encodes every patch of its grid: 9 (a 3 x 3 grid) instead of the paper's 49 keep its step near the others'.
    sets += {"cpc": ["method.grid_size=3"]}.get(name, [])
    # Distillation has no default teacher (the user names one); a random-init one builds offline.
    sets += {"distill": ["method.teacher=random:resnet10t"]}.get(name, [])
    # A temporal method trains on clips: the two small real videos, at 5 fps (70 frames: 2 steps of 32 tuples).
    temporal = CONFIGS[name].frames_per_sample > 0
    if temporal:
        sets += ["data.fps=5"]
    spec = resolve(PretrainSpec, options={"method.name": name, "data.path": str(videos_small if temporal else cifar_tiny),
                                          "out": str(tmp_path / "run")}, sets=sets)
    summary = pretrain.run(spec)
    assert summary["steps"] == 2 and summary["method"] == name
    # The encoder's metadata says what it saw when that was not the augmented RGB views (the config's word).
    meta = checkpoint.load_encoder(summary["encoder"])[2]
    assert meta.get("trained_input") == CONFIGS[name].encoder_input
    result = probe.run(ProbeSpec(encoder=Path(summary["encoder"]), data={"path": cifar_tiny, "num_workers": 0},
                                 probe={"knn_k": [5], "baseline": False, "linear_weight_decays": [1e-4]}))
    # The probe loaded this run's encoder and scored every one of the 50 eval images.
    assert result["method"] == name and result["n_eval"] == 50
    top1, top5 = result["knn"]["k5"]["top1"], result["knn"]["k5"]["top5"]
    assert top1 * 50 == pytest.approx(round(top1 * 50)) and top1 <= top5


def preset_kinds(method: str) -> tuple[str, ...]:
    """The presets every method has: CPU, CIFAR-10 and Imagenette; a temporal method (video input) CPU and video."""
    if method in CONFIGS and CONFIGS[method].frames_per_sample:
        return ("cpu", "video")
    return ("cpu", "cifar10", "imagenette")


def test_every_method_has_a_cpu_cifar10_and_imagenette_preset():
    names = {name for name, _ in list_presets()}
    for method in [*CONFIGS, *PRESET_FAMILIES]:  # and every published recipe offered as presets of a method
        for kind in preset_kinds(method):
            assert f"{method}-{kind}" in names, f"missing preset {method}-{kind}"


@pytest.mark.parametrize("name", ["mocov3", "dino", "dinov2"])
def test_vit_encoders_take_multi_crop_views_of_every_size(name: str):
    """MoCo v3, DINO and DINOv2 with a ViT: timm's dynamic_img_size lets the local crops through the same encoder."""
    torch.manual_seed(0)
    spec = resolve(PretrainSpec, options={"method.name": name, "data.image_size": 16}, sets=[
        "encoder.name=vit_tiny_patch16_224",
        'encoder.kwargs={"patch_size": 4, "depth": 1, "embed_dim": 32, "num_heads": 2}',
        *(f"method.{k}={v}" for k, v in CONFIGS[name].tiny.items())])
    encoder, info = build_encoder(spec.encoder.name, 16, spec.encoder.small_stem, spec.encoder.kwargs)
    assert info.kwargs["dynamic_img_size"] is True  # recorded, so the export rebuilds the same way
    model = method_class(name)(spec.method, encoder, info.feature_dim, Budget(8, 2))
    augment = Augmenter(model.views(spec.augment), info.mean, info.std, torch.Generator().manual_seed(0))
    views = augment(images())
    out = model(views, 0)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    if name == "mocov3":  # MoCo v3's random patch projection stays frozen on a ViT (test_vits.py)
        assert model.encoder.patch_embed.proj.weight.grad is None
    else:
        assert model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    if name in ("dino", "dinov2"):
        assert sorted({v.shape[-1] for v in views}) == [8, 16]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_step_exposes_its_embeddings_to_the_monitors(name: str):
    from sslcli import monitors

    _, model, augment, _, info = build(name)
    out = forward(model, augment(batch_for(model)), first_step(name))
    assert "features" in out.embeddings, "every method shows its encoder features"
    for kind, views in out.embeddings.items():
        assert 1 <= len(views) <= 2 and all(v.shape[0] == BATCH for v in views), kind
        if kind == "features":
            assert all(v.shape[1] == info.feature_dim for v in views)
        values = monitors.measure(views, kind)
        assert all(torch.isfinite(v) for v in values.values())
        assert (f"{kind}_alignment" in values) == (len(views) == 2)
