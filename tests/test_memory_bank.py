"""The memory bank of InstDisc and CMC: what it scores, when and how its entries change, and the draws."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sslcli.methods.memory_bank import MemoryBank, bank_loss
from tests.test_methods import NUM_IMAGES, batch_indices, build, forward, images, train_step


def _bank(size: int = 12, dim: int = 4, momentum: float = 0.5) -> MemoryBank:
    torch.manual_seed(3)
    return MemoryBank(size, dim, momentum, "test")


def test_bank_loss_matches_lemniscate_with_fixed_negatives():
    """NCEAverage + NCECriterion written out: P = exp(v . f / tau) / Z over the positive and the drawn entries,
    Z = N x the mean of exp(v . f / tau) over this first batch; then the softmax variants."""
    bank = _bank()
    v = F.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    indices = torch.tensor([5, 0, 9])
    negatives = torch.tensor([[1, 2, 5], [7, 7, 3], [11, 0, 4]])  # drawn uniformly: the positive may recur
    t, n = 0.5, 12
    memory = bank.memory
    columns = torch.cat([indices[:, None], negatives], dim=1)
    e = [[math.exp(float(v[i] @ memory[columns[i, j]]) / t) for j in range(4)] for i in range(3)]
    z = n * sum(map(sum, e)) / 12
    k_pn = 3 / n
    expected = 0.0
    for i in range(3):
        for j in range(4):
            p = e[i][j] / z
            expected -= math.log(p / (p + k_pn)) if j == 0 else math.log(k_pn / (p + k_pn))
    assert bank_loss(bank, v, indices, negatives, t, "nce").item() == pytest.approx(expected / 3, rel=1e-4)
    assert bank._pending_z.item() == pytest.approx(z, rel=1e-5), "Z is staged for the step's commit"

    # softmax over the positive and the K drawn entries (CMC's NCESoftmaxLoss): target column 0
    sampled = sum(-math.log(e[i][0] / sum(e[i])) for i in range(3)) / 3
    assert bank_loss(bank, v, indices, negatives, t, "softmax").item() == pytest.approx(sampled, rel=1e-4)
    # softmax over every entry (Wu et al. eq. 2): the target is the image's own index
    full = sum(-(float(v[i] @ memory[indices[i]]) / t - math.log(sum(math.exp(float(v[i] @ memory[j]) / t)
                                                                 for j in range(n)))) for i in range(3)) / 3
    assert bank_loss(bank, v, indices, None, t, "softmax").item() == pytest.approx(full, rel=1e-4)
    # Negative control: other negatives give another loss.
    assert abs(bank_loss(bank, v, indices, (negatives + 1) % n, t, "nce").item() - expected / 3) > 1e-3


def test_shared_negatives_score_like_the_same_row_drawn_for_every_image():
    bank = _bank()
    v = F.normalize(torch.randn(3, 4), dim=1)
    indices = torch.tensor([0, 1, 2])
    torch.manual_seed(0)
    shared = bank.draw(3, 5, shared=True, device=torch.device("cpu"))
    assert shared.shape == (3, 5) and shared.stride(0) == 0 and (shared == shared[0]).all()
    # the shortcut (one gather, a matmul) against the per-image path on a materialised copy
    torch.testing.assert_close(bank.scores(v, indices, shared), bank.scores(v, indices, shared.contiguous()))
    torch.manual_seed(0)
    again = bank.draw(3, 5, shared=True, device=torch.device("cpu"))
    assert torch.equal(again, shared), "draws come from torch's generator: a resume draws them again"
    per_image = bank.draw(1000, 7, shared=False, device=torch.device("cpu"))
    assert per_image.shape == (1000, 7) and per_image.min() >= 0 and per_image.max() == bank.size - 1
    assert bank.draw(3, 0, shared=False, device=torch.device("cpu")) is None, "K = 0: every entry"


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
