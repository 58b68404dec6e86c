"""finetune --sla (joint class x rotation labels, aggregated inference, self-distillation head) and
finetune --distill-from CLASSIFIER --unlabeled DIR (SimCLR v2's distillation of a fine-tuned teacher)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sslcli import checkpoint, data, label_augmentation
from sslcli.command_specs import finetune_spec
from sslcli.commands import finetune
from sslcli.errors import UsageError
from sslcli.features import eval_view
from sslcli.finetuning import build_classifier, classifier_metadata, load_classifier
from sslcli.spec import FinetuneSpec
from sslcli.teacher_distillation import OnlineTeacher, agreement, soft_cross_entropy, teacher_probabilities
from tests.test_cli import sslcli_run


def val_batch(folder: Path, info) -> tuple[torch.Tensor, torch.Tensor]:
    val = data.find_images(folder / "test")
    x = torch.stack([data.decode_image(p, data.storage_size_for(info.image_size)) for p in val.paths])
    return eval_view(x, info), torch.tensor(val.labels)


def test_rotations_joint_labels_and_aggregation_line_up():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    rot = label_augmentation.rotated(x)
    assert rot.shape == (8, 3, 4, 4)
    for i in range(2):
        for k in range(4):
            assert torch.equal(rot[4 * i + k], torch.rot90(x[i], k, dims=(-2, -1)))
    assert label_augmentation.joint_labels(torch.tensor([0, 2])).tolist() == [0, 1, 2, 3, 8, 9, 10, 11]
    # Joint logits: copy k of image i scores class c at rotation k' with 100 i + 10 k + c, plus 1000 when k' == k:
    # the aggregate keeps only each copy's own rotation, so it is 1000 + 100 i + 15 + c (the mean of 10 k is 15).
    classes = 3
    joint = torch.zeros(8, 4 * classes)
    for i in range(2):
        for k in range(4):
            for c in range(classes):
                for kk in range(4):
                    joint[4 * i + k, 4 * c + kk] = 100 * i + 10 * k + c + (1000 if kk == k else 0)
    expected = torch.tensor([[1000 + 100 * i + 15 + c for c in range(classes)] for i in range(2)], dtype=torch.float32)
    assert torch.allclose(label_augmentation.aggregated(joint), expected)


def test_sla_loss_trains_the_joint_head_and_the_self_distillation_head_matches_the_aggregate():
    torch.manual_seed(0)
    classes, logits = 3, torch.randn(8, 5 * 3, requires_grad=True)
    labels = torch.tensor([1, 2])
    ce = torch.nn.CrossEntropyLoss()
    plain = label_augmentation.loss(logits[:, :12], labels, classes, ce, self_distill=False, temperature=1.0)
    assert plain.item() == pytest.approx(ce(logits[:, :12], torch.tensor([4, 5, 6, 7, 8, 9, 10, 11])).item())
    # The self-distillation head is already the aggregate: the KL term is 0 and only the two CEs remain.
    with torch.no_grad():
        logits[::4, 12:] = label_augmentation.aggregated(logits[:, :12])
    sd = label_augmentation.loss(logits, labels, classes, ce, self_distill=True, temperature=2.0)
    assert sd.item() == pytest.approx(plain.item() + ce(logits[::4, 12:], labels).item(), abs=1e-5)
    sd.backward()
    assert logits.grad[1::4, 12:].abs().sum() == 0  # the single head learns from the unrotated copy only


def test_finetune_sla_scores_by_aggregated_inference_and_its_classifier_loads_back(
        tmp_path: Path, resnet10t_encoder: Path, cifar_tiny: Path):
    spec = FinetuneSpec(encoder=resnet10t_encoder, data={"path": cifar_tiny, "num_workers": 0},
                        train={"epochs": 2, "batch_size": 16}, sla={"enabled": True}, out=tmp_path / "sla")
    result = finetune.run(spec)
    assert result["sla"]["enabled"] and result["steps"] == 12
    model, info, meta = load_classifier(Path(result["classifier"]))
    assert json.loads(meta["sla"]) == {"head": "joint", "rotations": 4} and meta["num_classes"] == "10"
    assert model.fc.out_features == 40
    x, y = val_batch(cifar_tiny, info)
    with torch.no_grad():
        agg = label_augmentation.predictions(model, x, 10, self_distill=False)[""]
        single = model(x)[:, ::4]  # the unrotated image's class logits alone: another answer
    assert (agg.argmax(1) == y).float().mean().item() == pytest.approx(result["top1"], abs=1e-6)
    assert not torch.allclose(agg, single)


def test_finetune_sla_distill_saves_the_plain_self_distilled_head(tmp_path: Path, resnet10t_encoder: Path,
                                                                  cifar_tiny: Path):
    out = tmp_path / "sd"
    spec = finetune_spec(resnet10t_encoder, cifar_tiny, epochs=1, batch_size=16, out=out, sla_distill=True,
                         sets=["data.num_workers=0"])
    assert spec.sla.enabled and spec.sla.self_distill  # --sla-distill implies --sla
    result = finetune.run(spec)
    assert result["sla"]["self_distill"] and 0 <= result["aggregated_top1"] <= 1
    assert "aggregated: top-1" in finetune.format_text(result)
    with safe_open(str(out / "classifier.safetensors"), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["sla"])["head"] == "self-distilled"
    # The documented plain load: a C-way timm classifier, one forward pass per image, the reported top-1.
    model = timm.create_model(meta["encoder"], num_classes=int(meta["num_classes"]))
    model.load_state_dict(load_file(out / "classifier.safetensors"), strict=True)
    _, info, _ = checkpoint.load_encoder(resnet10t_encoder)
    x, y = val_batch(cifar_tiny, info)
    with torch.no_grad():
        top1 = (model.eval()(x).argmax(1) == y).float().mean().item()
    assert top1 == pytest.approx(result["top1"], abs=1e-6)


def test_single_head_model_answers_as_the_self_distillation_slice(resnet10t_encoder: Path):
    encoder, info, _ = checkpoint.load_encoder(resnet10t_encoder)
    model = build_classifier(info, encoder, label_augmentation.outputs(3, True)).eval()
    plain = label_augmentation.single_head_model(model, 3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(plain(x), model(x)[:, 12:], atol=1e-6)
    assert plain.fc.out_features == 3 and model.fc.out_features == 15  # the trained model is untouched


def random_teacher(path: Path, encoder_file: Path, classes: list[str], seed: int) -> Path:
    """A classifier file of the encoder's architecture with a random head: the negative-control teacher."""
    encoder, info, source = checkpoint.load_encoder(encoder_file)
    torch.manual_seed(seed)
    model = build_classifier(info, encoder, len(classes))
    torch.nn.init.normal_(model.fc.weight, std=1.0)  # a head that answers confidently, at random
    meta = classifier_metadata(info, source, encoder_path=encoder_file, classes=classes, epoch=0, step=0, spec={})
    checkpoint.save_encoder(path, model, meta)
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory, resnet10t_encoder: Path, cifar_tiny: Path) -> Path:
    """A classifier sslcli finetune wrote (a few epochs at a high lr on the tiny split: it fits its train images,
    so its answers on them are spread over the classes)."""
    out = tmp_path_factory.mktemp("teacher") / "ft"
    spec = FinetuneSpec(encoder=resnet10t_encoder, data={"path": cifar_tiny, "num_workers": 0},
                        train={"epochs": 6, "batch_size": 20}, optim={"base_lr": 0.05, "warmup_epochs": 0}, out=out)
    return Path(finetune.run(spec)["classifier"])


def student_spec(encoder: Path, data_dir: Path, teacher_file: Path, out: Path, **distill) -> FinetuneSpec:
    return FinetuneSpec(encoder=encoder, data={"path": data_dir, "num_workers": 0},
                        train={"epochs": 8, "batch_size": 20}, optim={"base_lr": 1e-2, "warmup_epochs": 0},
                        distill={"teacher": teacher_file, "unlabeled": data_dir / "train", **distill}, out=out)


def test_the_student_comes_to_agree_with_the_teacher_on_the_unlabeled_images(
        tmp_path: Path, teacher: Path, resnet10t_encoder: Path, cifar_tiny: Path, capsys: pytest.CaptureFixture):
    # The student starts from the random encoder the teacher was fine-tuned from, with a fresh head.
    spec = student_spec(resnet10t_encoder, cifar_tiny, teacher, tmp_path / "student", temperature=0.5)
    teacher_model, teacher_info, meta = load_classifier(teacher)
    unlabeled = data.find_images(cifar_tiny / "train")
    targets, paths = teacher_probabilities(teacher_model, meta, teacher_info, unlabeled, 0.5, torch.device("cpu"),
                                           data.BadImagePolicy("skip"))
    assert torch.allclose(targets.sum(1), torch.ones(len(paths)))
    encoder, info, _ = checkpoint.load_encoder(resnet10t_encoder)
    torch.manual_seed(spec.train.seed)  # the student's fresh head, as the run draws it
    before = agreement(build_classifier(info, encoder, 10), info, paths, targets, torch.device("cpu"),
                       data.BadImagePolicy("skip"))
    result = finetune.run(spec)
    after = result["distill"]["agreement"]
    assert result["distill"]["n_unlabeled"] == len(paths) == 100
    assert after >= before + 0.3 and after >= 0.5, (before, after)  # measured: 0.03 -> 0.68
    assert "distilling resnet10t teacher" in capsys.readouterr().err
    with safe_open(result["classifier"], "pt") as f:
        assert f.metadata()["distill_teacher"] == str(teacher)


def test_a_random_teacher_yields_a_student_at_chance(tmp_path: Path, resnet10t_encoder: Path, cifar_small: Path):
    classes = data.find_images(cifar_small / "train").classes
    noise = random_teacher(tmp_path / "random.safetensors", resnet10t_encoder, classes, seed=3)
    spec = student_spec(resnet10t_encoder, cifar_small, noise, tmp_path / "student", temperature=1.0)
    spec = spec.model_copy(update={"train": spec.train.model_copy(update={"epochs": 2, "batch_size": 50})})
    result = finetune.run(spec)
    # It learned the teacher (agreement well above the 10 % of two unrelated answers) but not the labels:
    # 200 eval images, chance 10 %; 3 standard deviations above chance is 16 %.
    assert result["distill"]["agreement"] >= 0.3
    assert result["top1"] <= 0.16, result["top1"]


def test_the_online_teacher_sees_the_students_crop_at_its_own_size_and_normalisation(resnet10t_encoder: Path):
    encoder, info, _ = checkpoint.load_encoder(resnet10t_encoder)
    torch.manual_seed(0)
    teacher = build_classifier(info, encoder, 10).eval()
    torch.nn.init.normal_(teacher.fc.weight, std=1.0)  # confident answers, so that other inputs show
    student_info = dataclasses.replace(info, image_size=40, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))

    def normalised(x: torch.Tensor, of) -> torch.Tensor:
        return (x - torch.tensor(of.mean).view(1, 3, 1, 1)) / torch.tensor(of.std).view(1, 3, 1, 1)

    pixels = torch.rand(4, 3, 40, 40)
    views = normalised(pixels, student_info)
    online = OnlineTeacher(teacher, {}, info, student_info, temperature=0.5, device=torch.device("cpu"))
    resized = torch.nn.functional.interpolate(pixels, size=(info.image_size, info.image_size), mode="bilinear",
                                              antialias=True, align_corners=False)
    with torch.no_grad():  # the same crop, at the teacher's 32 px and normalised with its statistics
        expected = torch.softmax(teacher(normalised(resized, info)) / 0.5, 1)
        as_is = torch.softmax(teacher(views[..., 4:36, 4:36]) / 0.5, 1)
    assert torch.allclose(online(views), expected, atol=1e-5)
    assert (online(views) - as_is).abs().max() > 0.05  # the student's normalisation would be another input
    assert teacher.training is False and online(views).requires_grad is False


def test_the_teacher_labels_each_augmented_view_the_student_trains_on(
        tmp_path: Path, teacher: Path, resnet10t_encoder: Path, cifar_tiny: Path, monkeypatch: pytest.MonkeyPatch):
    seen: dict[str, list[torch.Tensor]] = {"student": [], "teacher": []}
    build = finetune.build_classifier

    def recorded_student(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_pre_hook(lambda m, inputs: seen["student"].append(inputs[0].detach().clone())
                                        if m.training else None)
        return model

    call = OnlineTeacher.__call__

    def recorded_teacher(self, views):
        seen["teacher"].append(views.detach().clone())
        return call(self, views)

    monkeypatch.setattr(finetune, "build_classifier", recorded_student)
    monkeypatch.setattr(OnlineTeacher, "__call__", recorded_teacher)
    spec = student_spec(resnet10t_encoder, cifar_tiny, teacher, tmp_path / "online")
    result = finetune.run(spec.model_copy(update={"train": spec.train.model_copy(update={"epochs": 1})}))
    assert result["distill"]["teacher_view"] == "augmented" and result["steps"] == 5 == len(seen["teacher"])
    assert all(torch.equal(t, s) for t, s in zip(seen["teacher"], seen["student"], strict=True))
    assert len({float(t.sum()) for t in seen["teacher"]}) == 5  # five different batches of random crops

    # teacher_view "center": the teacher's labels are computed once, before training; no per-step forward.
    seen["teacher"].clear()
    spec = student_spec(resnet10t_encoder, cifar_tiny, teacher, tmp_path / "center", teacher_view="center")
    result = finetune.run(spec.model_copy(update={"train": spec.train.model_copy(update={"epochs": 1})}))
    assert result["distill"]["teacher_view"] == "center" and result["steps"] == 5 and not seen["teacher"]
    assert 0 <= result["distill"]["agreement"] <= 1


def test_sigterm_during_distillation_saves_the_student_and_says_so(tmp_path: Path, resnet10t_encoder: Path,
                                                                   cifar_tiny: Path):
    noise = random_teacher(tmp_path / "teacher.safetensors", resnet10t_encoder,
                           data.find_images(cifar_tiny / "train").classes, seed=1)
    out = tmp_path / "student"
    args = [sys.executable, "-m", "sslcli", "finetune", str(resnet10t_encoder), "--data", str(cifar_tiny),
            "--distill-from", str(noise), "--unlabeled", str(cifar_tiny / "train"), "--epochs", "50",
            "--batch-size", "10", "--out", str(out), "--set", "train.log_every=1", "--set", "data.num_workers=0"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items() if k != "SSLCLI_DEBUG"})
    for line in proc.stderr:  # wait until the student is training (the teacher labels each step's views)
        if line.startswith("step 2/"):
            break
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("warning: stopped by SIGTERM") and str(out / "classifier.safetensors") in last
    with safe_open(str(out / "classifier.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["distill_teacher"] == str(noise) and 2 <= int(meta["step"]) < 500
    assert not (out / "finetune.json").exists()  # a partial student is not reported as a result


def test_soft_cross_entropy_is_the_hard_one_on_one_hot_targets():
    logits, labels = torch.randn(4, 5), torch.tensor([0, 3, 1, 4])
    one_hot = torch.nn.functional.one_hot(labels, 5).float()
    assert soft_cross_entropy(logits, one_hot, 1.0).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels).item(), abs=1e-6)


def test_distillation_refuses_a_non_classifier_teacher_and_a_missing_unlabeled_folder(
        tmp_path: Path, resnet10t_encoder: Path, cifar_tiny: Path):
    proc = sslcli_run("finetune", str(resnet10t_encoder), "--data", str(cifar_tiny), "--distill-from",
                      str(resnet10t_encoder), "--unlabeled", str(cifar_tiny / "train"), "--out", str(tmp_path / "a"))
    assert proc.returncode == 2 and "not an sslcli classifier" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    with pytest.raises(UsageError, match="--unlabeled"):
        finetune_spec(resnet10t_encoder, cifar_tiny, distill_from=resnet10t_encoder)
    with pytest.raises(UsageError, match="Mixup"):
        finetune_spec(resnet10t_encoder, cifar_tiny, sla=True, sets=["augment.mixup_alpha=0.2"])
    with pytest.raises(UsageError, match="do not combine"):
        finetune_spec(resnet10t_encoder, cifar_tiny, sla=True, distill_from=resnet10t_encoder,
                      unlabeled=cifar_tiny / "train")
