import math

import torch
import torch.nn.functional as F

from sslcli.losses import nt_xent


def nt_xent_reference(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """SimCLR eq. 1 written out with loops, straight from the paper."""
    z = torch.cat([z1, z2])
    n2 = z.shape[0]
    n = n2 // 2

    def sim(a, b):
        return (F.cosine_similarity(z[a], z[b], dim=0) / t).exp()

    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        denominator = sum(sim(i, k) for k in range(n2) if k != i)
        total += -torch.log(sim(i, j) / denominator)
    return total / n2


def test_nt_xent_matches_the_paper_formula():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    for t in (0.1, 0.5, 1.0):
        torch.testing.assert_close(nt_xent(z1, z2, t), nt_xent_reference(z1, z2, t), rtol=1e-5, atol=1e-5)


def test_nt_xent_known_value_for_orthogonal_pairs():
    # Two images, views identical, the two images orthogonal: each anchor sees its positive at
    # similarity 1 and two negatives at similarity 0, so loss = -log(e^(1/t) / (e^(1/t) + 2)).
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = 0.5
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2))
    assert abs(nt_xent(z1, z1.clone(), t).item() - expected) < 1e-6


def test_nt_xent_rewards_aligned_views_and_is_scale_invariant():
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(16, 32, generator=g)
    aligned = nt_xent(z1, z1 + 0.01 * torch.randn(16, 32, generator=g), 0.2)
    shuffled = nt_xent(z1, z1[torch.randperm(16, generator=g)], 0.2)
    assert aligned < shuffled
    torch.testing.assert_close(nt_xent(z1, z1 * 3, 0.2), nt_xent(z1, z1, 0.2))


def test_nt_xent_gradients_flow_to_both_views():
    z1 = torch.randn(4, 8, requires_grad=True)
    z2 = torch.randn(4, 8, requires_grad=True)
    nt_xent(z1, z2, 0.2).backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0
