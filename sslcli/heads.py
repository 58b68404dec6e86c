"""Projection and prediction heads shared by the methods."""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, batch_norm: bool = True,
        last_batch_norm: bool = False, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear -> [BN] -> activation repeated, then a last Linear (optionally followed by an affine-free BN).

    With batch norm the hidden Linears carry no bias: BN's shift makes it redundant (SimCLR v2, BYOL).
    The last BN (SimCLR v2, MoCo v3, Barlow Twins, SimSiam) has no affine parameters, as in those papers.
    """
    if num_layers < 1:
        raise ValueError("an MLP needs at least one layer")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(activation())
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=not last_batch_norm))
    if last_batch_norm:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class MLPLayout:
    """The arguments of `mlp` as plain values: written beside a saved projection head (projector.safetensors)
    so that `sslcli finetune --keep-projection-layers` and users rebuild it without the method's code."""

    in_dim: int
    hidden_dim: int
    out_dim: int
    num_layers: int = 2
    batch_norm: bool = True
    last_batch_norm: bool = False

    def build(self) -> nn.Sequential:
        return mlp(self.in_dim, self.hidden_dim, self.out_dim, num_layers=self.num_layers,
                   batch_norm=self.batch_norm, last_batch_norm=self.last_batch_norm)

    def width_after(self, layers: int) -> int:
        """The output width of the first `layers` layers."""
        return self.out_dim if layers >= self.num_layers else self.hidden_dim

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "activation": "relu"}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MLPLayout:
        """ValueError when the text is not a layout (a damaged or foreign file)."""
        values = json.loads(text)
        if not isinstance(values, dict) or values.pop("activation", "relu") != "relu":
            raise ValueError("not an MLP layout with ReLU activations")
        types = {f.name: (bool if f.type in ("bool", bool) else int) for f in fields(cls)}
        if set(values) - set(types) or any(not isinstance(values.get(k, True), t) for k, t in types.items()):
            raise ValueError(f"unexpected layout fields or types: {sorted(values)}")
        try:
            layout = cls(**values)
        except TypeError as exc:  # a required size is missing
            raise ValueError(str(exc)) from None
        if min(layout.in_dim, layout.hidden_dim, layout.out_dim, layout.num_layers) < 1:
            raise ValueError("layout sizes must be positive")
        return layout


def first_layers(head: nn.Sequential, count: int) -> nn.Sequential:
    """The first `count` layers of an `mlp`, sharing its modules: a layer is a Linear with the batch norm and
    activation that follow it (SimCLR v2's `ft_proj_selector`: 1 = Linear + BN + ReLU of the first layer); the
    last layer is the output Linear (and its batch norm). The modules keep their indices, so the state-dict
    keys of the kept layers are the head's own."""
    starts = [i for i, module in enumerate(head) if isinstance(module, nn.Linear)]
    if not 1 <= count <= len(starts):
        raise ValueError(f"the head has {len(starts)} layers; cannot keep {count}")
    return head[: starts[count] if count < len(starts) else len(head)]


def classifier_on_projection(kept: nn.Sequential, width: int, num_classes: int) -> nn.Sequential:
    """Kept projection layers followed by a fresh linear classifier on their `width` outputs (SimCLR v2's
    fine-tuning head): Sequential(0: Linear, 1: BN, 2: ReLU, ..., n: Linear(width, num_classes))."""
    modules = OrderedDict(kept.named_children())
    modules[str(len(kept))] = nn.Linear(width, num_classes)
    return nn.Sequential(modules)


def replace_classifier(model: nn.Module, head: nn.Module) -> None:
    """Put `head` where a timm model keeps its classifier (fc for ResNets, head for ViTs, head.fc, ...)."""
    current = model.get_classifier()
    name = next(name for name, module in model.named_modules() if module is current)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], head)


def attach_projection(model: nn.Module, layout: MLPLayout, layers: int) -> nn.Module:
    """A timm classifier of sslcli finetune --keep-projection-layers: `model` (timm.create_model with
    num_classes) gets the first `layers` of the projection head described by `layout` and its linear classifier
    in place of its own classifier, at initial weights, ready for load_state_dict of the classifier file."""
    kept = first_layers(layout.build(), layers)
    replace_classifier(model, classifier_on_projection(kept, layout.width_after(layers), model.num_classes))
    return model


class NormalizedLinear(nn.Module):
    """A bias-free Linear whose rows are L2-normalised in the forward pass: weight norm with g = 1.

    DINO's last layer (norm_last_layer=True) and SwAV's prototypes are this: the logits are cosine
    similarities scaled only by the temperature. With learn_scale the per-row norm g is learned instead
    (DINO's norm_last_layer=False).
    """

    def __init__(self, in_dim: int, out_dim: int, learn_scale: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.weight, std=0.02)
        self.scale = nn.Parameter(torch.ones(out_dim, 1)) if learn_scale else None

    def forward(self, x: Tensor) -> Tensor:
        weight = F.normalize(self.weight, dim=1)
        if self.scale is not None:
            weight = weight * self.scale
        return F.linear(x, weight)


class DINOHead(nn.Module):
    """DINO's projection head (arXiv 2104.14294, section 3.1 and the official dino_head):

    a 3-layer MLP with GELU (hidden 2048) to a bottleneck (256), L2 normalisation, then a weight-normalised
    Linear to K prototypes. No batch norm, as in the paper's ViT setting.
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 num_layers: int = 3, norm_last_layer: bool = True, batch_norm: bool = False):
        super().__init__()
        self.mlp = mlp(in_dim, hidden_dim, bottleneck_dim, num_layers=num_layers, batch_norm=batch_norm,
                       activation=nn.GELU)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.last_layer = NormalizedLinear(bottleneck_dim, out_dim, learn_scale=not norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))
