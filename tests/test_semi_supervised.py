"""S4L's semi-supervised pretraining (--label-fraction): labels reach the loss through a linear head, only then."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sslcli import checkpoint, data, semi_supervised
from sslcli.commands import pretrain
from sslcli.errors import UsageError
from sslcli.spec import PretrainSpec, resolve
from sslcli.step import StepOut
from sslcli.training_data import semi_supervised_labels
from tests.test_cli import assert_one_clean_error, sslcli_run


def spec_for(data_dir: Path, out: Path, *sets: str) -> PretrainSpec:
    base = ["encoder.name=resnet10t", "encoder.small_stem=false", "data.max_images=64", "train.batch_size=32",
            "train.epochs=1", "data.num_workers=0", "train.log_every=1", "monitor.knn_every=0",
            "monitor.report=false", "method.proj_hidden_dim=64", "method.proj_out_dim=32"]
    return resolve(PretrainSpec, options={"method.name": "simclr", "data.path": str(data_dir), "out": str(out)},
                   sets=[*base, *sets])


def test_labels_are_a_seeded_class_balanced_subset_and_minus_one_elsewhere(cifar_small: Path, tmp_path: Path):
    images = data.find_images(cifar_small / "train")
    labels = semi_supervised_labels(spec_for(cifar_small, tmp_path, "data.label_fraction=0.25",
                                             "data.max_images=400"), images)
    assert labels.shape == (400,)
    kept = labels >= 0
    assert kept.sum() == 100  # 10 of each class's 40
    assert torch.equal(labels[kept], torch.tensor(images.labels)[kept])
    assert torch.bincount(labels[kept]).tolist() == [10] * 10
    assert torch.equal(labels, semi_supervised_labels(spec_for(cifar_small, tmp_path, "data.label_fraction=0.25"),
                                                      images))  # seeded
    assert semi_supervised_labels(spec_for(cifar_small, tmp_path), images) is None


def test_supervised_term_is_added_only_for_labeled_images():
    method = torch.nn.Module()
    semi_supervised.attach_head(method, 4, 3)
    features = torch.randn(5, 4, requires_grad=True)
    base = (features ** 2).sum()

    def out() -> StepOut:
        return StepOut(loss=base, logs={"loss": base.detach()}, embeddings={"features": (features,)})

    unlabeled = semi_supervised.add_supervised_term(out(), method, torch.full((5,), -1), weight=2.0)
    assert unlabeled.loss.item() == base.item() and unlabeled.logs["supervised"].item() == 0.0  # negative control
    labels = torch.tensor([0, -1, 2, -1, 1])
    mixed = semi_supervised.add_supervised_term(out(), method, labels, weight=2.0)
    logits = method.supervised_head(features)
    ce = torch.nn.functional.cross_entropy(logits[labels >= 0], labels[labels >= 0])
    torch.testing.assert_close(mixed.loss, base + 2.0 * ce)
    torch.testing.assert_close(mixed.logs["self_supervised"], base.detach())
    mixed.loss.backward()
    assert method.supervised_head.weight.grad.abs().sum() > 0
    assert features.grad[1].abs().sum() > 0  # the method's own term still reaches every image


def test_pretrain_with_a_label_fraction_trains_the_head_and_logs_both_terms(cifar_small: Path, tmp_path: Path):
    summary = pretrain.run(spec_for(cifar_small, tmp_path / "semi", "data.label_fraction=0.5",
                                    "train.supervised_weight=0.5"))
    state = load_file(str(checkpoint.complete_states(tmp_path / "semi" / "checkpoints")[-1]))
    assert state["model/supervised_head.weight"].shape == (10, 512)
    records = [json.loads(line) for line in (tmp_path / "semi" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "supervised" in r]
    assert len(steps) == summary["steps"] == 2
    for r in steps:
        assert r["loss"] == pytest.approx(r["self_supervised"] + 0.5 * r["supervised"], rel=1e-5)
        assert r["supervised"] > 0
    # The exported encoder is the plain one: the head stays in the training state.
    encoder = load_file(str(tmp_path / "semi" / "encoder.safetensors"))
    assert not any("supervised_head" in k for k in encoder)


def test_without_a_label_fraction_there_is_no_head_and_no_supervised_term(cifar_small: Path, tmp_path: Path):
    pretrain.run(spec_for(cifar_small, tmp_path / "plain"))
    state = load_file(str(checkpoint.complete_states(tmp_path / "plain" / "checkpoints")[-1]))
    assert not any("supervised_head" in k for k in state)
    records = [json.loads(line) for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    assert records and not any("supervised" in r or "self_supervised" in r for r in records)


def test_label_fraction_on_unlabeled_data_is_a_usage_error(cifar_small: Path, tmp_path: Path):
    loose = tmp_path / "loose"
    loose.mkdir()
    for file in sorted((cifar_small / "train").rglob("*.jpg"))[:40]:
        shutil.copy(file, loose / f"{file.parent.name}-{file.name}")
    with pytest.raises(UsageError, match="labeled DATA"):
        pretrain.run(spec_for(loose, tmp_path / "run", "data.label_fraction=0.1"))
    proc = sslcli_run("pretrain", str(loose), "--label-fraction", "0.1", "--out", str(tmp_path / "cli"),
                      "--set", "data.num_workers=0", "--set", "encoder.name=resnet10t", "--set", "data.image_size=32")
    assert_one_clean_error(proc, 2, "--label-fraction", "unlabeled")
    assert not (tmp_path / "cli").exists()


@pytest.mark.parametrize("cache", ["on", "off"])
def test_batches_with_indices_name_each_images_position_in_the_training_set(cache: str, cifar_small: Path,
                                                                            tmp_path: Path):
    """A memory-bank method (uses_indices) gets (images, labels, indices): image j of a batch is the decoded
    file images.paths[indices[j]], from the decode cache and from the files alike."""
    from sslcli.training_data import training_batches

    spec = spec_for(cifar_small, tmp_path, "data.max_images=40", "train.batch_size=16", f"data.cache={cache}", "data.image_size=32")
    images = data.find_images(cifar_small / "train")
    images = data.subset(images, list(range(40)))
    batches, steps = training_batches(spec, images, data.BadImagePolicy("fail"), torch.device("cpu"),
                                      with_indices=True)
    seen = []
    for x, labels, indices in batches(0):
        assert labels is None and indices.dtype == torch.int64 and indices.shape == (x.shape[0],)
        for image, index in zip(x, indices.tolist(), strict=True):
            expected = data.decode_image(images.paths[index], image.shape[-1])
            assert torch.equal(image, expected)
        seen += indices.tolist()
    assert len(seen) == steps * 16 and len(set(seen)) == len(seen)
    with_labels, _ = training_batches(spec, images, data.BadImagePolicy("fail"), torch.device("cpu"),
                                      labels=torch.arange(40), with_indices=True)
    for x, labels, indices in with_labels(0):  # every image labeled: 16 of the whole set, then 16 labeled ones
        assert x.shape[0] == 32 and (labels[:16] == -1).all()
        assert torch.equal(labels[16:], indices[16:])  # the labeled images' labels follow their positions
    plain, _ = training_batches(spec, images, data.BadImagePolicy("fail"), torch.device("cpu"))
    assert all(isinstance(x, torch.Tensor) for x in plain(0))  # a run without a memory bank sees bare images


@pytest.mark.parametrize("cache", ["on", "off"])
def test_every_step_adds_a_full_labeled_batch_drawn_from_the_labeled_subset(cache: str, cifar_small: Path,
                                                                           tmp_path: Path):
    """S4L's labeled minibatch: with 10 % of the labels a batch of 32 used to hold about 3 labeled images
    (the supervised term's whole batch, which destabilised the encoder); now every step carries the batch's 32
    images unlabeled plus labeled_batch_size images of the labeled subset with their true classes, at a
    position in the labeled stream that depends on the step alone (a resume draws the same)."""
    from sslcli.training_data import training_batches

    spec = spec_for(cifar_small, tmp_path, "data.max_images=400", "data.label_fraction=0.1", f"data.cache={cache}",
                    "data.image_size=32", "train.labeled_batch_size=24")
    images = data.find_images(cifar_small / "train")
    labels = semi_supervised_labels(spec, images)
    batches, steps = training_batches(spec, images, data.BadImagePolicy("fail"), torch.device("cpu"), labels)
    epoch = list(batches(0))
    assert len(epoch) == steps == 400 // 32
    seen = set()
    for x, batch_labels, indices in epoch:
        assert indices is None and x.shape[0] == 32 + 24
        assert (batch_labels[:32] == -1).all()  # the unlabeled minibatch: the same images as without labels
        classes = batch_labels[32:]
        assert (classes >= 0).all()
        seen |= set(classes.tolist())
    assert seen == set(range(10))  # every class reaches the supervised term within an epoch
    # The labeled images are the labeled subset's own pixels with their own classes.
    x, batch_labels, _ = epoch[0]
    positions = torch.nonzero(labels >= 0).flatten().tolist()
    for image, label in zip(x[32:], batch_labels[32:].tolist(), strict=True):
        match = [j for j in positions if torch.equal(data.decode_image(images.paths[j], 32), image)]
        assert len(match) == 1 and labels[match[0]] == label == images.labels[match[0]]
    # Resumed mid-epoch and in a later epoch: the same batches as the uninterrupted stream.
    for got, want in zip(batches(0, 5), epoch[5:], strict=True):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    later = list(batches(1))
    assert not torch.equal(later[0][0][32:], epoch[0][0][32:])  # the labeled stream moves on across epochs
    got = next(iter(batches(1, 3)))
    assert torch.equal(got[0], later[3][0]) and torch.equal(got[1], later[3][1])


def test_a_labeled_batch_larger_than_the_labeled_subset_is_a_usage_error(cifar_small: Path, tmp_path: Path):
    from sslcli.training_data import training_batches

    spec = spec_for(cifar_small, tmp_path, "data.label_fraction=0.1", "data.image_size=32")  # 40 labeled images
    images = data.find_images(cifar_small / "train")
    small = spec.model_copy(update={"train": spec.train.model_copy(update={"labeled_batch_size": 41})})
    with pytest.raises(UsageError, match="fewer than one labeled batch of 41"):
        training_batches(small, images, data.BadImagePolicy("fail"), torch.device("cpu"),
                         semi_supervised_labels(small, images))
