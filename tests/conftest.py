"""Shared fixtures: the real datasets in ../shared/data, and small real subsets of them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("SSLCLI_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(autouse=True)
def _private_decode_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never write to the user's ~/.cache; subprocesses inherit the variable."""
    monkeypatch.setenv("SSLCLI_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "decode-cache"))


@pytest.fixture(scope="session")
def cifar10() -> Path:
    root = SHARED_DATA / "cifar10"
    assert root.is_dir(), f"the shared datasets are missing: {root} (CI clones next to ../shared)"
    return root


def link_subset(src: Path, dst: Path, per_class: int) -> Path:
    """An ImageFolder of symlinks to the first `per_class` files of each class (nothing is copied)."""
    for class_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        out = dst / class_dir.name
        out.mkdir(parents=True)
        for file in sorted(class_dir.iterdir())[:per_class]:
            (out / file.name).symlink_to(file)
    return dst


def cifar_subset(cifar10: Path, root: Path, train: int, test: int) -> Path:
    """CIFAR-10 with train/ (`train` per class) and test/ (`test` per class), as symlinks to the real files."""
    link_subset(cifar10 / "train", root / "train", train)
    link_subset(cifar10 / "test", root / "test", test)
    return root


@pytest.fixture(scope="session")
def cifar_small(cifar10: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CIFAR-10 with train/ (40 per class) and test/ (20 per class)."""
    return cifar_subset(cifar10, tmp_path_factory.mktemp("cifar_small"), 40, 20)


@pytest.fixture(scope="session")
def cifar_tiny(cifar10: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CIFAR-10 with train/ (10 per class) and test/ (5 per class): for runs that only need to work."""
    return cifar_subset(cifar10, tmp_path_factory.mktemp("cifar_tiny"), 10, 5)


def save_random_encoder(path: Path, name: str, image_size: int, small_stem: bool | str = "auto") -> Path:
    """An encoder.safetensors at random init (seeded), written exactly as pretraining writes one."""
    import torch

    from sslcli import checkpoint
    from sslcli.encoders import build_encoder

    torch.manual_seed(0)
    model, info = build_encoder(name, image_size, small_stem)
    meta = checkpoint.encoder_metadata(info, method="random-init", epoch=0, step=0, spec={"note": "test"})
    checkpoint.save_encoder(path, model, meta)
    return path


@pytest.fixture(scope="session")
def resnet10t_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """timm resnet10t (deep stem, not torchvision-compatible) at 32 px with the standard stem."""
    return save_random_encoder(tmp_path_factory.mktemp("r10t") / "encoder.safetensors", "resnet10t", 32, False)


@pytest.fixture(scope="session")
def resnet18_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """timm resnet18 at 32 px, so with the small-image stem."""
    return save_random_encoder(tmp_path_factory.mktemp("r18") / "encoder.safetensors", "resnet18", 32)


@pytest.fixture(scope="session")
def encoder_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init resnet10t encoder.safetensors (32 px), written by sslcli's own saver."""
    import torch

    from sslcli import checkpoint
    from sslcli.encoders import build_encoder

    torch.manual_seed(0)
    model, info = build_encoder("resnet10t", 32, small_stem=False)
    path = tmp_path_factory.mktemp("enc") / "encoder.safetensors"
    checkpoint.save_encoder(path, model, checkpoint.encoder_metadata(info, method="simclr", epoch=1, step=1, spec={}))
    return path
