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


def invariant_spread_reference(z: torch.Tensor, t: float) -> torch.Tensor:
    """Ye et al. 2019's loss as its released BatchCriterion computes it (negM = 1), written out with loops:
    each of the 2N samples against the 2N - 1 others, its pair's probability and a binary term per negative."""
    n2 = z.shape[0]
    zn = F.normalize(z, dim=1)

    def e(i, j):
        return torch.exp(zn[i] @ zn[j] / t)

    total = 0.0
    for i in range(n2):
        pair = (i + n2 // 2) % n2
        denominator = sum(e(i, k) for k in range(n2) if k != i)
        total += torch.log(e(i, pair) / denominator)
        total += sum(torch.log(1 - e(i, j) / denominator) for j in range(n2) if j not in (i, pair))
    return -total / n2


def test_invariant_spread_matches_the_released_criterion_and_is_not_nt_xent():
    from sslcli.losses import invariant_spread

    g = torch.Generator().manual_seed(3)
    z = torch.randn(8, 5, generator=g)  # two views of 4 images: rows i and i + 4
    for t in (0.1, 0.5):
        loss = invariant_spread(z, z.detach(), t)
        torch.testing.assert_close(loss, invariant_spread_reference(z, t), rtol=1e-5, atol=1e-5)
        # Negative control: NT-Xent is its first term alone; the negatives' binary terms add to it.
        assert loss > nt_xent(z[:4], z[4:], t) + 1e-3


def test_invariant_spread_gradient_flows_through_the_anchors_only():
    from sslcli.losses import invariant_spread

    g = torch.Generator().manual_seed(4)
    z = torch.randn(6, 4, generator=g, requires_grad=True)
    invariant_spread(z, z.detach(), 0.1).backward()
    # The released code's other side is a constant (feat.data): the gradient is the reference's with keys frozen.
    keys = F.normalize(z.detach(), dim=1)
    anchors = z.detach().clone().requires_grad_(True)
    a = F.normalize(anchors, dim=1)
    total = 0.0
    for i in range(6):
        pair = (i + 3) % 6
        e = torch.exp(a[i] @ keys.T / 0.1)
        denominator = e.sum() - e[i]
        total += torch.log(e[pair] / denominator) + sum(torch.log(1 - e[j] / denominator) for j in range(6)
                                                        if j not in (i, pair))
    (-total / 6).backward()
    torch.testing.assert_close(z.grad, anchors.grad, rtol=1e-3, atol=1e-4)
    # ...which differs from the gradient with both sides live (negative control).
    live = z.detach().clone().requires_grad_(True)
    invariant_spread(live, live, 0.1).backward()
    assert (live.grad - z.grad).abs().max() > 1e-2, (live.grad - z.grad).abs().max()


# ---------------------------------------------------------------- the other methods' losses

from sslcli.losses import (  # noqa: E402
    barlow_twins,
    cpc_info_nce,
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


# ---------------------------------------------------------------- DeepCluster v2: its loss and its k-means

def deepcluster_reference(z, prototypes, assignments, t):
    """The appendix's loss written out: per head, -log softmax(<z, c_k> / t)[assignment] over every (image,
    crop) pair whose image has a cluster (the reference's ignore_index), their mean; then the mean over heads."""
    heads = []
    for c, target in zip(prototypes, assignments, strict=True):
        terms = []
        for crop in z:
            for i in range(crop.shape[0]):
                if target[i] < 0:
                    continue
                logits = torch.stack([crop[i] @ c[k] / t for k in range(c.shape[0])])
                terms.append(-(logits[target[i]] - torch.logsumexp(logits, dim=0)))
        heads.append(sum(terms) / len(terms))
    return sum(heads) / len(heads)


def test_deepcluster_loss_matches_the_appendix_and_skips_images_without_a_cluster():
    from sslcli.losses import deepcluster_v2

    z = [F.normalize(_randn(5, 6, seed=s), dim=1) for s in range(3)]  # 2 global crops + 1 local
    prototypes = [F.normalize(_randn(4, 6, seed=10), dim=1), F.normalize(_randn(7, 6, seed=11), dim=1)]
    assignments = torch.tensor([[0, 3, -1, 1, 2], [6, -1, -1, 0, 4]])
    expected = deepcluster_reference(z, prototypes, assignments, 0.1)
    torch.testing.assert_close(deepcluster_v2(z, prototypes, assignments, 0.1), expected, rtol=1e-5, atol=1e-5)
    # Negative controls: the images without a cluster do not count (counting them as cluster 0 changes the
    # value), and a batch where no image has one gives 0 with a zero gradient, not NaN.
    as_zero = assignments.clamp_min(0)
    assert not torch.allclose(deepcluster_v2(z, prototypes, as_zero, 0.1), expected, rtol=1e-3)
    z_grad = [v.clone().requires_grad_() for v in z]
    none = deepcluster_v2(z_grad, prototypes, torch.full((2, 5), -1), 0.1)
    none.backward()
    assert none.item() == 0.0 and all(torch.equal(v.grad, torch.zeros_like(v)) for v in z_grad)


def kmeans_reference(x, init, iterations, valid, keep_empty=True):
    """Spherical k-means as the reference's cluster_memory, one row and one cluster at a time."""
    centroids = [x[i].clone() for i in init.tolist()]

    def nearest(row):
        dots = [float(row @ c) for c in centroids]
        return dots.index(max(dots))  # the first of equal maxima, as argmax

    for _ in range(iterations):
        members = {k: [] for k in range(len(centroids))}
        for i in range(x.shape[0]):
            if valid[i]:
                members[nearest(x[i])].append(x[i])
        for k, rows in members.items():
            if rows:
                centroids[k] = F.normalize(torch.stack(rows).mean(dim=0), dim=0)
            elif not keep_empty:  # the bug the negative control stands for: an empty cluster's mean of nothing
                centroids[k] = torch.zeros_like(centroids[k])
    assigned = [nearest(x[i]) if valid[i] else -1 for i in range(x.shape[0])]
    return torch.stack(centroids), torch.tensor(assigned)


def test_spherical_kmeans_matches_a_row_by_row_reference_with_an_empty_cluster_and_invalid_rows():
    from sslcli.losses import kmeans_init, spherical_kmeans

    g = torch.Generator().manual_seed(3)
    centres = F.normalize(torch.randn(3, 8, generator=g), dim=1)
    x = F.normalize(centres.repeat_interleave(10, dim=0) + 0.3 * torch.randn(30, 8, generator=g), dim=1)
    valid = torch.ones(30, dtype=torch.bool)
    valid[[4, 17, 25]] = False
    x[25] = F.normalize(-centres.sum(dim=0), dim=0)  # far from every row: as a centroid it never wins one
    init = torch.tensor([0, 12, 22, 25])
    expected_c, expected_a = kmeans_reference(x, init, 5, valid)
    # Small chunks: the sums over several chunks are the sums over the whole memory.
    centroids, assigned = spherical_kmeans(x, init, 5, valid, chunk_elements=4 * 7)
    torch.testing.assert_close(centroids, expected_c, rtol=1e-5, atol=1e-6)
    assert torch.equal(assigned, expected_a)
    assert (assigned[~valid] == -1).all() and len(set(assigned[valid].tolist())) == 3
    assert not (assigned == 3).any() and torch.equal(centroids[3], x[25])  # empty: it kept its place
    # Negative control: a k-means that lets an empty cluster's centroid go to zero is told apart.
    zeroed, _ = kmeans_reference(x, init, 5, valid, keep_empty=False)
    assert not torch.allclose(centroids, zeroed, atol=1e-3)
    # The initial rows are distinct valid rows, the same for the same seed, invalid ones only when needed.
    first = kmeans_init(valid, 27, torch.Generator().manual_seed(1))
    assert len(set(first.tolist())) == 27 and valid[first].all()
    assert torch.equal(first, kmeans_init(valid, 27, torch.Generator().manual_seed(1)))
    assert not torch.equal(first, kmeans_init(valid, 27, torch.Generator().manual_seed(2)))
    assert not valid[kmeans_init(valid, 30, torch.Generator().manual_seed(1))[-3:]].any()


def cpc_reference(predictions: dict, targets: torch.Tensor, first: int) -> torch.Tensor:
    """CPC v2 eq. 3 written out: for every prediction W_k c_{i,j} of image b, the softmax over the dot products
    with every patch z of every image at every position, at the patch k rows below in the same image."""
    n, g = targets.shape[:2]
    patches = [(m, r, c) for m in range(n) for r in range(g) for c in range(g)]
    terms = []
    for k, prediction in predictions.items():
        for b in range(prediction.shape[0]):
            for i in range(prediction.shape[1]):
                for j in range(g):
                    scores = torch.stack([prediction[b, i, j] @ targets[m, r, c] for m, r, c in patches])
                    positive = patches.index((first + b, i + k, j))
                    terms.append(torch.logsumexp(scores, dim=0) - scores[positive])
    return torch.stack(terms).mean()


def test_cpc_info_nce_matches_the_paper_formula():
    # Three images of a 3 x 3 grid; the predictions are those of images 1 and 2 (a rank's rows of the batch).
    targets = _randn(3, 3, 3, 4, seed=6)
    predictions = {1: _randn(2, 2, 3, 4, seed=7), 2: _randn(2, 1, 3, 4, seed=8)}
    torch.testing.assert_close(cpc_info_nce(predictions, targets, first_image=1),
                               cpc_reference(predictions, targets, 1), rtol=1e-5, atol=1e-5)


def test_cpc_info_nce_known_value_and_a_prediction_one_row_off():
    # 27 orthogonal patches (one-hot z): a prediction of 10 x its own positive scores 10 against 0 for the
    # 26 other patches, loss log(1 + 26 e^-10); predicting the patch one row above instead costs ~10.
    g, d = 3, 27
    targets = torch.eye(d).view(3, g, g, d)
    k = 2
    right = {k: 10 * targets[:, k:].clone()}  # the prediction from row i is the patch at row i + k
    wrong = {k: 10 * targets[:, k - 1:g - 1].clone()}
    assert cpc_info_nce(right, targets).item() == pytest.approx(math.log(1 + 26 * math.exp(-10)), rel=1e-3)
    assert cpc_info_nce(wrong, targets).item() == pytest.approx(10 + math.log(1 + 26 * math.exp(-10)), rel=1e-3)
    # Other images' patches are negatives too: the positive must be the prediction's own image.
    other_image = {k: 10 * targets.roll(1, dims=0)[:, k:].clone()}
    assert cpc_info_nce(other_image, targets).item() > 9


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


def nce_reference(probabilities: torch.Tensor, noise_probability: float) -> float:
    """Wu et al. 2018 section 3.2 with loops: h(i, v) = P(i|v) / (P(i|v) + K P_n); the data sample (column 0) adds
    -log h, each of the K noise samples -log(1 - h); summed over the batch, divided by its size."""
    b, columns = probabilities.shape
    k = columns - 1
    total = 0.0
    for i in range(b):
        for j in range(columns):
            p = float(probabilities[i, j])
            h = p / (p + k * noise_probability)
            total += -math.log(h) if j == 0 else -math.log(1 - h)
    return total / b


def test_nce_matches_the_paper_and_tells_the_positive_from_the_noise():
    from sslcli.losses import nce

    probabilities = torch.rand(3, 6, generator=torch.Generator().manual_seed(0)) * 0.1 + 0.01
    pn = 1 / 50  # K P_n = 0.1, of the order of the probabilities (NCECriterion's eps of 1e-7 is then negligible)
    assert nce(probabilities, pn).item() == pytest.approx(nce_reference(probabilities, pn), rel=1e-5)
    # Negative control: the positive is column 0 only. Raising it lowers the loss, raising a noise sample's
    # probability raises it, and swapping the positive with a noise column changes the value.
    higher_positive, higher_noise = probabilities.clone(), probabilities.clone()
    higher_positive[:, 0] *= 10
    higher_noise[:, 3] *= 10
    assert nce(higher_positive, pn) < nce(probabilities, pn) < nce(higher_noise, pn)
    swapped = probabilities[:, [3, 1, 2, 0, 4, 5]]
    assert abs(nce(swapped, pn).item() - nce(probabilities, pn).item()) > 1e-3


def test_non_parametric_softmax_is_the_cross_entropy_of_the_target_column():
    from sslcli.losses import non_parametric_softmax

    scores = torch.tensor([[0.9, 0.1, -0.2], [0.3, 0.8, 0.0]])
    t = 0.1

    def ce(row, target):
        return -(row[target] / t - math.log(sum(math.exp(v / t) for v in row.tolist())))

    expected = (ce(scores[0], 0) + ce(scores[1], 1)) / 2
    assert non_parametric_softmax(scores, torch.tensor([0, 1]), t).item() == pytest.approx(float(expected), rel=1e-4)
    # Negative control: another target column gives another loss.
    assert non_parametric_softmax(scores, torch.tensor([2, 2]), t).item() > expected + 1


def triplet_reference(x: torch.Tensor, labels: list[int], margin: float, mining: str) -> torch.Tensor:
    """The triplet losses written out with loops (Hermans et al. 2017 batch-hard; Schroff et al. 2015 semi-hard
    as TensorFlow's triplet_semihard_loss picks its negatives, on Euclidean distances)."""
    n = len(labels)

    def d(i, j):
        return (x[i] - x[j]).norm()

    terms = []
    for a in range(n):
        positives = [p for p in range(n) if p != a and labels[p] == labels[a]]
        negatives = [k for k in range(n) if labels[k] != labels[a]]
        if mining == "batch_hard":
            p = max(positives, key=lambda j: d(a, j).item())
            k = min(negatives, key=lambda j: d(a, j).item())
            terms.append(torch.relu(d(a, p) - d(a, k) + margin))
            continue
        for p in positives:
            beyond = [k for k in negatives if d(a, k) > d(a, p)]
            k = (min(beyond, key=lambda j: d(a, j).item()) if beyond
                 else max(negatives, key=lambda j: d(a, j).item()))
            terms.append(torch.relu(d(a, p) - d(a, k) + margin))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard"])
def test_triplet_loss_matches_the_written_out_mining(mining: str):
    from sslcli.losses import triplet_loss

    g = torch.Generator().manual_seed(0)
    for copies, images in ((2, 5), (4, 3)):
        x = torch.randn(copies * images, 6, generator=g)
        labels = torch.arange(images).repeat(copies)
        for margin in (0.2, 1.0):
            torch.testing.assert_close(triplet_loss(x, labels, margin, mining),
                                       triplet_reference(x, labels.tolist(), margin, mining), rtol=1e-4, atol=1e-4)


def test_batch_hard_mining_picks_the_farthest_positive_and_the_nearest_negative():
    from sslcli.losses import triplet_partners

    # Points on a line: image 0's copies at 0, 1 and 5.5; image 1's at 2, 3 and 10.
    x = torch.tensor([[0.0], [2.0], [1.0], [3.0], [5.5], [10.0]])
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    positive, negative = triplet_partners(torch.cdist(x, x), labels, "batch_hard")
    assert positive.tolist() == [4, 5, 4, 5, 0, 1]  # the farthest copy of the same image
    assert negative.tolist() == [1, 2, 1, 2, 3, 4]  # the nearest copy of the other image
    # Semi-hard, anchor 0: for its copy at 1 the nearest negative beyond 1 is at 2 (index 1), for its copy at
    # 5.5 the one at 10 (index 5). Anchor 4 (at 5.5) with its copy at 0 (d = 5.5) has no negative farther than
    # that (3.5, 2.5, 4.5 away): the farthest one, at 10 (index 5), as TensorFlow's fallback.
    mask, chosen = triplet_partners(torch.cdist(x, x), labels, "semi_hard")
    assert mask[0].tolist() == [False, False, True, False, True, False]
    assert chosen[0, 2].item() == 1 and chosen[0, 4].item() == 5 and chosen[4, 0].item() == 5


def test_triplet_loss_is_zero_when_every_margin_holds_and_its_gradient_is_finite():
    from sslcli.losses import triplet_loss

    # Two tight clusters far apart: every triplet is satisfied by more than the margin.
    x = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.1, 0.0], [10.1, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 1, 0, 1])
    for mining in ("batch_hard", "semi_hard"):
        assert triplet_loss(x, labels, 0.5, mining).item() == 0.0
    moved = torch.tensor([[0.0, 0.0], [0.3, 0.2], [1.0, -0.1], [1.7, 0.4]], requires_grad=True)
    for mining in ("batch_hard", "semi_hard"):
        loss = triplet_loss(moved, labels, 0.5, mining)
        loss.backward()
        assert loss > 0 and torch.isfinite(moved.grad).all() and moved.grad.abs().sum() > 0
        moved.grad = None


def test_dim_estimators_match_the_written_out_bounds():
    """InfoNCE (DIM eq. 5): per positive (i, p), -log of its exp over itself plus every other image's position
    scored with y_i; JSD (eq. 4): E_neg softplus(s) + E_pos softplus(-s)."""
    from sslcli.losses import dim_mutual_information

    s = torch.randn(4, 4, 3, generator=torch.Generator().manual_seed(0))
    n, _, p = s.shape
    terms = []
    for i in range(n):
        negatives = torch.stack([s[i, j, q] for j in range(n) if j != i for q in range(p)])
        for q in range(p):
            terms.append(-(s[i, i, q] - torch.logsumexp(torch.cat([s[i, i, q][None], negatives]), 0)))
    torch.testing.assert_close(dim_mutual_information(s, "infonce"), torch.stack(terms).mean())
    pos = torch.stack([s[i, i, q] for i in range(n) for q in range(p)])
    neg = torch.stack([s[i, j, q] for i in range(n) for j in range(n) if j != i for q in range(p)])
    torch.testing.assert_close(dim_mutual_information(s, "jsd"), F.softplus(neg).mean() + F.softplus(-pos).mean())
    # Positives far above the negatives: both bounds near their best (InfoNCE 0, JSD 0).
    apart = torch.full((3, 3, 2), -20.0) + 40.0 * torch.eye(3)[:, :, None]
    assert dim_mutual_information(apart, "infonce") < 1e-6 and dim_mutual_information(apart, "jsd") < 1e-6


def test_local_aggregation_is_the_papers_ratio_of_neighbourhood_probabilities():
    """-log P(C n B | v) / P(B | v), P(A | v) = sum_{j in A} exp(v_j . v / tau) / Z, written out."""
    from sslcli.losses import local_aggregation

    g = torch.Generator().manual_seed(0)
    scores = torch.rand(3, 5, generator=g) * 2 - 1
    close = torch.tensor([[1, 0, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    tau = 0.07
    expected = []
    for s, c in zip(scores, close, strict=True):
        p = torch.exp(s / tau)
        expected.append(-torch.log(p[c].sum() / p.sum()))
    torch.testing.assert_close(local_aggregation(scores, close, tau), torch.stack(expected).mean())
    assert local_aggregation(scores[1:2], close[1:2], tau).abs() < 1e-6  # every background neighbour close: 0
