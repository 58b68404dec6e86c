"""sslcli report RUN --map: report/map.png, the eval features in 2-D by class: UMAP, else t-SNE, else PCA."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.common import random_init_encoder
from sslcli import embedding_map, report
from sslcli.cli import main
from sslcli.spec import PretrainSpec, dump, resolve
from tests.helpers import images_are_valid_png
from tests.test_cli import sslcli_run


def make_run(folder: Path, data: Path) -> Path:
    """A run folder as pretrain leaves it (spec.json, metrics.jsonl, encoder.safetensors), at its random init."""
    spec = resolve(PretrainSpec, preset="quickstart", options={"data.path": str(data), "out": str(folder)})
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps(dump(spec)))
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 1, "epoch": 0, "loss": 4.0, "lr": 0.1}) + "\n")
    random_init_encoder(spec, folder)
    return folder


@pytest.fixture
def run_dir(tmp_path: Path, cifar_tiny: Path) -> Path:
    return make_run(tmp_path / "run", cifar_tiny)


def without(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """As if the packages were not installed."""
    real = embedding_map._optional
    monkeypatch.setattr(embedding_map, "_optional", lambda name: None if name in modules else real(name))


def clustered(n_per_class: int = 20, classes: int = 3) -> tuple[torch.Tensor, list[int]]:
    """Features in tight clusters around orthogonal directions, one per class."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.eye(classes, 16) * 10
    features = torch.cat([c + torch.randn(n_per_class, 16, generator=generator) for c in centres])
    return features, [c for c in range(classes) for _ in range(n_per_class)]


@pytest.mark.parametrize("missing, method", [
    pytest.param((), "UMAP", marks=pytest.mark.slow),  # umap-learn compiles its numba code first: about a minute
    (("umap",), "t-SNE"), (("umap", "sklearn.manifold"), "PCA")])
def test_each_method_of_the_chain_keeps_the_classes_apart(monkeypatch, missing: tuple[str, ...], method: str):
    without(monkeypatch, *missing)
    features, labels = clustered()
    mapped = embedding_map.project(features, labels, ["a", "b", "c"], seed=0)
    assert mapped.method == method and mapped.points.shape == (60, 2) and np.isfinite(mapped.points).all()
    # Each point's nearest other point on the map is of its own class: the map shows the clusters.
    distances = np.linalg.norm(mapped.points[:, None] - mapped.points[None], axis=2)
    np.fill_diagonal(distances, np.inf)
    assert (np.asarray(labels)[distances.argmin(axis=1)] == np.asarray(labels)).mean() > 0.95
    again = embedding_map.project(features, labels, ["a", "b", "c"], seed=0)
    assert np.allclose(again.points, mapped.points), "seeded: the same map twice"


def test_the_map_names_its_method_in_the_title(monkeypatch, tmp_path: Path):
    titles = []
    real_save = report._save
    monkeypatch.setattr(report, "_save", lambda fig, path: (titles.append(fig.axes[0].get_title()), real_save(fig, path)))
    features, labels = clustered()
    report.map_png(embedding_map.EmbeddingMap(np.random.default_rng(0).normal(size=(60, 2)), labels, ["a", "b", "c"],
                                              "t-SNE"), tmp_path / "map.png", "simclr · resnet10t")
    assert images_are_valid_png(tmp_path / "map.png")
    assert titles == ["simclr · resnet10t\nt-SNE of the features of 60 eval images, coloured by class"]


def test_report_map_falls_back_to_tsne_without_umap(monkeypatch, run_dir: Path, capsys):
    without(monkeypatch, "umap")
    with pytest.raises(SystemExit) as done:
        main(["report", str(run_dir), "--map", "--json", "-q"])
    assert done.value.code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["map_method"] == "t-SNE" and summary["files"]["map.png"] == str(run_dir / "report" / "map.png")
    assert images_are_valid_png(run_dir / "report" / "map.png")
    assert json.loads((run_dir / "report" / "summary.json").read_text())["map_method"] == "t-SNE"


def test_report_map_needs_a_labeled_eval_split(tmp_path: Path, cifar_tiny: Path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, image in enumerate(sorted((cifar_tiny / "train").rglob("*.jpg"))[:20]):
        (flat / f"{i}.jpg").symlink_to(image)
    run = make_run(tmp_path / "run", flat)
    proc = sslcli_run("report", str(run), "--map")
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()  # the online kNN's own warning, then the one error
    assert lines[-1].startswith("error: --map draws the labeled eval images' features")
    assert lines[-1].endswith("has no labeled eval split (give --val DIR)") and len(lines) == 2
    assert not (run / "report" / "map.png").exists()


@pytest.mark.slow
def test_report_map_with_umap(run_dir: Path):
    proc = sslcli_run("report", str(run_dir), "--map", "--json", "-q")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr  # umap-learn's and numba's warnings stay out
    summary = json.loads(proc.stdout)
    assert summary["map_method"] == "UMAP" and images_are_valid_png(run_dir / "report" / "map.png")
    assert {"curves.png", "neighbors.png", "map.png", "summary.json"} <= set(summary["files"])
