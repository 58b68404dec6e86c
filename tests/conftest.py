"""Shared fixtures: the real datasets in ../shared/data, and small real subsets of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.common import SHARED_DATA, linked_subset, save_random_encoder


def pytest_configure(config: pytest.Config) -> None:
    """Without the real data the suite stops at once with one line, not a traceback per test."""
    if not (SHARED_DATA / "cifar10").is_dir():
        raise pytest.UsageError(f"the shared datasets are missing: {SHARED_DATA / 'cifar10'} is not a folder; clone "
                                "the repository beside ../shared or set SSLCLI_SHARED_DATA to the data folder")


@pytest.fixture(autouse=True)
def _console_as_the_cli_starts():
    """A test that runs the CLI in this process with --quiet (cli.main([... "-q"])) would leave the console
    quiet for the next test of the same worker: each test starts, and leaves, it as a fresh process has it."""
    from sslcli import console

    console.configure(quiet=False)
    yield
    console.configure(quiet=False)


@pytest.fixture(autouse=True)
def _private_decode_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never write to the user's ~/.cache; subprocesses inherit the variable."""
    monkeypatch.setenv("SSLCLI_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "decode-cache"))


@pytest.fixture(scope="session")
def cifar10() -> Path:
    root = SHARED_DATA / "cifar10"
    assert root.is_dir(), f"the shared datasets are missing: {root} (CI clones next to ../shared)"
    return root


def cifar_subset(cifar10: Path, root: Path, train: int, test: int) -> Path:
    """CIFAR-10 with train/ (`train` per class) and test/ (`test` per class), as symlinks to the real files."""
    linked_subset(cifar10 / "train", root / "train", train)
    linked_subset(cifar10 / "test", root / "test", test)
    return root


@pytest.fixture(scope="session")
def cifar_small(cifar10: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CIFAR-10 with train/ (40 per class) and test/ (20 per class)."""
    return cifar_subset(cifar10, tmp_path_factory.mktemp("cifar_small"), 40, 20)


@pytest.fixture(scope="session")
def videos() -> Path:
    """The real clips: bigbuckbunny (720p, 132 frames at 25 fps), bikes (640x272, 250 at 25), carphone (QCIF, 120
    at 29.97)."""
    root = SHARED_DATA / "videos"
    assert root.is_dir(), f"the shared videos are missing: {root} (CI clones next to ../shared)"
    return root


@pytest.fixture(scope="session")
def videos_small(videos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two small real clips (bikes, 10 s; carphone, 4 s), linked: quick to decode (about 1 s at 32 px)."""
    root = tmp_path_factory.mktemp("videos_small")
    for name in ("bikes.mp4", "carphone_pristine.mp4"):
        (root / name).symlink_to(videos / name)
    return root


@pytest.fixture(scope="session")
def cifar_tiny(cifar10: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CIFAR-10 with train/ (10 per class) and test/ (5 per class): for runs that only need to work."""
    return cifar_subset(cifar10, tmp_path_factory.mktemp("cifar_tiny"), 10, 5)


@pytest.fixture(scope="session")
def resnet10t_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """timm resnet10t (deep stem, not torchvision-compatible) at 32 px with the standard stem."""
    return save_random_encoder(tmp_path_factory.mktemp("r10t") / "encoder.safetensors", "resnet10t", 32, False,
                               spec={"note": "test"})


@pytest.fixture(scope="session")
def resnet18_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """timm resnet18 at 32 px, so with the small-image stem."""
    return save_random_encoder(tmp_path_factory.mktemp("r18") / "encoder.safetensors", "resnet18", 32,
                               spec={"note": "test"})


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
