"""SimCLR v2's distillation: a fine-tuned teacher labels unlabeled images, a student learns its soft labels.

Chen, Kornblith, Swersky, Norouzi & Hinton 2020, "Big Self-Supervised Models are Strong Semi-Supervised Learners"
(https://arxiv.org/abs/2006.10029), section 2.3: L_distill = -sum_x sum_y P_T(y|x; tau) log P_S(y|x; tau), with
P(y|x; tau) = softmax(z / tau), the teacher fixed; optionally combined with the labeled images' cross entropy
(here distill + labeled_weight x labeled, each a batch mean over its own rows). The loss is the paper's
equation, without the T^2 factor its distillation colab weights it by (the same at the default T = 1).

By default (distill.teacher_view "augmented", as the paper and its distillation colab) the teacher, in eval mode
and without gradients, labels the very view the student sees, every step: the student's random crop and flip,
brought to the teacher's input size and normalisation (OnlineTeacher), at the cost of one teacher forward per
step. With teacher_view "center" its probabilities are computed once, before training, on each image's eval view
(the centre crop at the teacher's input size) and stay the targets of every crop the student sees: one teacher
pass in all. An SLA teacher with the joint head labels by aggregated inference either way.

The training set is the unlabeled images (rows 0..U-1, labels -1) followed, when the labeled loss is on, by the
labeled ones (their class labels), shuffled together into the student's batches.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sslcli import console, data, label_augmentation
from sslcli.encoders import EncoderInfo
from sslcli.errors import UsageError
from sslcli.features import eval_view


def teacher_predict(teacher: nn.Module, meta: dict[str, str]):
    """The teacher's class logits of eval images: SLA's aggregated inference for a joint-head classifier."""
    sla = json.loads(meta["sla"]) if meta.get("sla") else None
    if sla is not None and sla.get("head") == "joint":
        classes = int(meta["num_classes"])
        return lambda x: label_augmentation.predictions(teacher, x, classes, self_distill=False)[""]
    return teacher


@torch.no_grad()
def teacher_probabilities(teacher: nn.Module, meta: dict[str, str], info: EncoderInfo, images: data.ImageSet,
                          temperature: float, device: torch.device, policy: data.BadImagePolicy,
                          batch_size: int = 256) -> tuple[torch.Tensor, list[Path]]:
    """softmax(teacher logits / temperature) of every readable image (N, C) and those images' paths, in order."""
    teacher.to(device).eval()
    predict = teacher_predict(teacher, meta)
    loader = data.make_loader(images.paths, data.storage_size_for(info.image_size), batch_size, shuffle=False,
                              drop_last=False, num_workers=0, seed=0, channels=info.channels)
    probs, kept = [], []
    for x, idx in data.iter_batches(loader, policy, images.paths):
        probs.append(F.softmax(predict(eval_view(x.to(device), info)).float() / temperature, 1).cpu())
        kept.extend(idx.tolist())
    if not kept:
        raise UsageError("no readable images in --unlabeled")
    console.info(f"teacher labeled {len(kept)} unlabeled images at temperature {temperature:g}")
    return torch.cat(probs), [images.paths[i] for i in kept]


class OnlineTeacher:
    """The teacher's temperature-scaled probabilities of the student's own augmented views (eval mode, no grad):
    the views come normalised for the student at its input size, and are brought to the teacher's (the same
    number of channels: finetune checks it before any work)."""

    def __init__(self, teacher: nn.Module, meta: dict[str, str], teacher_info: EncoderInfo,
                 student_info: EncoderInfo, temperature: float, device: torch.device):
        self.teacher = teacher.to(device).eval()
        self.predict = teacher_predict(self.teacher, meta)
        self.size, self.temperature = teacher_info.image_size, temperature

        def stats(values: tuple[float, ...]) -> torch.Tensor:
            return torch.tensor(values, device=device).view(1, -1, 1, 1)

        # x_teacher = (x_student * std_s + mean_s - mean_t) / std_t = x_student * scale + shift
        self.scale = stats(student_info.std) / stats(teacher_info.std)
        self.shift = (stats(student_info.mean) - stats(teacher_info.mean)) / stats(teacher_info.std)

    @torch.no_grad()
    def __call__(self, views: torch.Tensor) -> torch.Tensor:
        x = views * self.scale + self.shift
        if x.shape[-1] != self.size:  # a teacher fine-tuned at another resolution sees the same crop, resized
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return F.softmax(self.predict(x).float() / self.temperature, 1)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """-sum_y P_T(y) log softmax(logits / tau)_y, the batch mean (the targets already at tau)."""
    return -(targets * F.log_softmax(logits.float() / temperature, 1)).sum(1).mean()


def agreement(student: nn.Module, info: EncoderInfo, paths: list[Path], targets: torch.Tensor,
              device: torch.device, policy: data.BadImagePolicy) -> float:
    """The fraction of the unlabeled images on which the student's top class is the teacher's."""
    was_training = student.training
    student.eval()
    loader = data.make_loader(paths, data.storage_size_for(info.image_size), 256, shuffle=False, drop_last=False,
                              num_workers=0, seed=0, channels=info.channels)
    same, seen = 0, 0
    with torch.no_grad():
        for x, idx in data.iter_batches(loader, policy, paths):
            top = student(eval_view(x.to(device), info)).argmax(1).cpu()
            same += int((top == targets[idx].argmax(1)).sum())
            seen += len(idx)
    student.train(was_training)
    return same / max(1, seen)
