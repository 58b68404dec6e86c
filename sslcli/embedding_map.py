"""A 2-D map of features for report/map.png: UMAP where umap-learn is installed (the `map` extra), else t-SNE
from scikit-learn, else PCA in torch. The method that drew the map is named on it.

The features are L2-normalised first, and UMAP and t-SNE measure cosine distances: the geometry the kNN
scores and `sslcli neighbors` use. Every method is seeded, so a map redrawn from the same features is the same.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

METHODS = ("UMAP", "t-SNE", "PCA")


@dataclass
class EmbeddingMap:
    points: np.ndarray  # [N, 2]
    labels: list[int]
    classes: list[str]
    method: str  # one of METHODS


def _optional(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def _umap(x: np.ndarray, seed: int) -> np.ndarray | None:
    with warnings.catch_warnings():
        # umap-learn and numba warn about their own internals, and "n_jobs overridden by random_state": seeded
        # means one thread, as asked. None of it is the user's to act on.
        warnings.simplefilter("ignore")
        umap = _optional("umap")
        if umap is None:
            return None
        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1), metric="cosine", random_state=seed)
        return np.asarray(reducer.fit_transform(x))


def _tsne(x: np.ndarray, seed: int) -> np.ndarray | None:
    manifold = _optional("sklearn.manifold")
    if manifold is None:
        return None
    perplexity = min(30.0, (len(x) - 1) / 3)  # t-SNE needs perplexity < N
    tsne = manifold.TSNE(n_components=2, perplexity=perplexity, metric="cosine", init="pca", random_state=seed)
    return np.asarray(tsne.fit_transform(x))


def _pca(features: torch.Tensor) -> np.ndarray:
    centred = features - features.mean(dim=0, keepdim=True)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    points = (centred @ v[:2].T).numpy()
    return np.pad(points, ((0, 0), (0, 2 - points.shape[1])))  # fewer than two directions of variance: zeros


def project(features: torch.Tensor, labels: list[int], classes: list[str], seed: int = 0) -> EmbeddingMap:
    """The features [N, D] as N points in 2-D, by the first method of METHODS that is installed."""
    x = F.normalize(features.float(), dim=1)
    if len(x) < 5:  # the neighbour methods need a few points; two axes of variance need none
        return EmbeddingMap(_pca(x), labels, classes, "PCA")
    for method, fit in (("UMAP", _umap), ("t-SNE", _tsne)):
        points = fit(x.numpy(), seed)
        if points is not None:
            return EmbeddingMap(points, labels, classes, method)
    return EmbeddingMap(_pca(x), labels, classes, "PCA")
