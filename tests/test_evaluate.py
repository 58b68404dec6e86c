"""Tests for sslcli.evaluate: kNN, top-k accuracy, standardization, stratified split and the linear probe."""

from __future__ import annotations

import math

import pytest
import torch

from sslcli.evaluate import (
    fit_linear,
    knn_classify,
    knn_evaluate,
    linear_probe,
    standardize,
    stratified_split,
    topk_accuracy,
)


def _clusters(n_per_class: int, num_classes: int, dim: int, spread: float, seed: int):
    """Class-centred Gaussian clusters: features [n, dim] and labels [n]."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=g) * 3
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    features = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return features, labels


def _naive_knn(train, train_labels, evals, num_classes, k, temperature):
    """Plain-Python weighted cosine kNN, written independently of the vectorised version."""
    out = []
    for e in evals.tolist():
        sims = []
        for t in train.tolist():
            dot = sum(a * b for a, b in zip(e, t, strict=True))
            sims.append(dot / (math.sqrt(sum(a * a for a in e)) * math.sqrt(sum(b * b for b in t))))
        order = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        row = [0.0] * num_classes
        for i in order:  # weights relative to the nearest neighbour's, exp((sim - max) / t)
            row[int(train_labels[i])] += math.exp((sims[i] - max(sims)) / temperature)
        out.append(row)
    return torch.tensor(out)


def test_knn_matches_naive_reference():
    g = torch.Generator().manual_seed(1)
    train, labels = torch.randn(12, 4, generator=g), torch.randint(0, 3, (12,), generator=g)
    evals = torch.randn(5, 4, generator=g)
    scores = knn_classify(train, labels, evals, num_classes=3, ks=(1, 3), temperature=0.5, chunk_size=2)
    assert set(scores) == {1, 3}
    for k in (1, 3):
        expected = _naive_knn(train, labels, evals, 3, k, 0.5)
        torch.testing.assert_close(scores[k], expected, rtol=1e-5, atol=1e-6)


def test_knn_hand_computed_toy():
    # Train points on the axes; the eval point (2, 0) has cosine 1, 0, -1 to classes 0, 1, 2 (scale ignored).
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 2])
    scores = knn_classify(
        train, labels, torch.tensor([[2.0, 0.0]]), num_classes=3, ks=(1, 3, 50), temperature=1.0
    )
    torch.testing.assert_close(scores[1], torch.tensor([[1.0, 0.0, 0.0]]))
    torch.testing.assert_close(scores[3], torch.tensor([[1.0, 1 / math.e, 1 / math.e**2]]))
    # k = 50 > n_train is clamped to 3, still keyed by 50.
    torch.testing.assert_close(scores[50], scores[3])


def test_knn_is_finite_and_nearest_neighbour_at_a_tiny_temperature():
    """t = 1e-9: exp(sim / t) overflows to inf (a garbage score below chance); the votes relative to the nearest
    neighbour's stay finite, and the vote is the nearest neighbour's class, as t -> 0 says it should be."""
    features, labels = _clusters(20, 3, 8, spread=1.5, seed=4)
    train, train_y, evals = features[::2], labels[::2], features[1::2]
    tiny = knn_classify(train, train_y, evals, num_classes=3, ks=(20,), temperature=1e-9)[20]
    nearest = knn_classify(train, train_y, evals, num_classes=3, ks=(1,), temperature=0.07)[1]
    assert torch.isfinite(tiny).all()
    assert torch.equal(tiny.argmax(dim=1), nearest.argmax(dim=1))


def test_knn_separable_vs_random_labels():
    train, train_labels = _clusters(60, 5, 32, spread=1.0, seed=0)
    evals, eval_labels = _clusters(20, 5, 32, spread=1.0, seed=0)  # same centres, fresh noise below
    evals = evals + 0.1 * torch.randn(evals.shape, generator=torch.Generator().manual_seed(5))
    result = knn_evaluate(train, train_labels, evals, eval_labels, 5, ks=(20, 200))
    assert set(result) == {"k20", "k200"}
    assert result["k20"]["top1"] >= 0.99 and result["k200"]["top1"] >= 0.99
    assert result["k20"]["top5"] == 1.0

    shuffled = train_labels[torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(3))]
    noise = knn_evaluate(train, shuffled, evals, eval_labels, 5, ks=(20,))
    assert noise["k20"]["top1"] < 0.45  # chance is 0.2


def test_topk_accuracy_hand_made():
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0],  # label 0 is top-1
            [0.1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.0],  # label 5 is 5th -> top-5 only
            [0.1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.0],  # label 6 is last -> neither
            [0.0, 0.0, 0.0, 0.1, 0.9, 0.0, 0.0],  # label 3 is 2nd -> top-5 only
        ]
    )
    acc = topk_accuracy(scores, torch.tensor([0, 5, 6, 3]), ks=(1, 5))
    assert acc == {1: pytest.approx(0.25), 5: pytest.approx(0.75)}
    # k beyond the number of classes is clamped: every label is among "all" classes.
    assert topk_accuracy(scores, torch.tensor([0, 5, 6, 3]), ks=(10,))[10] == 1.0


def test_standardize_uses_train_stats_only():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(500, 6, generator=g) * 4 + 10
    train[:, 5] = 3.0  # a constant feature must not produce NaN
    evals = torch.randn(200, 6, generator=g) * 4 + 20
    train_s, eval_s = standardize(train, evals)
    torch.testing.assert_close(train_s.mean(0), torch.zeros(6), atol=1e-4, rtol=0)
    torch.testing.assert_close(train_s[:, :5].std(0, unbiased=False), torch.ones(5), atol=1e-4, rtol=0)
    assert torch.isfinite(eval_s).all()
    # Eval was shifted by +10 = 2.5 train stds: standardizing with its own stats would centre it.
    assert (eval_s[:, :5].mean(0) > 2.0).all()


def test_stratified_split_every_class_on_both_sides():
    labels = torch.tensor([0] * 50 + [1] * 7 + [2] * 2 + [3] * 1)
    keep, hold = stratified_split(labels, 0.1, seed=0)
    assert sorted(torch.cat([keep, hold]).tolist()) == list(range(len(labels)))
    for c in (0, 1, 2):
        assert (labels[keep] == c).any() and (labels[hold] == c).any()
    assert (labels[hold] == 0).sum() == 5
    assert (labels[hold] == 3).sum() == 0  # a singleton class stays in the fitting part
    again = stratified_split(labels, 0.1, seed=0)
    assert torch.equal(again[1], hold)
    assert not torch.equal(stratified_split(labels, 0.1, seed=1)[1], hold)


def test_fit_linear_separates_clusters_and_penalises_weight_only():
    features, labels = _clusters(40, 3, 8, spread=0.5, seed=2)
    layer = fit_linear(features, labels, 3, weight_decay=1e-3)
    assert isinstance(layer, torch.nn.Linear) and not layer.weight.requires_grad
    assert (layer(features).argmax(1) == labels).float().mean() == 1.0
    # Stronger decay shrinks the weight.
    strong = fit_linear(features, labels, 3, weight_decay=10.0)
    assert strong.weight.norm() < 0.5 * layer.weight.norm()


def test_linear_probe_separable_and_deterministic():
    train, train_labels = _clusters(100, 5, 32, spread=1.0, seed=0)
    evals, eval_labels = _clusters(40, 5, 32, spread=1.0, seed=0)
    evals = evals + 0.2 * torch.randn(evals.shape, generator=torch.Generator().manual_seed(7))
    grid = (1e-4, 1e-2, 1.0)
    result = linear_probe(train, train_labels, evals, eval_labels, 5, weight_decays=grid, max_iter=100)
    assert result["top1"] >= 0.95 and result["top5"] == 1.0
    assert result["weight_decay"] in grid
    assert set(result["holdout_top1"]) == {str(wd) for wd in grid}
    assert result == linear_probe(
        train, train_labels, evals, eval_labels, 5, weight_decays=grid, max_iter=100
    )


def test_linear_probe_no_signal_is_near_chance():
    g = torch.Generator().manual_seed(0)
    train, train_labels = torch.randn(1000, 32, generator=g), torch.randint(0, 5, (1000,), generator=g)
    evals, eval_labels = torch.randn(500, 32, generator=g), torch.randint(0, 5, (500,), generator=g)
    result = linear_probe(
        train, train_labels, evals, eval_labels, 5, weight_decays=(1e-4, 1e-1), max_iter=100
    )
    assert result["top1"] < 0.3  # chance is 0.2
    assert result["weight_decay"] in (1e-4, 1e-1)


def test_linear_probe_rejects_bad_shapes():
    with pytest.raises(ValueError):
        linear_probe(
            torch.randn(10, 4), torch.zeros(9, dtype=torch.long), torch.randn(3, 4), torch.zeros(3), 2
        )
