"""The memory bank of InstDisc and CMC: what it scores, when and how its entries change, and the draws."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sslcli.methods import CONFIGS
from sslcli.methods.memory_bank import MemoryBank, bank_loss
from tests.test_methods import NUM_IMAGES, batch_indices, build, forward, images, train_step


def _bank(size: int = 12, dim: int = 4, momentum: float = 0.5) -> MemoryBank:
    torch.manual_seed(3)
    return MemoryBank(size, dim, momentum, "test")


def _negatives(draws: torch.Tensor, indices: torch.Tensor) -> list[list[int]]:
    """The entries draws name: each draw in [0, N - 1) moved past its image's own index."""
    return [[d if d < int(i) else d + 1 for d in row.tolist()] for row, i in zip(draws, indices, strict=True)]


def test_bank_loss_matches_lemniscate_with_fixed_negatives():
    """NCEAverage + NCECriterion written out: P = exp(v . f / tau) / Z over the positive and the drawn entries,
    Z = N x the mean of exp(v . f / tau) over this first batch, noise uniform over the other N - 1 entries;
    then the softmax variants."""
    bank = _bank()
    v = F.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    indices = torch.tensor([5, 0, 9])
    draws = torch.tensor([[1, 5, 7], [0, 0, 3], [10, 9, 4]])  # uniform in [0, N - 1): repeats happen
    t, n = 0.5, 12
    memory = bank.memory
    columns = [[int(indices[i]), *row] for i, row in enumerate(_negatives(draws, indices))]
    assert columns == [[5, 1, 6, 8], [0, 1, 1, 4], [9, 11, 10, 4]], "no image is its own negative"
    e = [[math.exp(float(v[i] @ memory[j]) / t) for j in columns[i]] for i in range(3)]
    z = n * sum(map(sum, e)) / 12
    k_pn = 3 / (n - 1)
    expected = 0.0
    for i in range(3):
        for j in range(4):
            p = e[i][j] / z
            expected -= math.log(p / (p + k_pn)) if j == 0 else math.log(k_pn / (p + k_pn))
    assert bank_loss(bank, v, indices, draws, t, "nce").item() == pytest.approx(expected / 3, rel=1e-4)
    assert bank.staged("z").args[0].item() == pytest.approx(z, rel=1e-5), "Z is staged for the step's commit"

    # softmax over the positive and the K drawn entries (CMC's NCESoftmaxLoss): target column 0
    sampled = sum(-math.log(e[i][0] / sum(e[i])) for i in range(3)) / 3
    assert bank_loss(bank, v, indices, draws, t, "softmax").item() == pytest.approx(sampled, rel=1e-4)
    # softmax over every entry (Wu et al. eq. 2): the target is the image's own index
    full = sum(-(float(v[i] @ memory[indices[i]]) / t - math.log(sum(math.exp(float(v[i] @ memory[j]) / t)
                                                                 for j in range(n)))) for i in range(3)) / 3
    assert bank_loss(bank, v, indices, None, t, "softmax").item() == pytest.approx(full, rel=1e-4)
    # Negative control: other negatives give another loss.
    assert abs(bank_loss(bank, v, indices, (draws + 1) % (n - 1), t, "nce").item() - expected / 3) > 1e-3


@pytest.mark.parametrize("every_entry", [True, False], ids=["scoring-every-entry", "gathering-rows"])
def test_both_ways_to_score_the_drawn_entries_agree(every_entry: bool, monkeypatch: pytest.MonkeyPatch):
    """Every entry scored in one matmul then the drawn columns picked, or the drawn rows gathered (lemniscate)."""
    from sslcli.methods import memory_bank

    bank = _bank()
    v = F.normalize(torch.randn(3, 4), dim=1)
    indices = torch.tensor([0, 11, 2])
    draws = bank.draw(3, 5, torch.device("cpu"))
    columns = [[int(indices[i]), *row] for i, row in enumerate(_negatives(draws, indices))]
    by_hand = torch.tensor([[float(v[i] @ bank.memory[j]) for j in columns[i]] for i in range(3)])
    assert not memory_bank.score_every_entry(1_000_000, 128, 256, 4097)  # ImageNet: gather the drawn rows
    assert memory_bank.score_every_entry(50_000, 128, 256, 4097)  # CIFAR-10: score every entry
    monkeypatch.setattr(memory_bank, "score_every_entry", lambda *shape: every_entry)
    torch.testing.assert_close(bank.scores(v, indices, draws), by_hand)


def test_negatives_are_uniform_over_the_other_entries_and_replayed_by_torchs_generator():
    bank = _bank()
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    draws = bank.draw(1000, 7, cpu)
    torch.manual_seed(0)
    assert torch.equal(bank.draw(1000, 7, cpu), draws), "a resume draws them again"
    indices = torch.arange(1000) % bank.size
    negatives = torch.tensor(_negatives(draws, indices))
    assert (negatives != indices[:, None]).all(), "an image is never its own negative"
    assert negatives.min() == 0 and negatives.max() == bank.size - 1
    for image in range(bank.size):  # the other 11 entries about equally often
        counts = torch.bincount(negatives[indices == image].flatten(), minlength=bank.size).float()
        others = counts[torch.arange(bank.size) != image]
        assert counts[image] == 0 and others.min() > 0.5 * others.mean(), (image, counts)
    assert bank.draw(3, 0, cpu) is None, "K = 0: every entry"


def test_instdisc_bank_takes_the_steps_embeddings_after_the_optimizer_step():
    _, model, augment, optimizer, _ = build("instdisc")
    bank = model.bank
    assert bank.memory.shape == (NUM_IMAGES, 16)
    torch.testing.assert_close(bank.memory.norm(dim=1), torch.ones(NUM_IMAGES))
    initial, indices = bank.memory.clone(), batch_indices(0)
    assert bank.z.item() == -1
    out = forward(model, augment(images(0)), 0)
    v = out.embeddings["projections"][0].detach()
    assert torch.equal(bank.memory, initial) and bank.z.item() == -1, "nothing changes before the step is applied"
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    model.on_step_end(0)
    expected = F.normalize(0.5 * initial[indices] + 0.5 * v, dim=1)
    torch.testing.assert_close(bank.memory[indices], expected)
    others = torch.ones(NUM_IMAGES, dtype=torch.bool)
    others[indices] = False
    assert torch.equal(bank.memory[others], initial[others]), "only the batch's entries move"
    z = bank.z.item()
    assert z > 0
    train_step(model, augment, optimizer, 1)
    assert bank.z.item() == z, "Z is estimated once, on the first applied step, then held"
    assert model.export_encoder() is model.encoder


def test_instdisc_bank_fill_epochs_write_the_untrained_embeddings_and_train_nothing():
    from sslcli import pretraining
    from sslcli.train import LoopConfig
    from tests.test_methods import STEPS_PER_EPOCH, tiny_spec

    _, model, augment, optimizer, _ = build("instdisc", bank_fill_epochs=1)
    assert model.fill_steps == STEPS_PER_EPOCH
    weights = {k: v.clone() for k, v in model.state_dict().items() if not any(s in k for s in ("running", "num_batches", "bank"))}
    for step in range(STEPS_PER_EPOCH):
        out = train_step(model, augment, optimizer, step)
        v = out.embeddings["projections"][0].detach()
        assert out.loss.item() == 0
        # The entries are the untrained embeddings themselves (momentum 0), not a blend with the random start.
        torch.testing.assert_close(model.bank.memory[batch_indices(step)], v)
    assert model.bank.z.item() == -1, "Z waits for the first step that trains"
    after = model.state_dict()
    assert all(torch.equal(after[k], w) for k, w in weights.items()), "no weight moved while filling"
    filled = model.bank.memory.clone()
    out = train_step(model, augment, optimizer, STEPS_PER_EPOCH)
    assert out.loss.item() > 0 and model.bank.z.item() > 0
    assert not torch.equal(model.head.weight, weights["head.weight"]), "the second epoch trains"
    indices = batch_indices(STEPS_PER_EPOCH)
    v = out.embeddings["projections"][0].detach()
    torch.testing.assert_close(model.bank.memory[indices], F.normalize(0.5 * filled[indices] + 0.5 * v, dim=1))
    # Negative control: without the fill the first epoch trains and its entries blend with the random start.
    _, plain, augment, optimizer, _ = build("instdisc")
    initial = plain.bank.memory.clone()
    out = train_step(plain, augment, optimizer, 0)
    assert out.loss.item() > 0 and not torch.equal(plain.head.weight, weights["head.weight"])
    v = out.embeddings["projections"][0].detach()
    torch.testing.assert_close(plain.bank.memory[batch_indices(0)],
                               F.normalize(0.5 * initial[batch_indices(0)] + 0.5 * v, dim=1))
    # pretrain warns a run that ends within the fill, as DeepCluster v2's memory pass.
    spec = tiny_spec("instdisc", bank_fill_epochs=1)
    warned = [pretraining.short_run_warnings(spec, LoopConfig(epochs=e, steps_per_epoch=5)) for e in (1, 2)]
    assert any("filling its memory" in line for line in warned[0])
    assert not any("filling its memory" in line for line in warned[1])


def test_a_memory_bank_method_needs_the_training_set_size():
    from sslcli.errors import UsageError
    from sslcli.methods import method_class
    from sslcli.methods.base import Budget
    from tests.test_methods import tiny_spec

    spec = tiny_spec("instdisc")
    with pytest.raises(UsageError, match="one memory-bank entry per training image"):
        method_class("instdisc")(spec.method, torch.nn.Identity(), 8, Budget(8, 2))
    with pytest.raises(UsageError, match="needs loss = 'softmax'"):
        tiny_spec("instdisc", num_negatives=0)
    with pytest.raises(UsageError, match="no other image to draw negatives from"):
        MemoryBank(1, 4, 0.5, "test").draw(2, 3, torch.device("cpu"))


def test_cmc_splits_each_view_into_l_and_ab_for_two_encoders():
    from sslcli import checkpoint, colour
    from sslcli.methods.cmc.model import AB_MEAN, AB_STD
    from sslcli.spec import dump

    spec, model, augment, _, info = build("cmc")
    x = augment(images(0))[0]
    l_view, ab_view = model.split(x)
    pixels = model.pixels.to_pixels(l_view)
    # The L encoder sees a neutral grey image: the same value in the 3 channels, the grey of the view's lightness.
    torch.testing.assert_close(pixels[:, 0], pixels[:, 2])
    lab = colour.rgb_to_lab(model.pixels.to_pixels(x))
    torch.testing.assert_close(colour.rgb_to_lab(pixels)[:, 0], lab[:, 0], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(ab_view[:, 0], (lab[:, 1] - AB_MEAN[0]) / AB_STD[0])
    assert ab_view.shape[1] == 2 and ab_view.abs().max() < 1.5
    # The ab encoder: the same architecture with a 2-channel stem, drawn afresh; the L encoder is exported.
    stem_l, stem_ab = model.encoder.conv1[0], model.ab_encoder.conv1[0]
    assert (stem_l.in_channels, stem_ab.in_channels) == (3, 2) and stem_l.out_channels == stem_ab.out_channels
    later_l, later_ab = model.encoder.layer1[0].conv1.weight, model.ab_encoder.layer1[0].conv1.weight
    assert later_l.shape == later_ab.shape and not torch.equal(later_l, later_ab)
    assert model.export_encoder() is model.encoder
    meta = checkpoint.encoder_metadata(info, method="cmc", epoch=1, step=1, spec=dump(spec),
                                       trained_input=CONFIGS["cmc"].encoder_input)
    assert "grey" in meta["trained_input"] and "ab encoder is not exported" in meta["trained_input"]


def test_cmc_scores_each_view_against_the_other_views_bank_and_updates_both():
    from sslcli.losses import info_nce

    _, model, augment, optimizer, _ = build("cmc")
    indices = batch_indices(0)
    banks = {"l": model.bank_l.memory.clone(), "ab": model.bank_ab.memory.clone()}
    torch.manual_seed(5)
    out = forward(model, augment(images(0)), 0)
    z_l, z_ab = (z.detach() for z in out.embeddings["projections"])
    # The same draw again (the first use of torch's generator in forward), and the losses by hand: L against
    # the ab bank, ab against the L bank.
    torch.manual_seed(5)
    (negatives,) = model.draw(len(indices), torch.device("cpu"))
    tau, kind = model.cfg.temperature, model.cfg.loss
    l_loss = bank_loss(model.bank_ab, z_l, indices, negatives, tau, kind)
    ab_loss = bank_loss(model.bank_l, z_ab, indices, negatives, tau, kind)
    torch.testing.assert_close(out.logs["l_loss"], l_loss)
    torch.testing.assert_close(out.logs["ab_loss"], ab_loss)
    torch.testing.assert_close(out.loss.detach(), l_loss + ab_loss)
    # Negative control: the L embedding against its own view's bank is another loss.
    assert abs(bank_loss(model.bank_l, z_l, indices, negatives, tau, kind) - l_loss) > 1e-3
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    model.on_step_end(0)
    for name, z in (("l", z_l), ("ab", z_ab)):
        bank = getattr(model, f"bank_{name}")
        torch.testing.assert_close(bank.memory[indices], F.normalize(0.5 * banks[name][indices] + 0.5 * z, dim=1))
        assert bank.z.item() > 0

    # In-batch negatives: no bank, the symmetric InfoNCE between the L and ab embeddings of the batch.
    _, batch_model, augment, _, _ = build("cmc", negatives="batch")
    assert not hasattr(batch_model, "bank_l")
    out = forward(batch_model, augment(images(0)), 0)
    z_l, z_ab = out.embeddings["projections"]
    expected = info_nce(z_l, z_ab, tau) + info_nce(z_ab, z_l, tau)
    torch.testing.assert_close(out.loss, expected)
