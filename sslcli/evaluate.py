"""Evaluation of frozen features: weighted kNN and a linear probe.

Pure functions on tensors: no printing, no file IO, and every computation stays on the device the inputs
are on. Used by ``sslcli probe`` and by the online kNN monitor during training.

* kNN follows the weighted cosine vote of Wu et al. 2018 (arXiv 1805.01978) as used by DINO and solo-learn.
* The linear probe is full-batch multinomial logistic regression fitted with L-BFGS, with the weight decay
  picked on a class-stratified held-out part of the training set, then refitted on all of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "knn_classify",
    "topk_accuracy",
    "knn_evaluate",
    "standardize",
    "stratified_split",
    "fit_linear",
    "linear_probe",
]


def _check_pair(features: Tensor, labels: Tensor, name: str) -> None:
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{name}: expected features [n, d] and labels [n], got {tuple(features.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if features.shape[0] == 0:
        raise ValueError(f"{name}: no samples")


def knn_classify(
    train_features: Tensor,
    train_labels: Tensor,
    eval_features: Tensor,
    num_classes: int,
    ks: Sequence[int] = (20, 200),
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> dict[int, Tensor]:
    """Weighted cosine kNN class scores: ``{k: scores [n_eval, num_classes]}``.

    Each of the k nearest training samples (cosine similarity) votes for its class with weight
    ``exp((sim - s_max) / temperature)``, s_max the row's highest similarity: the votes of exp(sim / t) scaled
    by one factor per row, so the same ranking, but finite for any temperature (exp(1 / 1e-9) overflows).
    A k larger than the training set is clamped to its size; the returned dict is still keyed by the k that
    was asked for.
    """
    _check_pair(train_features, train_labels, "train")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {tuple(ks)}")
    # float32 even for half-precision features: exp(sim / 0.07) reaches e^14, past float16's range.
    train = F.normalize(train_features.float(), dim=1)
    evals = F.normalize(eval_features.float(), dim=1)
    labels = train_labels.to(device=train.device, dtype=torch.long)
    k_max = min(max(ks), train.shape[0])
    scores = {k: evals.new_zeros(evals.shape[0], num_classes) for k in ks}
    # Chunks of eval rows bound the similarity matrix to chunk_size x n_train.
    for start in range(0, evals.shape[0], chunk_size):
        sim = evals[start : start + chunk_size] @ train.T
        # One sorted topk for the largest k: every smaller k is a prefix of it.
        top_sim, top_idx = sim.topk(k_max, dim=1, largest=True, sorted=True)
        top_labels = labels[top_idx]
        top_weights = ((top_sim - top_sim[:, :1]) / temperature).exp()
        for k in ks:
            kk = min(k, k_max)
            scores[k][start : start + chunk_size].scatter_add_(1, top_labels[:, :kk], top_weights[:, :kk])
    return scores


def topk_accuracy(scores: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Fraction (0..1) of rows whose label is among the k highest scores; k is clamped to num_classes."""
    _check_pair(scores, labels, "scores")
    labels = labels.to(device=scores.device, dtype=torch.long)
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return {k: hits[:, : min(k, scores.shape[1])].any(dim=1).float().mean().item() for k in ks}


def knn_evaluate(
    train_features: Tensor,
    train_labels: Tensor,
    eval_features: Tensor,
    eval_labels: Tensor,
    num_classes: int,
    ks: Sequence[int] = (20, 200),
    temperature: float = 0.07,
) -> dict[str, dict[str, float]]:
    """kNN top-1/top-5 accuracy for each k: ``{"k20": {"top1": ..., "top5": ...}, ...}``."""
    _check_pair(eval_features, eval_labels, "eval")
    all_scores = knn_classify(train_features, train_labels, eval_features, num_classes, ks, temperature)
    result = {}
    for k, scores in all_scores.items():
        acc = topk_accuracy(scores, eval_labels, ks=(1, 5))
        result[f"k{k}"] = {"top1": acc[1], "top5": acc[5]}
    return result


def standardize(train: Tensor, *others: Tensor, eps: float = 1e-6) -> tuple[Tensor, ...]:
    """Zero mean / unit std per feature using the statistics of ``train`` only, applied to all inputs.

    Returns ``(train, *others)`` standardized. Constant features have their std clamped to ``eps`` so
    they become zero instead of NaN.
    """
    train = train.float()
    mean = train.mean(dim=0)
    std = train.std(dim=0, unbiased=False).clamp_min(eps)
    return tuple((t.float() - mean) / std for t in (train, *others))


def stratified_split(labels: Tensor, fraction: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Seeded class-stratified split into ``(keep_idx, holdout_idx)`` (sorted index tensors, on CPU).

    Each class gives ``round(fraction * n_c)`` samples to the holdout, at least 1 when it has >= 2 and
    never all of them, so every such class appears on both sides. Singleton classes stay in ``keep``.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    labels = labels.detach().cpu().long()
    generator = torch.Generator().manual_seed(seed)
    keep, hold = [], []
    for c in torch.unique(labels).tolist():  # sorted, so the draw order is fixed
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n_hold = min(max(1, round(fraction * len(idx))), len(idx) - 1)
        hold.append(idx[:n_hold])
        keep.append(idx[n_hold:])
    return torch.cat(keep).sort().values, torch.cat(hold).sort().values


def _second_moment(x: Tensor) -> Tensor:
    """``x.T x / n`` in float64 on CPU, where the preconditioner's eigendecomposition runs on any device."""
    return (x.T @ x / x.shape[0]).cpu().double()


def _preconditioner(
    second_moment: Tensor, weight_decay: float, device: torch.device
) -> tuple[Tensor, Tensor]:
    """``(P, P^-1)`` with ``P = (second_moment + c I)^(-1/2)``, ``c = weight_decay`` floored for float32."""
    eigvals, eigvecs = torch.linalg.eigh(second_moment)
    eigvals = eigvals.clamp_min(0) + max(weight_decay, 1e-6 * eigvals.max().item())
    p = (eigvecs * eigvals.rsqrt()) @ eigvecs.T
    p_inv = (eigvecs * eigvals.sqrt()) @ eigvecs.T
    return p.to(device, torch.float32), p_inv.to(device, torch.float32)


def fit_linear(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    weight_decay: float,
    max_iter: int = 300,
    init: torch.nn.Linear | None = None,
    second_moment: Tensor | None = None,
) -> torch.nn.Linear:
    """Multinomial logistic regression fitted full-batch with L-BFGS (strong Wolfe line search).

    Minimises mean cross-entropy + ``weight_decay * ||W||^2 / 2`` (the bias is not penalised). The problem
    is convex, so a zero start is as good as any and keeps the fit deterministic; ``init`` warm-starts
    from another fitted layer, which the probe uses to walk its weight-decay grid cheaply.
    ``second_moment`` (``features.T @ features / n``, float64 CPU) may be passed to reuse it across fits.
    """
    _check_pair(features, labels, "features")
    x = features.detach().float()
    y = labels.to(device=x.device, dtype=torch.long)
    # L-BFGS runs on V with W = V P, P ~ (second moment + wd)^(-1/2): the same objective and optimum, but
    # correlated SSL features no longer make it ill-conditioned, which cuts iterations by up to ~2-3x.
    if second_moment is None:
        second_moment = _second_moment(x)
    p, p_inv = _preconditioner(second_moment, weight_decay, x.device)
    v = torch.zeros(num_classes, x.shape[1], device=x.device)
    b = torch.zeros(num_classes, device=x.device)
    if init is not None:
        v.copy_(init.weight.detach().float() @ p_inv)
        b.copy_(init.bias.detach().float())
    v.requires_grad_(True)
    b.requires_grad_(True)
    # tolerance_change 1e-7 (default 1e-9): a float32 mean over ~1e5 terms is not resolved finer than that,
    # so the default only buys iterations that move the loss by rounding noise.
    optimizer = torch.optim.LBFGS(
        [v, b], max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe", tolerance_change=1e-7
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        weight = v @ p
        loss = F.cross_entropy(F.linear(x, weight, b), y) + 0.5 * weight_decay * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    # skip_init: a default nn.Linear would draw from (and so shift) the caller's global RNG stream.
    layer = torch.nn.utils.skip_init(torch.nn.Linear, x.shape[1], num_classes, device=x.device)
    with torch.no_grad():
        layer.weight.copy_(v @ p)
        layer.bias.copy_(b)
    return layer.requires_grad_(False)


def _accuracy(layer: torch.nn.Linear, features: Tensor, labels: Tensor) -> dict[int, float]:
    return topk_accuracy(layer(features), labels, ks=(1, 5))


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    eval_features: Tensor,
    eval_labels: Tensor,
    num_classes: int,
    weight_decays: Sequence[float] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
    holdout_fraction: float = 0.1,
    seed: int = 0,
    max_iter: int = 300,
) -> dict:
    """Linear probe: pick the weight decay on a stratified holdout of train, refit on all train, evaluate.

    Returns ``{"top1", "top5", "weight_decay", "holdout_top1": {str(wd): acc}}``.
    """
    _check_pair(train_features, train_labels, "train")
    _check_pair(eval_features, eval_labels, "eval")
    if not weight_decays:
        raise ValueError("weight_decays is empty")
    train_x, eval_x = standardize(train_features, eval_features)
    keep, hold = stratified_split(train_labels, holdout_fraction, seed)
    if len(hold) == 0:
        raise ValueError("linear probe needs at least one class with >= 2 training samples")
    keep, hold = keep.to(train_x.device), hold.to(train_x.device)
    labels = train_labels.to(train_x.device)
    # Walk the grid from strongest to weakest decay, warm-starting each fit from the previous optimum:
    # neighbouring solutions are close, so L-BFGS needs far fewer iterations than from zero.
    keep_x, keep_y, moment = train_x[keep], labels[keep], _second_moment(train_x[keep])
    holdout_top1, layers, previous = {}, {}, None
    for wd in sorted(weight_decays, reverse=True):
        previous = fit_linear(keep_x, keep_y, num_classes, wd, max_iter, init=previous, second_moment=moment)
        layers[wd] = previous
        holdout_top1[wd] = _accuracy(previous, train_x[hold], labels[hold])[1]
    # Ties go to the strongest decay (first in this order): the simpler model when the data cannot tell.
    best = max(sorted(weight_decays, reverse=True), key=lambda wd: holdout_top1[wd])
    final = fit_linear(train_x, labels, num_classes, best, max_iter, init=layers[best])
    acc = _accuracy(final, eval_x, eval_labels)
    return {
        "top1": acc[1],
        "top5": acc[5],
        "weight_decay": best,
        "holdout_top1": {str(wd): holdout_top1[wd] for wd in weight_decays},
    }
