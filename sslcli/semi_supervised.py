"""S4L's semi-supervised setting for every method: a linear classifier on the encoder's features, trained on
the labeled part of the batch, its cross entropy added to the method's self-supervised loss.

Zhai, Oliver, Kolesnikov & Beyer 2019, S4L: Self-Supervised Semi-Supervised Learning,
https://arxiv.org/abs/1905.03670 (their loss: L_sup + w L_self; here L_self + supervised_weight x L_sup).

The methods know nothing of labels. Every step's batch is S4L's two minibatches in one: train.batch_size
images of the whole set (label -1) followed by train.labeled_batch_size images of the labeled subset with
their classes (training_data.training_batches; the paper's minibatches are of equal size, the default), so
the method's loss covers both (S4L applies L_self to the labeled images too) and the supervised term always
averages over a full labeled batch. It used to see the labeled images that happened to be in the batch, a
fraction F of it (3 to 13 images at 10 %): that noisy cross entropy at the method's learning rate collapsed
the features (kNN below a random init). The step function adds the term to the method's StepOut, reading
the first view's pooled encoder features (StepOut.embeddings["features"][0], with their gradient, so the
supervised term trains the encoder too). The head is a submodule of the method (`supervised_head`),
so the optimizer, the checkpoints (an exact resume) and DDP see it like the method's own heads; the
exported encoder is unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from sslcli.losses import supervised_ce
from sslcli.step import StepOut

HEAD = "supervised_head"


def attach_head(method: nn.Module, feature_dim: int, num_classes: int) -> None:
    """A linear classifier on the encoder's features, registered on the method (before the optimizer is built)."""
    method.add_module(HEAD, nn.Linear(feature_dim, num_classes))


def add_supervised_term(out: StepOut, method: nn.Module, labels: torch.Tensor, weight: float) -> StepOut:
    """out with its loss plus weight x the cross entropy of the labeled images; both terms logged."""
    features = out.embeddings["features"][0]
    supervised = supervised_ce(getattr(method, HEAD)(features), labels)
    out.logs["self_supervised"] = out.loss.detach()
    out.logs["supervised"] = supervised.detach()
    out.loss = out.loss + weight * supervised
    out.logs["loss"] = out.loss.detach()
    return out
