"""SLA, self-supervised label augmentation: a classifier over joint (class, rotation) labels.

Lee, Hwang & Shin, ICML 2020, "Self-supervised Label Augmentation via Input Transformations"
(https://arxiv.org/abs/1910.05872; reference code github.com/hankook/SLA, trainers.create_sla_trainer and
create_sla_sd_trainer). Each training image is seen at the four rotations 0, 90, 180, 270 degrees (torch.rot90, k
quarter turns), all four in the same batch; the classifier has 4 x C outputs and rotation k of an image of class c
has the joint label 4c + k (the reference's `labels * n + i`). Aggregated inference averages, over the four rotated
copies of an image, the joint logits of that copy's own rotation: z_agg[c] = 1/4 sum_k z_k[4c + k], its softmax the
prediction (the paper's aggregation, eq. 5 with the reference's logit average).

Self-distillation (SLA+SD, sla.self_distill): a second head of C outputs on the same features, trained on the
unrotated image with the label's cross entropy plus T^2 KL(softmax(z_agg / T) || softmax(single / T)), the
aggregated prediction detached (the reference's create_sla_sd_trainer). At inference the single head alone
answers, one forward pass per image.

Both heads live in one linear layer of 5 x C outputs (joint first, then single) in the timm model's classifier
slot, so the model trains, checkpoints and runs under DDP as any classifier; `single_head_model` cuts the
C-way model out of it for the classifier file.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sslcli.heads import replace_classifier

ROTATIONS = 4


def outputs(num_classes: int, self_distill: bool) -> int:
    """How many outputs the SLA classifier has: 4C joint labels (+ C for the self-distillation head)."""
    return ROTATIONS * num_classes + (num_classes if self_distill else 0)


def rotated(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) images -> (4B, ...): image i at rotation k lands at row 4i + k (square images: the crops are)."""
    return torch.stack([torch.rot90(x, k, dims=(-2, -1)) for k in range(ROTATIONS)], 1).flatten(0, 1)


def joint_labels(labels: torch.Tensor) -> torch.Tensor:
    """Class labels (B,) -> joint labels (4B,) of rotated(x): 4c + k at row 4i + k."""
    return (labels[:, None] * ROTATIONS + torch.arange(ROTATIONS, device=labels.device)).flatten()


def aggregated(joint: torch.Tensor) -> torch.Tensor:
    """Joint logits (4B, 4C) of rotated(x) -> aggregated class logits (B, C): the mean over rotations k of each
    copy's logits of its own rotation, joint[4i + k, 4c + k]."""
    per_image = joint.float().view(-1, ROTATIONS, joint.shape[1] // ROTATIONS, ROTATIONS)  # (B, k input, c, k label)
    return torch.stack([per_image[:, k, :, k] for k in range(ROTATIONS)]).mean(0)


def loss(logits: torch.Tensor, labels: torch.Tensor, num_classes: int, criterion: Callable, self_distill: bool,
         temperature: float) -> torch.Tensor:
    """The SLA loss of the logits of rotated(x): the joint labels' loss (criterion: the run's cross entropy),
    and with self-distillation the single head's loss on the unrotated images plus the T^2-scaled KL to the
    detached aggregated prediction."""
    joint_width = ROTATIONS * num_classes
    joint = logits[:, :joint_width].float()
    total = criterion(joint, joint_labels(labels))
    if self_distill:
        single = logits[::ROTATIONS, joint_width:].float()  # rotation 0 of each image, as the reference
        target = F.softmax(aggregated(joint).detach() / temperature, 1)
        kl = F.kl_div(F.log_softmax(single / temperature, 1), target, reduction="batchmean")
        total = total + criterion(single, labels) + kl * temperature ** 2
    return total


def predictions(model: nn.Module, x: torch.Tensor, num_classes: int, self_distill: bool) -> dict[str, torch.Tensor]:
    """Class logits of eval images x: "" is what the classifier answers (the aggregated prediction; with
    self-distillation the single head on the unrotated images), "aggregated" the aggregated one alongside."""
    logits = model(rotated(x)).float()
    joint_width = ROTATIONS * num_classes
    agg = aggregated(logits[:, :joint_width])
    if not self_distill:
        return {"": agg}
    return {"": logits[::ROTATIONS, joint_width:], "aggregated": agg}


def last_linear(head: nn.Module) -> nn.Linear:
    """The classification layer of a classifier slot: the layer itself, or the last Linear of a Sequential
    (kept projection layers, then the classifier)."""
    if isinstance(head, nn.Linear):
        return head
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError(f"no linear classification layer in {type(head).__name__}")
    return linears[-1]


def single_head_model(model: nn.Module, num_classes: int) -> nn.Module:
    """A copy of an SLA+SD model whose classifier is the self-distillation head alone: a plain C-way timm
    classifier (num_classes = C), what the classifier file holds."""
    plain = copy.deepcopy(model)
    head = plain.get_classifier()
    layer = last_linear(head)
    single = nn.Linear(layer.in_features, num_classes, bias=layer.bias is not None,
                       device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        single.weight.copy_(layer.weight[ROTATIONS * num_classes:])
        if layer.bias is not None:
            single.bias.copy_(layer.bias[ROTATIONS * num_classes:])
    if head is layer:
        replace_classifier(plain, single)
    else:  # the projection layers stay, the last Linear is swapped in place
        parent = next(m for m in head.modules() if any(child is layer for child in m.children()))
        name = next(n for n, child in parent.named_children() if child is layer)
        setattr(parent, name, single)
    plain.num_classes = num_classes
    return plain
