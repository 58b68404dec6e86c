"""Loss functions as pure functions of embeddings. Each is tested against a hand-written reference.

Stop-gradients are the caller's business: a method passes targets already detached where its paper
stops the gradient, so each function here computes exactly its equation. Every loss is computed in
float32 with autocast switched off: under bf16 autocast a matmul would round its float32 inputs back to
bf16 (8 bits of mantissa), too coarse for logits at temperature 0.1 or a 2048 x 2048 cross-correlation.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from sslcli import distributed

F_ = TypeVar("F_", bound=Callable)


def full_precision(fn: F_) -> F_:
    """Run fn with autocast off on every device type (cheap: loss math is tiny next to the encoder)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


@full_precision
def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR's normalised temperature-scaled cross entropy (arXiv 2002.05709, eq. 1).

    z1[i] and z2[i] are two views of image i. Each of the 2N embeddings has its other view as the
    positive and the remaining 2N - 2 embeddings as negatives; the loss is the mean over all 2N anchors.
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.T / temperature
    # An anchor is never its own negative: mask the diagonal out of the softmax.
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    # The positive of anchor i is i + n (mod 2n); built on the device to avoid a host-to-device copy.
    targets = (torch.arange(2 * n, device=z.device) + n) % (2 * n)
    return F.cross_entropy(logits, targets)


@full_precision
def invariant_spread(anchors: Tensor, keys: Tensor, temperature: float) -> Tensor:
    """Invariant and Spreading Instance Feature's softmax-embedding loss (Ye et al. 2019, arXiv 1904.03436, eq. 7).

    anchors [2N, D] hold two views of N images (rows i and i + N are one image); keys are the same rows, which
    the released code detaches (BatchAverage.py takes `feat.data` for the other side of every inner product),
    so a caller passes anchors.detach(). Over L2-normalised rows, s_ij = <a_i, k_j> / t and anchor i's softmax
    over the 2N - 1 other samples is P_i(j) = exp(s_ij) / sum_{k != i} exp(s_ik). The loss is

        -1/(2N) sum_i [ log P_i(i + N) + sum_{j != i, i + N} log(1 - P_i(j)) ]:

    the other view recognised as the anchor's instance, and each other instance *not* recognised, a binary
    term per negative (the paper's independence assumption). NT-Xent is the first term alone, so this is
    NT-Xent plus the negatives' terms. The paper writes the first term for the N originals against their
    augmented copies; the released code that trained its models (BatchCriterion, negM = 1) takes each of the
    2N samples as an anchor against the 2N - 1 others, as here. 1 - P is kept above 1e-12: a negative
    identical to its anchor at a low temperature gives a large finite term instead of inf.
    """
    two_n = anchors.shape[0]
    a = F.normalize(anchors.float(), dim=1)
    k = F.normalize(keys.float(), dim=1)
    diagonal = torch.eye(two_n, dtype=torch.bool, device=a.device)
    log_p = F.log_softmax((a @ k.T / temperature).masked_fill(diagonal, float("-inf")), dim=1)
    positive = (torch.arange(two_n, device=a.device) + two_n // 2) % two_n
    is_positive = torch.zeros_like(diagonal).scatter_(1, positive.unsqueeze(1), True)
    # log(1 - P) as log(-expm1(log P)): exact for the small P of most negatives.
    log_not = torch.log((-torch.expm1(log_p)).clamp_min(1e-12))
    negatives = torch.where(diagonal | is_positive, torch.zeros_like(log_not), log_not).sum(dim=1)
    return -(log_p.gather(1, positive.unsqueeze(1)).squeeze(1) + negatives).mean()


@full_precision
def info_nce(q: Tensor, k: Tensor, temperature: float, queue: Tensor | None = None) -> Tensor:
    """InfoNCE (MoCo, arXiv 1911.05722 eq. 1): q[i]'s positive is k[i].

    With a queue [K, D] of past keys the negatives are the queue (MoCo v1/v2); without one they are the
    other keys of the batch (MoCo v3, arXiv 2104.02057 Algorithm 1). Inputs need not be normalised.
    """
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float(), dim=1)
    if queue is None:
        logits = q @ k.T
        targets = torch.arange(q.shape[0], device=q.device)
    else:
        positive = (q * k).sum(dim=1, keepdim=True)
        logits = torch.cat([positive, q @ F.normalize(queue.float(), dim=1).T], dim=1)
        targets = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits / temperature, targets)


@full_precision
def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """Mean negative cosine similarity -<p/|p|, z/|z|> (SimSiam eq. 1; BYOL's loss is 2 + 2x this)."""
    return -F.cosine_similarity(p.float(), z.float(), dim=1).mean()


def _off_diagonal(m: Tensor) -> Tensor:
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


@full_precision
def barlow_twins(z1: Tensor, z2: Tensor, lambd: float) -> Tensor:
    """Barlow Twins (arXiv 2103.03230 eq. 1): push the cross-correlation of the batch-normalised
    embeddings towards the identity; lambd weighs the off-diagonal (redundancy) terms.
    """
    n = z1.shape[0]
    z1, z2 = z1.float(), z2.float()
    z1 = (z1 - z1.mean(0)) / z1.std(0, unbiased=False).clamp_min(1e-6)
    z2 = (z2 - z2.mean(0)) / z2.std(0, unbiased=False).clamp_min(1e-6)
    c = z1.T @ z2 / n
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = _off_diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


@full_precision
def vicreg_terms(z1: Tensor, z2: Tensor, eps: float = 1e-4) -> tuple[Tensor, Tensor, Tensor]:
    """VICReg's three terms (arXiv 2105.04906 eqs. 1-5): invariance (MSE), variance (hinge on each
    dimension's std at 1), covariance (squared off-diagonal covariances / D), each summed over branches
    as in the official code (variance averaged over the two)."""
    z1, z2 = z1.float(), z2.float()
    n, d = z1.shape
    invariance = F.mse_loss(z1, z2)
    variance = z1.new_zeros(())
    covariance = z1.new_zeros(())
    for z in (z1, z2):
        z = z - z.mean(dim=0)
        std = torch.sqrt(z.var(dim=0) + eps)
        variance = variance + F.relu(1 - std).mean() / 2
        cov = z.T @ z / (n - 1)
        covariance = covariance + _off_diagonal(cov).pow(2).sum() / d
    return invariance, variance, covariance


@torch.no_grad()
@full_precision
def sinkhorn(scores: Tensor, epsilon: float = 0.05, iterations: int = 3, valid: Tensor | None = None) -> Tensor:
    """SwAV's Sinkhorn-Knopp codes (arXiv 2006.09882, section 3.1 and Algorithm 1 of its appendix).

    scores [B, K] (prototype similarities) -> codes Q [B, K] whose rows sum to 1 and whose columns
    tend to B/K each: an equipartition of the batch over the prototypes. Under torchrun the batch is the
    global one: the sums over samples are all-reduced, as in the official distributed_sinkhorn.
    DINOv2 centres its teacher with the same iterations, epsilon being the teacher temperature
    (dino_clstoken_loss.py and ibot_patch_loss.py, sinkhorn_knopp_teacher).

    valid [B] (bool) marks the rows that take part; the others (DINOv2's fixed-size buffer of masked patches,
    padded so that no shape depends on the data) get no share of the prototypes and a code of zeros. The number
    of samples is then the global count of valid rows, as DINOv2's all-reduced n_masked_patches.
    """
    # Subtracting the (global) max leaves Q unchanged (it is normalised) and keeps exp() finite.
    peak = distributed.all_reduce_(scores.float().max().clone(), op="max")
    q = torch.exp((scores.float() - peak) / epsilon).T  # [K, B]
    k = q.shape[0]
    if valid is None:
        q /= distributed.all_reduce_(q.sum())
        b = q.shape[1] * distributed.world_size()
        for _ in range(iterations):
            q /= distributed.all_reduce_(q.sum(dim=1, keepdim=True))
            q /= k
            q /= q.sum(dim=0, keepdim=True)
            q /= b
        return (q * b).T
    # Padding columns are zeros; the sums are clamped so that a batch without any valid row gives zeros, not NaN.
    tiny = torch.finfo(q.dtype).tiny
    q = q * valid.to(q.dtype)
    count = distributed.all_reduce_(valid.to(q.dtype).sum())
    q /= distributed.all_reduce_(q.sum()).clamp_min(tiny)
    for _ in range(iterations):
        q /= distributed.all_reduce_(q.sum(dim=1, keepdim=True)).clamp_min(tiny)
        q /= k
        q /= q.sum(dim=0, keepdim=True).clamp_min(tiny)
        q /= count.clamp_min(1)
    return (q * count.clamp_min(1)).T


@full_precision
def swapped_prediction(scores: list[Tensor], codes: list[Tensor], temperature: float) -> Tensor:
    """SwAV's swapped prediction (eq. 1): the code of each global crop i is predicted from every other crop.

    scores: prototype scores of every crop (globals first); codes: Sinkhorn codes of the global crops.
    """
    total, terms = scores[0].new_zeros((), dtype=torch.float32), 0
    log_p = [F.log_softmax(s.float() / temperature, dim=1) for s in scores]
    for i, q in enumerate(codes):
        for v, lp in enumerate(log_p):
            if v == i:
                continue
            total = total - (q * lp).sum(dim=1).mean()
            terms += 1
    return total / terms


@full_precision
def dino_loss(student: list[Tensor], teacher_probs: list[Tensor], student_temperature: float) -> Tensor:
    """DINO (arXiv 2104.14294 eq. 3): cross entropy between the teacher's centred, sharpened distribution
    on each global crop and the student's on every other crop, averaged over the pairs.
    """
    total, terms = student[0].new_zeros((), dtype=torch.float32), 0
    log_p = [F.log_softmax(s.float() / student_temperature, dim=1) for s in student]
    for i, t in enumerate(teacher_probs):
        for v, lp in enumerate(log_p):
            if v == i:
                continue  # the same view for teacher and student is no task
            total = total - (t * lp).sum(dim=1).mean()
            terms += 1
    return total / terms


@full_precision
def sinkhorn_dino_loss(student: list[Tensor], teacher: list[Tensor], student_temperature: float,
                       teacher_temperature: float, iterations: int = 3) -> Tensor:
    """DINOv2's class-token loss (arXiv 2304.07193 section 4; dino_clstoken_loss.py): DINO's cross entropy
    (dino_loss above), the teacher's logits on the global crops being centred and sharpened by Sinkhorn-Knopp
    instead of a running center: sinkhorn_knopp_teacher, epsilon = the teacher temperature, over the rows of
    every global crop together (the global batch under torchrun).

    student: logits of every crop (globals first); teacher: logits of the global crops (taken as constants).
    """
    probs = sinkhorn(torch.cat(teacher).detach(), teacher_temperature, iterations).chunk(len(teacher))
    return dino_loss(student, list(probs), student_temperature)


@full_precision
def ibot_patch_loss(student: Tensor, teacher_probs: Tensor, index: Tensor, masks: Tensor,
                    student_temperature: float) -> Tensor:
    """iBOT's masked-patch loss as DINOv2 computes it (ibot_patch_loss.py, forward_masked; iBOT arXiv 2111.07832
    eq. 2): on each masked patch, the cross entropy between the teacher's distribution (its view of the patch
    unmasked) and the student's (the patch masked); each weighted 1 / (masked patches of its crop), summed, and
    divided by the number of crops, masked or not.

    student [R, K] logits and teacher_probs [R, K] of the rows index [R] picks from the flattened masks [C, N]
    (crop c, patch p at c * N + p). Rows that index an unmasked patch are padding and count for nothing.
    """
    crops, patches = masks.shape
    flat = masks.reshape(-1)
    per_crop = 1.0 / masks.sum(dim=1).clamp_min(1).float()
    weight = flat[index].float() * per_crop[index // patches]
    # The padding rows' targets are zeros (and their weight 0), so they add nothing, not even a NaN.
    per_row = -(teacher_probs.float() * F.log_softmax(student.float() / student_temperature, dim=-1)).sum(dim=-1)
    return (per_row * weight).sum() / crops


@full_precision
def koleo_loss(x: Tensor, eps: float = 1e-8) -> Tensor:
    """The KoLeo regulariser (Sablayrolles et al. 2019, arXiv 1806.03198; DINOv2 section 4, koleo_loss.py): minus
    the mean log distance of each L2-normalised row to its nearest neighbour among the other rows, which
    spreads the batch over the sphere. Distances as torch's pairwise_distance (|a - b + eps|), as DINOv2's.
    """
    x = F.normalize(x.float(), p=2, dim=-1, eps=eps)
    with torch.no_grad():  # the neighbour is a choice, not a function to differentiate
        dots = x @ x.T
        dots.fill_diagonal_(-2.0)  # below any cosine: a row is never its own neighbour
        neighbour = dots.argmax(dim=1)
    distances = F.pairwise_distance(x, x[neighbour], p=2, eps=eps)
    return -torch.log(distances + eps).mean()


@full_precision
def masked_mse(pred: Tensor, target: Tensor, mask: Tensor, norm_pix: bool = True) -> Tensor:
    """MAE's reconstruction loss (arXiv 2111.06377 section 3): per-patch MSE averaged over masked patches only.

    pred, target [B, L, P]; mask [B, L] with 1 where the patch was removed. With norm_pix each target patch
    is normalised by its own mean and variance (the paper's better-performing variant).
    """
    target = target.float()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = (pred.float() - target).pow(2).mean(dim=-1)
    mask = mask.float()
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


@full_precision
def rebalanced_soft_ce(logits: Tensor, targets: Tensor, class_weights: Tensor) -> Tensor:
    """Colorization's loss (Zhang et al. 2016, arXiv 1603.08511 eqs. 2 and 4): per-pixel cross entropy between
    the soft-encoded target Z and the predicted distribution over the ab bins, each pixel weighted by the
    rebalancing weight of its most likely target bin, v(Z) = w[argmax_q Z_q]; the mean over the pixels.

    logits, targets [B, Q, H, W]; class_weights [Q] (taken as constants: they come from data statistics).
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    per_pixel = -(targets.float() * log_p).sum(dim=1)  # [B, H, W]
    weight = class_weights.detach().float()[targets.argmax(dim=1)]
    return (weight * per_pixel).mean()


@full_precision
def weighted_masked_l2(pred: Tensor, target: Tensor, hole: Tensor, band: Tensor, band_weight: float = 10.0) -> Tensor:
    """Context Encoders' reconstruction loss (Pathak et al. 2016, arXiv 1604.07379 eq. 1 and section 5.1): the
    squared error over the region the decoder predicts, the hole and a band of context around it that it
    overlaps, the band weighted `band_weight` times (paper: 10) and the hole once; the mean over that region.

    pred, target [B, C, H, W]; hole, band [B, 1, H, W], 1 inside (disjoint).
    """
    weight = hole.float() + band_weight * band.float()
    error = (pred.float() - target.float()).pow(2) * weight
    region = (hole.float() + band.float()).sum() * pred.shape[1]
    return error.sum() / region.clamp_min(1.0)


@full_precision
def supervised_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """S4L's supervised term (Zhai et al. 2019, arXiv 1905.03670): cross entropy over the labeled images of the
    batch only (label -1: unlabeled), their mean; 0 when the batch holds none (never NaN)."""
    labeled = labels >= 0
    per_image = F.cross_entropy(logits.float(), labels.clamp_min(0), reduction="none")
    return (per_image * labeled).sum() / labeled.sum().clamp_min(1)


@full_precision
def deepcluster_v2(z: list[Tensor], prototypes: list[Tensor], assignments: Tensor, temperature: float) -> Tensor:
    """DeepCluster v2's loss (arXiv 2006.09882, appendix; facebookresearch/swav main_deepclusterv2.py): for
    each head h, the cross entropy between every crop's scores against that head's prototypes, divided by
    the temperature, and its image's cluster from the last k-means; the mean over the (image, crop) pairs
    that have a cluster, then over the heads.

    z: the L2-normalised projection of each crop [B, D]; prototypes: each head's centroids [K_h, D];
    assignments [H, B], -1 for an image that has no cluster yet (the reference's ignore_index). The scores
    are computed here, in float32, rather than under autocast. A batch without any cluster gives 0 (a
    zero gradient, never NaN). Under torchrun the mean is over the global batch: each rank divides its sum
    by the global count over the number of ranks, so DDP's average of the gradients is the one-process one.
    """
    total = z[0].new_zeros((), dtype=torch.float32)
    for weight, target in zip(prototypes, assignments, strict=True):
        has = target >= 0
        count = distributed.all_reduce_(has.sum().float() * len(z)) / distributed.world_size()
        head = z[0].new_zeros((), dtype=torch.float32)
        for crop in z:
            logits = crop.float() @ weight.float().T / temperature
            head = head + (F.cross_entropy(logits, target.clamp_min(0), reduction="none") * has).sum()
        total = total + head / count.clamp_min(1.0 / distributed.world_size())
    return total / len(prototypes)


def kmeans_init(valid: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k distinct random rows among the valid ones (as the reference's randperm over its memory), drawn
    from `generator` on the rows' device: the indices of the initial centroids. Invalid rows come last, so
    they are chosen only when fewer than k rows are valid."""
    keys = torch.rand(valid.shape[0], generator=generator, device=valid.device) + (~valid).float() * 2
    return keys.argsort(stable=True)[:k]


@torch.no_grad()
@full_precision
def spherical_kmeans(x: Tensor, init: Tensor, iterations: int, valid: Tensor | None = None,
                     chunk_elements: int = 2**24) -> tuple[Tensor, Tensor]:
    """Spherical k-means as DeepCluster v2's cluster_memory (facebookresearch/swav main_deepclusterv2.py).

    x [N, D]: L2-normalised rows; init [K]: the rows that start as centroids; `iterations` rounds of an
    assignment to the centroid of largest dot product and of each centroid set to the L2-normalised mean
    of its rows; a centroid that receives no row keeps its place. A last assignment step gives the
    clusters. Rows where `valid` is False join no cluster and get -1. Returns (centroids [K, D] with unit
    rows, assignments [N]).

    Deterministic on every device and free of host synchronisation: the sums are one-hot matrix products
    over chunks of rows (chunk_elements bounds a chunk's [rows, K] one-hot), not atomic scatter-adds, and
    TF32 is off for them on CUDA (it would round the embeddings to 10 bits of mantissa).
    """
    x = x.float()
    n, k = x.shape[0], init.shape[0]
    weight = (torch.ones(n, device=x.device) if valid is None else valid.float())
    centroids = x[init].clone()
    rows = max(1, chunk_elements // k)
    with _ieee_matmul(x.device):
        for round_ in range(iterations + 1):
            last = round_ == iterations
            assigned = []
            sums, counts = x.new_zeros(k, x.shape[1]), x.new_zeros(k)
            for start in range(0, n, rows):
                part = x[start:start + rows]
                nearest = (part @ centroids.T).argmax(dim=1)
                assigned.append(nearest)
                if not last:
                    one_hot = x.new_zeros(part.shape[0], k).scatter_(1, nearest[:, None],
                                                                     weight[start:start + rows, None])
                    sums += one_hot.T @ part
                    counts += one_hot.sum(dim=0)
            if not last:
                means = sums / counts.clamp_min(1)[:, None]
                centroids = F.normalize(torch.where(counts[:, None] > 0, means, centroids), dim=1)
    assignments = torch.cat(assigned)
    if valid is not None:
        assignments = torch.where(valid, assignments, -1)
    return centroids, assignments


@contextlib.contextmanager
def _ieee_matmul(device: torch.device) -> Iterator[None]:
    """float32 matmuls in full precision on CUDA for the duration (training turns TF32 on)."""
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def cpc_info_nce(predictions: dict[int, Tensor], targets: Tensor, first_image: int = 0) -> Tensor:
    """CPC's InfoNCE over a grid of patches (CPC v2, arXiv 1905.09272 eq. 3; pl_bolts CPCTask).

    targets [N, G, G, D]: the features z of every patch of every image, the candidates. predictions maps each
    offset k to [B, G - k, G, D]: predictions[k][b, i, j] = W_k c_{i,j} of image first_image + b, whose positive
    is targets[first_image + b, i + k, j]; every other patch of targets, at any position of any image, is a
    negative. Scores are plain dot products (no normalisation, no temperature, as in the paper). The loss is
    the mean cross entropy over every prediction of every offset, each term weighing the same.
    """
    n, g, _, d = targets.shape
    candidates = targets.float().reshape(n * g * g, d)  # row (image * G + row) * G + column
    scores, labels = [], []
    for k, prediction in predictions.items():
        b, rows, cols, _ = prediction.shape
        image = torch.arange(b, device=targets.device).view(b, 1, 1) + first_image
        row = torch.arange(rows, device=targets.device).view(1, rows, 1) + k
        col = torch.arange(cols, device=targets.device).view(1, 1, cols)
        labels.append(((image * g + row) * g + col).flatten())
        scores.append(prediction.float().reshape(-1, d))
    return F.cross_entropy(torch.cat(scores) @ candidates.T, torch.cat(labels))


NCE_EPS = 1e-7  # lemniscate's and CMC's NCECriterion: keeps the ratios finite when P and K P_n underflow


@full_precision
def nce(probabilities: Tensor, noise_probability: float) -> Tensor:
    """Noise-contrastive estimation against a memory bank (Wu et al. 2018, arXiv 1805.01978 section 3.2; Tian et
    al. 2019, arXiv 1906.05849 eq. 12), as lemniscate's and CMC's NCECriterion compute it.

    probabilities [B, 1 + K]: P(i|v) = exp(v . f_i / tau) / Z of each image's own bank entry (column 0, drawn
    from the data) and of K entries drawn from the noise distribution, uniform: P_n = noise_probability (1/N).
    h = P / (P + K P_n) is the posterior that an entry came from the data; the loss is
    -(log h(positive) + sum_j log(1 - h(negative_j))), summed over the batch and divided by its size.
    """
    p = probabilities.float()
    k_pn = (p.shape[1] - 1) * noise_probability
    positive = torch.log(p[:, 0] / (p[:, 0] + k_pn + NCE_EPS))
    negative = torch.log(k_pn / (p[:, 1:] + k_pn + NCE_EPS))
    return -(positive.sum() + negative.sum()) / p.shape[0]


@full_precision
def non_parametric_softmax(scores: Tensor, targets: Tensor, temperature: float) -> Tensor:
    """Cross entropy of softmax(scores / tau) with each row's target column: Wu et al. eq. 2 over every bank
    entry (lemniscate's LinearAverage, the target an image's own index), or over the positive and the drawn
    negatives (CMC's NCESoftmaxLoss, the target column 0)."""
    return F.cross_entropy(scores.float() / temperature, targets)


@full_precision
def triplet_margin(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float) -> Tensor:
    """TCN's triplet loss (arXiv 1704.06888, eq. 1): mean of max(0, ||a - p||^2 - ||a - n||^2 + margin), squared
    Euclidean distances between the embeddings as given (TCN normalises them first)."""
    def squared(x: Tensor, y: Tensor) -> Tensor:
        return (x - y).pow(2).sum(-1)

    return F.triplet_margin_with_distance_loss(anchor.float(), positive.float(), negative.float(),
                                               distance_function=squared, margin=margin)


@full_precision
def ranking_hard_negatives(anchor: Tensor, positive: Tensor, candidates: Tensor, weights: Tensor, margin: float,
                           hard: int, offset: int = 0) -> Tensor:
    """Wang and Gupta's ranking loss (arXiv 1505.00687, eq. 3) with hard negatives from the batch: for each pair,
    max(0, D(a, p) - D(a, n) + margin) with D = 1 - cosine, over every candidate n not of its own pair (candidates
    [2N, D]: the N anchors, then the N positives of the whole batch; pair i + offset is this process's pair i),
    the `hard` largest kept and averaged. weights [B] weigh each pair (0: not a track); the sum is over this
    process's B pairs, so that the mean over processes is the global batch's sum over its size."""
    a, p, c = (F.normalize(x.float(), dim=1) for x in (anchor, positive, candidates))
    positive_distance = 1 - (a * p).sum(1, keepdim=True)
    losses = (positive_distance - (1 - a @ c.T) + margin).clamp_min(0)  # [B, 2N]
    n = c.shape[0] // 2
    own = torch.arange(a.shape[0], device=a.device) + offset
    columns = torch.arange(c.shape[0], device=a.device)
    losses = losses.masked_fill((columns[None] % n) == own[:, None], -1.0)  # never its own anchor or positive
    kept = min(hard, c.shape[0] - 2)
    if kept < 1:  # a batch of one pair has no negative
        return (a.sum() + p.sum() + c.sum()) * 0.0
    per_pair = losses.topk(kept, dim=1).values.mean(1)
    return (per_pair * weights.float()).sum() / a.shape[0]


@full_precision
def n_pairs_info_nce(anchor: Tensor, positive: Tensor, temperature: float, negative: Tensor | None = None,
                     offset: int = 0) -> Tensor:
    """InfoNCE in the n-pairs form (Sohn 2016): anchor i against every positive of the batch, positive i + offset
    the target (offset: where this process's anchors start in a gathered batch of positives); with `negative`
    [N, D], each anchor's own negative joins its row as one more wrong answer. Cross entropy of the cosine
    similarities over temperature."""
    a, p = F.normalize(anchor.float(), dim=1), F.normalize(positive.float(), dim=1)
    logits = a @ p.T
    if negative is not None:
        own = (a * F.normalize(negative.float(), dim=1)).sum(1, keepdim=True)
        logits = torch.cat([logits, own], dim=1)
    return F.cross_entropy(logits / temperature, torch.arange(a.shape[0], device=a.device) + offset)


@torch.no_grad()
def triplet_partners(distances: Tensor, labels: Tensor, mining: str) -> tuple[Tensor, Tensor]:
    """The triplets a miner picks from a batch's pairwise distances [N, N] and labels [N] (same label:
    positive, other label: negative; an embedding is never its own positive).

    batch_hard (Hermans et al. 2017, arXiv 1703.07737): one triplet per anchor, its farthest positive and its
    nearest negative: (positive [N], negative [N]). semi_hard (Schroff et al. 2015, arXiv 1503.03832, as
    TensorFlow's triplet_semihard_loss that Kolesnikov et al.'s Exemplar calls): one triplet per (anchor,
    positive) pair, the nearest negative farther than the positive, or the farthest negative when none is:
    (positive mask [N, N], negative index [N, N]). Sync-free: masks and sorts, no boolean indexing."""
    same = labels[:, None] == labels[None, :]
    own = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    positive, negative = same & ~own, ~same
    if mining == "batch_hard":
        return (distances.masked_fill(~positive, float("-inf")).argmax(dim=1),
                distances.masked_fill(~negative, float("inf")).argmin(dim=1))
    if mining != "semi_hard":
        raise ValueError(f"unknown triplet mining {mining!r}: batch_hard or semi_hard")
    # Each anchor's negatives in ascending distance (its non-negatives at +inf, last): the first one farther
    # than d(a, p) is found by a binary search per (a, p).
    ordered, order = distances.masked_fill(~negative, float("inf")).sort(dim=1)
    first_beyond = torch.searchsorted(ordered, distances.contiguous(), right=True)
    count = negative.sum(dim=1, keepdim=True)  # the anchor's negatives: ordered[:, :count] are finite
    farthest = (count - 1).clamp_min(0).expand_as(first_beyond)
    rank = torch.where(first_beyond < count, first_beyond, farthest)
    return positive, order.gather(1, rank)


@full_precision
def triplet_loss(embeddings: Tensor, labels: Tensor, margin: float, mining: str = "batch_hard") -> Tensor:
    """The triplet loss max(d(a, p) - d(a, n) + margin, 0) with Euclidean distances over a batch of embeddings
    [N, D] whose labels [N] say which are of the same class (Exemplar: copies of the same image; every label
    must appear at least twice, so that every anchor has a positive), its triplets
    mined in the batch (triplet_partners). batch_hard: the mean over the N anchors, through
    torch's triplet_margin_loss; semi_hard: the mean over every (anchor, positive) pair. Gradients reach
    every embedding of a triplet; the mining itself has none."""
    x = embeddings.float()
    distances = torch.cdist(x, x)
    positive, negative = triplet_partners(distances.detach(), labels, mining)
    if mining == "batch_hard":
        return F.triplet_margin_loss(x, x[positive], x[negative], margin=margin)
    per_pair = F.relu(distances - distances.gather(1, negative) + margin)
    return (per_pair * positive).sum() / positive.sum().clamp_min(1)


@full_precision
def dim_mutual_information(scores: Tensor, estimator: str) -> Tensor:
    """Deep InfoMax's loss (Hjelm et al. 2019, arXiv 1808.06670, eq. 2-5; rdevon/DIM's infonce_loss and
    fenchel_dual_loss): minus a lower bound on the mutual information between each image's global feature and
    its local features.

    scores [N, N, P]: scores[i, j, p] = T(global feature of image i, local feature p of image j); P = 1 for the
    global objective (the whole map). The positives are j = i (every position of the image's own map), the
    negatives j != i (every position of every other image's map). infonce: per positive, the cross entropy of
    it against the N - 1 other images' N x P scores with the same global feature (eq. 5), the mean over the
    N x P positives; jsd: the Jensen-Shannon estimator (eq. 4), E_neg[softplus(s)] - E_pos[-softplus(-s)]
    (the constant log 2 of either side cancels)."""
    s = scores.float()
    n = s.shape[0]
    own = torch.eye(n, dtype=torch.bool, device=s.device)[:, :, None].expand_as(s)
    positive = s.diagonal(dim1=0, dim2=1).T  # [N, P]: scores[i, i, p]
    if estimator == "infonce":
        # log sum exp over each anchor's negatives, shared by its P positives.
        negatives = s.masked_fill(own, float("-inf")).flatten(1).logsumexp(dim=1, keepdim=True)
        return (torch.logaddexp(positive, negatives) - positive).mean()
    if estimator != "jsd":
        raise ValueError(f"unknown estimator {estimator!r}: infonce or jsd")
    negative_mean = (F.softplus(s) * ~own).sum() / (~own).sum().clamp_min(1)
    return negative_mean + F.softplus(-positive).mean()


@full_precision
def local_aggregation(scores: Tensor, close: Tensor, temperature: float) -> Tensor:
    """Local Aggregation's loss (Zhuang et al. 2019, arXiv 1903.12355, eq. 3-4): -log P(C_i n B_i | v_i) /
    P(B_i | v_i), with P(A | v) = sum over j in A of exp(v_j . v / tau) / Z (Z cancels).

    scores [B, K]: the cosine of each embedding v_i with its K background neighbours B_i (bank entries);
    close [B, K]: which of them are also close neighbours C_i (in v_i's cluster in some clustering). Every row
    needs at least one close background neighbour (the image's own entry is both). The mean over the batch."""
    logits = scores.float() / temperature
    return (logits.logsumexp(dim=1) - logits.masked_fill(~close, float("-inf")).logsumexp(dim=1)).mean()
