import math

import pytest
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


# ---------------------------------------------------------------- the other methods' losses

from sslcli.losses import (  # noqa: E402
    barlow_twins,
    dino_loss,
    info_nce,
    masked_mse,
    negative_cosine,
    sinkhorn,
    swapped_prediction,
    vicreg_terms,
)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_info_nce_with_queue_matches_moco_pseudocode():
    # MoCo v1 Algorithm 1: l_pos = q.k, l_neg = q.queue^T, logits = [l_pos, l_neg] / t, label 0.
    q, k, queue = _randn(5, 8, seed=1), _randn(5, 8, seed=2), _randn(12, 8, seed=3)
    t = 0.2
    total = 0.0
    for i in range(5):
        qi, ki = F.normalize(q[i], dim=0), F.normalize(k[i], dim=0)
        pos = torch.exp(qi @ ki / t)
        neg = sum(torch.exp(qi @ F.normalize(queue[j], dim=0) / t) for j in range(12))
        total += -torch.log(pos / (pos + neg))
    torch.testing.assert_close(info_nce(q, k, t, queue), total / 5, rtol=1e-5, atol=1e-5)


def test_info_nce_in_batch_matches_mocov3_pseudocode():
    q, k = _randn(6, 4, seed=4), _randn(6, 4, seed=5)
    t = 0.5
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    total = 0.0
    for i in range(6):
        logits = torch.stack([qn[i] @ kn[j] / t for j in range(6)])
        total += -(logits[i] - torch.logsumexp(logits, dim=0))
    torch.testing.assert_close(info_nce(q, k, t), total / 6, rtol=1e-5, atol=1e-5)


def test_negative_cosine_known_values():
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert negative_cosine(p, p * 5).item() == pytest.approx(-1.0)
    assert negative_cosine(p, -p).item() == pytest.approx(1.0)
    assert negative_cosine(p, p.flip(1)).item() == pytest.approx(0.0, abs=1e-7)


def barlow_reference(z1, z2, lambd):
    n, d = z1.shape
    a = (z1 - z1.mean(0)) / z1.std(0, unbiased=False)
    b = (z2 - z2.mean(0)) / z2.std(0, unbiased=False)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[k, i] * b[k, j] for k in range(n)) / n
            loss += (1 - c) ** 2 if i == j else lambd * c ** 2
    return loss


def test_barlow_matches_the_paper_formula_and_is_zero_for_decorrelated_identical_inputs():
    z1, z2 = _randn(7, 4, seed=6), _randn(7, 4, seed=7)
    torch.testing.assert_close(barlow_twins(z1, z2, 0.1), barlow_reference(z1, z2, 0.1), rtol=1e-4, atol=1e-5)
    # Identical inputs with exactly uncorrelated, standardised columns: C is the identity, so the loss is 0.
    basis = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert barlow_twins(basis, basis.clone(), 0.0051).item() == pytest.approx(0.0, abs=1e-6)
    # Identical but correlated columns: the diagonal is still 1, the off-diagonal terms remain.
    z = _randn(32, 3, seed=8)
    z = torch.cat([z, z[:, :1] + 0.1 * z[:, 1:2]], dim=1)
    assert barlow_twins(z, z.clone(), 1.0).item() > 0.5


def test_vicreg_terms_against_the_paper():
    z1, z2 = _randn(16, 6, seed=9), _randn(16, 6, seed=10)
    inv, var, cov = vicreg_terms(z1, z2)
    torch.testing.assert_close(inv, ((z1 - z2) ** 2).mean())
    # Variance: zero when every dimension's std is at least 1.
    big = _randn(64, 6, seed=11) * 5
    _, var_big, _ = vicreg_terms(big, big * 2)
    assert var_big.item() == 0.0
    # ... and 1 (the hinge at its maximum) for a collapsed batch.
    collapsed = torch.ones(8, 6)
    _, var_collapsed, cov_collapsed = vicreg_terms(collapsed, collapsed)
    assert var_collapsed.item() == pytest.approx(1.0 - 1e-2, abs=1e-3)
    assert cov_collapsed.item() == 0.0
    # Covariance: the off-diagonal of the sample covariance, squared, summed, over d, for each branch.
    expected = 0.0
    for z in (z1, z2):
        c = torch.cov(z.T)
        expected += (c.pow(2).sum() - torch.diagonal(c).pow(2).sum()) / 6
    torch.testing.assert_close(cov, expected, rtol=1e-5, atol=1e-6)


def test_sinkhorn_codes_are_an_equipartition():
    scores = F.normalize(_randn(32, 8, seed=12), dim=1) @ F.normalize(_randn(10, 8, seed=13), dim=1).T
    q = sinkhorn(scores, epsilon=0.05, iterations=3)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(32))  # each sample's code is a distribution
    q_many = sinkhorn(scores, epsilon=0.05, iterations=200)
    torch.testing.assert_close(q_many.sum(dim=0), torch.full((10,), 32 / 10), rtol=1e-3, atol=1e-3)
    assert (q >= 0).all()
    # A smaller epsilon gives sharper (lower-entropy) codes.
    entropy = lambda c: -(c * c.clamp_min(1e-12).log()).sum(1).mean()  # noqa: E731
    assert entropy(sinkhorn(scores, 0.02, 3)) < entropy(sinkhorn(scores, 0.5, 3))


def test_swapped_prediction_and_dino_loss_pair_every_other_view():
    scores = [_randn(4, 5, seed=s) for s in range(3)]  # 2 global + 1 local
    codes = [F.softmax(_randn(4, 5, seed=10 + s), dim=1) for s in range(2)]
    t = 0.1
    ce = lambda q, s: -(q * F.log_softmax(s / t, dim=1)).sum(1).mean()  # noqa: E731
    expected = (ce(codes[0], scores[1]) + ce(codes[0], scores[2]) + ce(codes[1], scores[0]) + ce(codes[1], scores[2])) / 4
    torch.testing.assert_close(swapped_prediction(scores, codes, t), expected)
    torch.testing.assert_close(dino_loss(scores, codes, t), expected)


def test_masked_mse_counts_only_masked_patches():
    pred, target = _randn(2, 4, 12, seed=20), _randn(2, 4, 12, seed=21)
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    spoiled = pred.clone()
    spoiled[mask == 0] = 1e6  # visible patches may be anything: they are not in the loss
    assert masked_mse(spoiled, target, mask, norm_pix=False) == masked_mse(pred, target, mask, norm_pix=False)
    per_patch = ((pred - target) ** 2).mean(-1)
    torch.testing.assert_close(masked_mse(pred, target, mask, norm_pix=False), per_patch[mask == 1].mean())
    # norm_pix: the target patch is standardised first, so a shifted and scaled target gives the same loss.
    torch.testing.assert_close(masked_mse(pred, target * 3 + 2, mask), masked_mse(pred, target, mask), rtol=1e-4, atol=1e-4)


def test_rebalanced_soft_ce_matches_a_hand_computed_value():
    from sslcli.losses import rebalanced_soft_ce

    # One image of 2 pixels, 3 bins. Pixel 0's target peaks on bin 0, pixel 1's on bin 2.
    logits = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]]).view(1, 3, 1, 2)
    targets = torch.tensor([[0.7, 0.0], [0.3, 0.4], [0.0, 0.6]]).view(1, 3, 1, 2)
    weights = torch.tensor([0.5, 3.0, 2.0])

    def log_softmax(values):
        log_total = math.log(sum(math.exp(v) for v in values))
        return [v - log_total for v in values]

    p0, p1 = log_softmax([1.0, 0.0, -1.0]), log_softmax([0.0, 2.0, 1.0])
    ce0 = -(0.7 * p0[0] + 0.3 * p0[1])
    ce1 = -(0.4 * p1[1] + 0.6 * p1[2])
    expected = (0.5 * ce0 + 2.0 * ce1) / 2  # weight of each pixel's argmax bin (0 and 2), mean over pixels
    assert rebalanced_soft_ce(logits, targets, weights).item() == pytest.approx(expected, rel=1e-6)
    # Negative control: bin 1 is no pixel's argmax, so its weight changes nothing; uniform weights give the
    # plain soft-target cross entropy.
    other = torch.tensor([0.5, 100.0, 2.0])
    assert rebalanced_soft_ce(logits, targets, other).item() == pytest.approx(expected, rel=1e-6)
    assert rebalanced_soft_ce(logits, targets, torch.ones(3)).item() == pytest.approx((ce0 + ce1) / 2, rel=1e-6)


def test_weighted_masked_l2_weighs_the_band_and_ignores_the_rest():
    from sslcli.losses import weighted_masked_l2

    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    target = torch.zeros(1, 1, 2, 2)
    hole = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    band = torch.tensor([[0.0, 1.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    # Hole pixel: error 1, weight 1; band pixel: error 4, weight 10; mean over the 2 pixels of the region.
    expected = (1 * 1 + 10 * 4) / 2
    assert weighted_masked_l2(pred, target, hole, band, band_weight=10.0).item() == pytest.approx(expected)
    assert weighted_masked_l2(pred, target, hole, band, band_weight=1.0).item() == pytest.approx((1 + 4) / 2)
    # Negative control: the pixels outside hole and band may be anything.
    spoiled = pred.clone()
    spoiled[0, 0, 1] = 1e6
    assert weighted_masked_l2(spoiled, target, hole, band).item() == pytest.approx(expected)
    # Channels are averaged: 3 identical channels give the same loss.
    assert weighted_masked_l2(pred.expand(1, 3, 2, 2), target.expand(1, 3, 2, 2), hole, band).item() == pytest.approx(expected)


def test_supervised_ce_averages_over_labeled_images_only():
    from sslcli.losses import supervised_ce

    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [1.0, 3.0]])
    labels = torch.tensor([0, -1, 1])
    expected = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.exp(3) / (math.exp(1) + math.exp(3)))) / 2
    assert supervised_ce(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    # Negative control: the unlabeled row's logits do not matter; no labeled row gives 0, not NaN.
    spoiled = logits.clone()
    spoiled[1] = torch.tensor([50.0, -50.0])
    assert supervised_ce(spoiled, labels).item() == pytest.approx(expected, rel=1e-6)
    assert supervised_ce(logits, torch.full((3,), -1)).item() == 0.0


# ---------------------------------------------------------------- DINOv2: Sinkhorn-centred DINO, iBOT, KoLeo

def sinkhorn_knopp_teacher_reference(teacher: torch.Tensor, temperature: float, iterations: int = 3) -> torch.Tensor:
    """dinov2/loss/dino_clstoken_loss.py sinkhorn_knopp_teacher, one process, written out as there."""
    q = torch.exp(teacher / temperature).t()
    b, k = q.shape[1], q.shape[0]
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    q *= b
    return q.t()


def dinov2_cls_loss_reference(student: list, teacher: list, ts: float, tt: float) -> torch.Tensor:
    """ssl_meta_arch.py forward_backward with 2 global crops and sinkhorn_knopp centering: the teacher's rows of the
    two crops centred together and stacked in reverse (crop A's student against crop B's teacher), the local crops
    against both, each term divided by the number of terms."""
    n_local = len(student) - 2
    centred = sinkhorn_knopp_teacher_reference(torch.cat([teacher[1], teacher[0]]), tt).view(2, -1, teacher[0].shape[1])
    terms = 2 + 2 * n_local

    def ce(s_list, t_list):
        total = 0.0
        for s in s_list:
            lsm = F.log_softmax(s / ts, dim=-1)
            for t in t_list:
                total -= (t * lsm).sum(dim=-1).mean()
        return total

    local = ce(student[2:], list(centred)) / terms
    glob = ce([torch.cat(student[:2])], [centred.flatten(0, 1)]) * 2 / terms
    return local + glob


def test_sinkhorn_dino_loss_matches_the_dinov2_code_and_centring_matters():
    from sslcli.losses import sinkhorn_dino_loss

    student = [_randn(6, 10, seed=30 + i) for i in range(5)]  # 2 global + 3 local crops
    teacher = [0.3 * _randn(6, 10, seed=40 + i) for i in range(2)]
    expected = dinov2_cls_loss_reference(student, teacher, 0.1, 0.05)
    got = sinkhorn_dino_loss(student, teacher, student_temperature=0.1, teacher_temperature=0.05)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # Negative controls: DINO's plain softmax of the teacher, and Sinkhorn over each crop alone (SwAV's way), differ.
    softmax = dino_loss(student, [F.softmax(t / 0.05, dim=1) for t in teacher], 0.1)
    per_crop = dino_loss(student, [sinkhorn(t, 0.05, 3) for t in teacher], 0.1)
    assert abs(softmax - got) > 1e-2 and abs(per_crop - got) > 1e-3
    # The centring spreads the global batch over the prototypes: every prototype gets about 12 / 10 of the mass.
    q = sinkhorn(torch.cat(teacher), 0.05, 200)
    torch.testing.assert_close(q.sum(dim=0), torch.full((10,), 1.2), rtol=1e-3, atol=1e-3)


def test_sinkhorn_with_padding_rows_equals_sinkhorn_of_the_valid_rows():
    scores = _randn(9, 7, seed=50)
    valid = torch.tensor([True, False, True, True, False, True, True, True, False])
    padded = sinkhorn(scores, 0.1, 3, valid=valid)
    torch.testing.assert_close(padded[valid], sinkhorn_knopp_teacher_reference(scores[valid], 0.1), rtol=1e-5, atol=1e-6)
    assert (padded[~valid] == 0).all()
    # Negative control: without the valid mask the padding rows take a share and change every code.
    assert not torch.allclose(sinkhorn(scores, 0.1, 3)[valid], padded[valid], atol=1e-3)
    # No valid row at all (a batch without masked patches): zeros, not NaN.
    assert (sinkhorn(scores, 0.1, 3, valid=torch.zeros(9, dtype=torch.bool)) == 0).all()


def ibot_reference(student: torch.Tensor, teacher: torch.Tensor, masks: torch.Tensor, ts: float) -> torch.Tensor:
    """dinov2/loss/ibot_patch_loss.py iBOTPatchLoss.forward: every patch of [C, N, K], masked ones counted, per crop
    divided by its masked patches, the mean over the crops."""
    loss = torch.sum(teacher * F.log_softmax(student / ts, dim=-1), dim=-1)
    loss = torch.sum(loss * masks.float(), dim=-1) / masks.sum(dim=-1).clamp(min=1.0)
    return -loss.mean()


def test_ibot_patch_loss_matches_the_dinov2_code_on_padded_rows():
    from sslcli.losses import ibot_patch_loss

    crops, patches, k = 4, 6, 5
    student, teacher = _randn(crops, patches, k, seed=60), F.softmax(_randn(crops, patches, k, seed=61), dim=-1)
    masks = torch.zeros(crops, patches, dtype=torch.bool)
    masks[0, [1, 4]] = True
    masks[1, [0, 2, 3, 5]] = True
    masks[3, [2]] = True  # crop 2 has no masked patch: it still counts among the crops
    expected = ibot_reference(student, teacher, masks, 0.1)
    # The rows of a padded buffer: the 7 masked patches, then 3 rows of unmasked patches (padding).
    index = torch.cat([masks.flatten().nonzero().flatten(), torch.tensor([3, 7, 13])])
    rows_s, rows_t = student.flatten(0, 1)[index], teacher.flatten(0, 1)[index]
    rows_t[7:] = 0  # padding targets are zeros (as sinkhorn gives them)
    got = ibot_patch_loss(rows_s, rows_t, index, masks, 0.1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # Negative controls: the padding rows' logits do not matter; a plain mean over the masked patches differs.
    spoiled = rows_s.clone()
    spoiled[7:] = 100.0
    torch.testing.assert_close(ibot_patch_loss(spoiled, rows_t, index, masks, 0.1), got)
    per_patch = -(rows_t[:7] * F.log_softmax(rows_s[:7] / 0.1, dim=-1)).sum(-1)
    assert abs(per_patch.mean() - got) > 1e-2


def test_koleo_matches_nearest_neighbour_distances_and_punishes_close_pairs():
    from sslcli.losses import koleo_loss

    x = _randn(7, 4, seed=70)
    xn = F.normalize(x, dim=1)
    expected = 0.0
    for i in range(7):  # Kozachenko-Leonenko: -log of the distance to the nearest other point, on the sphere
        nearest = min(float((xn[i] - xn[j] + 1e-8).norm()) for j in range(7) if j != i)
        expected -= math.log(nearest + 1e-8) / 7
    assert koleo_loss(x).item() == pytest.approx(expected, rel=1e-5)
    assert koleo_loss(x * 5).item() == pytest.approx(expected, rel=1e-5)  # on the sphere: scale does not matter
    # Negative control: moving one point next to another raises the loss; its gradient pushes them apart.
    close = x.clone()
    close[1] = x[0] + 1e-3 * _randn(4, seed=71)
    assert koleo_loss(close).item() > expected + 1
    moved = close.clone().requires_grad_(True)
    koleo_loss(moved).backward()
    apart = (moved - 0.01 * moved.grad).detach()
    assert (F.normalize(apart[0], dim=0) - F.normalize(apart[1], dim=0)).norm() > \
        (F.normalize(close[0], dim=0) - F.normalize(close[1], dim=0)).norm()
