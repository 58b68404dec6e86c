"""The image methods of the later literature (issue #29): Exemplar / S4L-Exemplar, the S4L and CPC v1 presets.
Each test shows the method's loss doing what its paper says, beyond the contract of tests/test_methods.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sslcli import checkpoint
from sslcli.commands import pretrain
from sslcli.spec import PretrainSpec, resolve
from tests.test_methods import build, images


def test_exemplar_pulls_an_images_copies_together_and_pushes_other_images_away():
    """A few steps on one batch: the loss falls, and afterwards each image's copies are nearer each other than
    to the nearest copy of another image, more often than before (the triplets' order)."""
    torch.manual_seed(0)
    _, model, augment, optimizer, _ = build("exemplar", copies=4)

    def margins() -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            views = augment(images())
            z = torch.nn.functional.normalize(model.head(model.encoder(torch.cat(views))), dim=1)
        model.train()
        labels = torch.arange(views[0].shape[0]).repeat(len(views))
        d = torch.cdist(z, z)
        same = labels[:, None] == labels[None, :]
        farthest_copy = d.masked_fill(~same, float("-inf")).amax(dim=1)
        nearest_other = d.masked_fill(same, float("inf")).amin(dim=1)
        return nearest_other - farthest_copy

    before = margins()
    losses = []
    for step in range(25):
        out = model(augment(images()), step)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    after = margins()
    assert sum(losses[-5:]) < sum(losses[:5])
    assert after.mean() > before.mean()


def test_exemplar_mines_over_every_copy_of_the_batch():
    """The loss is triplet_loss over the copies' unit embeddings with image labels: checked against the
    function on the same embeddings, for both miners."""
    from sslcli.losses import triplet_loss

    for mining in ("batch_hard", "semi_hard"):
        _, model, augment, _, _ = build("exemplar", copies=3, mining=mining)
        views = augment(images())
        assert len(views) == 3
        out = model(views, 0)
        z = torch.nn.functional.normalize(model.head(model.encoder(torch.cat(views))), dim=1)
        labels = torch.arange(views[0].shape[0]).repeat(3)
        torch.testing.assert_close(out.loss, triplet_loss(z, labels, model.cfg.margin, mining))


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["s4l-exemplar-cpu", "s4l-rotation-cpu"])
def test_the_s4l_presets_train_the_supervised_head_beside_the_self_supervised_loss(preset: str, cifar_small: Path,
                                                                                   tmp_path: Path):
    # 10 of the 100 images are labeled: a labeled batch of 8 beside the 16 (the presets' default, as large as the
    # batch, needs more labeled images than this subset holds).
    sets = ["data.max_images=100", "train.batch_size=16", "train.labeled_batch_size=8", "train.epochs=1",
            "train.max_steps=2", "data.num_workers=0", "monitor.knn_every=0", "monitor.report=false",
            "train.log_every=1"]
    if preset.startswith("s4l-exemplar"):
        sets += ["method.copies=2", "method.embedding_dim=32"]
    spec = resolve(PretrainSpec, preset=preset, options={"data.path": str(cifar_small), "out": str(tmp_path / "r")},
                   sets=sets)
    assert spec.data.label_fraction == 0.1
    summary = pretrain.run(spec)
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "supervised" in r]
    assert len(steps) == summary["steps"] == 2
    for r in steps:
        assert r["loss"] == pytest.approx(r["self_supervised"] + r["supervised"], rel=1e-5)
    state = load_file(str(checkpoint.complete_states(tmp_path / "r" / "checkpoints")[-1]))
    assert state["model/supervised_head.weight"].shape[0] == 10


@pytest.mark.parametrize("kind", ["cpu", "cifar10", "imagenette"])
def test_the_cpc_v1_presets_are_top_down_from_the_next_row_with_v1s_patch_crop(kind: str):
    """CPC v1 (arXiv 1807.03748, section 3.2) against v2: one direction, the predictions starting at offset 1,
    v1's random crop of each patch and none of v2's patch augmentations; batch norm (sslcli's stand-in for v1's
    encoder without normalisation). A step trains with them."""
    from sslcli.encoders import build_encoder
    from sslcli.methods import method_class
    from sslcli.methods.base import Budget

    v1 = resolve(PretrainSpec, preset=f"cpc-v1-{kind}")
    v2 = resolve(PretrainSpec, preset=f"cpc-{kind}")
    assert (v1.method.directions, v2.method.directions) == (1, 4)
    assert v1.method.min_offset == 1 and v2.method.min_offset == 2
    assert v1.encoder.kwargs["norm_layer"] == "batchnorm2d" and v2.encoder.kwargs["norm_layer"] == "groupnorm1"
    assert v1.method.grid_size == v2.method.grid_size and v1.data.image_size == v2.data.image_size
    # Built small (its own grid and offsets, a tiny context network) and stepped once.
    torch.manual_seed(0)
    cfg = v1.method.model_copy(update={"context_blocks": 1, "context_dim": 16})
    encoder, info = build_encoder("resnet10t", v1.data.image_size, False, v1.encoder.kwargs)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in encoder.modules())
    model = method_class("cpc")(cfg, encoder, info.feature_dim, Budget(4, 2))
    assert len(model.heads) == 1 and model.offsets[0] == 1
    # The only patch augmentation v1 draws is its crop (60 of 64 px), padded back; v2's are all off.
    assert v1.method.patch_crop == 60 / 64 and v2.method.patch_crop == 1.0
    *v2_draws, corner = model.draw(2, cfg.grid_size ** 2, 16, torch.device("cpu"))
    assert all(d is None for d in v2_draws) and corner.shape == (2, cfg.grid_size ** 2, 2)
    x = torch.randn(4, 3, v1.data.image_size, v1.data.image_size)
    out = model([x], 0)
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.encoder.conv1[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("estimator", ["infonce", "jsd"])
def test_dim_scores_an_images_own_positions_above_other_images_after_a_few_steps(estimator: str):
    """Local DIM: after 20 steps on one batch, the global feature of an image scores its own map's positions
    above other images' positions by more than at the start."""
    torch.manual_seed(0)
    _, model, augment, optimizer, _ = build("dim", estimator=estimator)

    def gap() -> float:
        model.eval()
        with torch.no_grad():
            local, _, y = model.encode(augment(images())[0])
            u = model.global_embed(y)
            n, c = local.shape[:2]
            v = model.local_embed(local.flatten(2).transpose(1, 2).reshape(-1, c)).view(n, -1, u.shape[1])
            s = torch.einsum("ie,jpe->ijp", u, v).mean(dim=2)
        model.train()
        own = torch.eye(n, dtype=torch.bool)
        return (s[own].mean() - s[~own].mean()).item()

    before = gap()
    for step in range(20):
        out = model(augment(images()), step)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
    after = gap()
    assert after > 0 and after > before


def test_dim_global_and_prior_terms_train_their_own_parts():
    """Global DIM with prior matching: the prior discriminator's weights get gradients only from its own term,
    the encoder from the fooling one; an unknown stage is a usage error."""
    from sslcli.errors import UsageError

    _, model, augment, _, _ = build("dim", global_weight=1.0, local_weight=0.0, prior_weight=0.1)
    out = model(augment(images()), 0)
    assert set(out.logs) >= {"global", "prior_fool", "prior_discriminator"} and "local" not in out.logs
    model.zero_grad(set_to_none=True)
    fool, _ = model.prior_terms(model.encode(augment(images())[0])[2])
    fool.backward()  # the fooling term alone: nothing reaches the discriminator
    assert all(p.grad is None for p in model.prior.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    with pytest.raises(UsageError, match="local_stage"):
        build("dim", local_stage=-9)


def test_localagg_neighbours_are_the_k_nearest_entries_and_the_union_of_the_clusterings():
    """Background neighbours: the k bank entries nearest v (its own entry always among them); close neighbours:
    those in the image's cluster in any clustering, as Zhuang et al. define B_i and C_i."""
    from tests.test_methods import NUM_IMAGES

    _, model, _, _, _ = build("localagg", num_background=4, num_clusterings=2)
    bank = torch.nn.functional.normalize(torch.randn(NUM_IMAGES, model.cfg.embedding_dim,
                                                     generator=torch.Generator().manual_seed(1)), dim=1)
    model.bank.memory.copy_(bank)
    model.assignments.copy_(torch.stack([torch.arange(NUM_IMAGES) % 4, torch.arange(NUM_IMAGES) // 4]))
    v = torch.nn.functional.normalize(torch.randn(3, model.cfg.embedding_dim), dim=1)
    indices = torch.tensor([0, 5, 9])
    scores, background, close = model.neighbours(v, indices)
    for row, i in enumerate(indices.tolist()):
        sims = v[row] @ bank.T
        others = [j for j in sims.argsort(descending=True).tolist() if j != i][:3]
        assert sorted(background[row].tolist()) == sorted([i, *others])
        torch.testing.assert_close(scores[row], sims[background[row]])
        expected = [(j % 4 == i % 4) or (j // 4 == i // 4) for j in background[row].tolist()]
        assert close[row].tolist() == expected and close[row, background[row].tolist().index(i)]


def test_localagg_scales_the_reference_clusters_to_the_training_images():
    """The reference's ResNet runs cluster ImageNet's 1,281,167 images into 30,000 (about 43 a cluster): by
    default the clusters keep that share on any training set, a set count is kept, and neither exceeds the
    images; the background neighbours stay a count (the reference's 4096), at most every image; the model's
    k-means uses the scaled count."""
    from sslcli.methods.base import Budget
    from sslcli.methods.localagg.config import LocalAggConfig
    from sslcli.methods.localagg.model import LocalAgg

    default = LocalAggConfig()
    assert default.cluster_count(1_281_167) == 30_000
    assert default.cluster_count(20_000) == 468 and default.cluster_count(50_000) == 1171
    assert default.cluster_count(10) == 1  # never zero clusters
    assert LocalAggConfig(num_clusters=200).cluster_count(20_000) == 200
    assert LocalAggConfig(num_clusters=200).cluster_count(64) == 64
    assert default.background_count(20_000) == 4096 and default.background_count(300) == 300  # a count, capped
    cfg = LocalAggConfig(embedding_dim=8, num_clusterings=2)
    model = LocalAgg(cfg, torch.nn.Flatten(), 12, Budget(10, 5, 300))
    assert model.num_clusters == 7 and model.num_background == 300 and model.assignments.shape == (2, 300)
    assert model.assignments.max() < 7 and len(model.assignments[0].unique()) > 1


def test_localagg_fills_the_bank_warm_starts_with_instance_recognition_then_reclusters_every_epoch():
    from tests.test_methods import STEPS_PER_EPOCH, train_step

    _, model, augment, optimizer, _ = build("localagg", bank_fill_epochs=1, instance_epochs=1)
    assert (model.fill_steps, model.instance_steps) == (STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH)
    encoder = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    first = model.assignments.clone()
    logs = [train_step(model, augment, optimizer, step).logs for step in range(3 * STEPS_PER_EPOCH)]
    assert all(entry["loss"] == 0 for entry in logs[:STEPS_PER_EPOCH])  # the fill trains nothing
    assert all(entry["loss"] > 0 and "close_fraction" not in entry
               for entry in logs[STEPS_PER_EPOCH:2 * STEPS_PER_EPOCH])  # instance recognition
    assert all("close_fraction" in entry for entry in logs[2 * STEPS_PER_EPOCH:])  # local aggregation
    assert not torch.equal(model.assignments, first)  # the bank moved, the k-means after each epoch followed
    assert any(not torch.equal(v, encoder[k]) for k, v in model.encoder.state_dict().items())


def test_localagg_bank_fill_replaces_the_random_entries_and_trains_nothing():
    from tests.test_methods import STEPS_PER_EPOCH, batch_indices, train_step

    _, model, augment, optimizer, _ = build("localagg", bank_fill_epochs=1)
    weights = [p.detach().clone() for p in model.parameters()]
    for step in range(STEPS_PER_EPOCH):
        out = train_step(model, augment, optimizer, step)
        written = model.bank.memory[batch_indices(step)]
        torch.testing.assert_close(written, out.embeddings["projections"][0].detach())  # replaced, no momentum
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))
