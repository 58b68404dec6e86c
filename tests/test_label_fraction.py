"""--label-fraction: the seeded class-balanced subset behind the 1 % and 10 % protocols."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from sslcli import data
from sslcli.commands import probe
from sslcli.errors import UsageError
from sslcli.spec import ProbeSpec


def test_subset_is_seeded_class_balanced_nested_and_keeps_every_class():
    labels = [0] * 100 + [1] * 50 + [2] * 3  # unbalanced on purpose
    ten = data.label_fraction_subset(labels, 0.1, seed=0)
    assert ten == data.label_fraction_subset(labels, 0.1, seed=0)  # deterministic
    assert ten != data.label_fraction_subset(labels, 0.1, seed=1)  # but the seed matters
    assert Counter(labels[i] for i in ten) == {0: 10, 1: 5, 2: 1}  # each class keeps its share, at least one
    one = data.label_fraction_subset(labels, 0.01, seed=0)
    assert Counter(labels[i] for i in one) == {0: 1, 1: 1, 2: 1}
    assert set(one) <= set(ten), "a smaller fraction's images are among a larger one's"
    assert data.label_fraction_subset(labels, 1.0, seed=0) == list(range(len(labels)))
    with pytest.raises(UsageError, match="label fraction"):
        data.label_fraction_subset(labels, 0.0)


def test_subset_of_a_real_split_is_balanced(cifar_small: Path):
    images = data.find_images(cifar_small / "train")
    keep = data.label_fraction_subset(images.labels, 0.25, seed=3)
    picked = data.subset(images, keep)
    assert Counter(picked.labels) == {c: 10 for c in range(10)}
    assert picked.classes == images.classes
    assert all(images.labels[i] == label for i, label in zip(keep, picked.labels, strict=True))


def test_probe_trains_on_the_fraction_only(cifar_small: Path, resnet10t_encoder: Path):
    spec = ProbeSpec(encoder=resnet10t_encoder, data={"path": cifar_small, "label_fraction": 0.1, "num_workers": 0},
                     probe={"knn_k": [5], "baseline": False, "linear_weight_decays": [1e-3]})
    result = probe.run(spec)
    assert result["n_train"] == 40 and result["n_eval"] == 200 and result["label_fraction"] == 0.1
