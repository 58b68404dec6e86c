import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslcli import cache, data


def _images(folder: Path, count: int = 6, bad: int = 1) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (20 + i, 16, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    for i in range(bad):
        path = folder / f"bad{i}.jpg"
        path.write_bytes(b"\xff\xd8 not really a jpeg")
        paths.append(path)
    return paths


def test_cache_holds_exactly_the_decoded_pixels_and_marks_bad_files(tmp_path: Path):
    paths = _images(tmp_path / "img")
    policy = data.BadImagePolicy()
    decoded = cache.open_or_build(paths, 16, tmp_path / "c", policy, num_workers=0)
    assert decoded.array.shape == (7, 3, 16, 16)
    assert decoded.good.tolist() == [True] * 6 + [False]
    assert policy.count == 1
    for i in range(6):
        assert torch.equal(torch.from_numpy(np.array(decoded.array[i])), data.decode_image(paths[i], 16))


def test_cache_is_reused_without_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    paths = _images(tmp_path / "img")
    cache.open_or_build(paths, 16, tmp_path / "c", data.BadImagePolicy(), num_workers=0)

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(data, "decode_image", no_decoding)
    policy = data.BadImagePolicy()
    again = cache.open_or_build(paths, 16, tmp_path / "c", policy, num_workers=0)
    assert again.good.sum() == 6
    assert policy.count == 1  # the bad file is reported again on reuse


def test_cache_is_rebuilt_when_a_file_changes(tmp_path: Path):
    paths = _images(tmp_path / "img", bad=0)
    first = cache.open_or_build(paths, 16, tmp_path / "c", data.BadImagePolicy(), num_workers=0)
    Image.fromarray(np.full((16, 16, 3), 7, dtype=np.uint8)).save(paths[2])
    stat = os.stat(paths[2])
    os.utime(paths[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = cache.open_or_build(paths, 16, tmp_path / "c", data.BadImagePolicy(), num_workers=0)
    assert second.path != first.path
    assert int(second.array[2].max()) == 7
    assert cache.cache_key(paths, 16) != cache.cache_key(paths, 24)


def test_a_half_written_cache_is_not_used(tmp_path: Path):
    paths = _images(tmp_path / "img", bad=0)
    decoded = cache.open_or_build(paths, 16, tmp_path / "c", data.BadImagePolicy(), num_workers=0)
    decoded.path.with_suffix(".json").unlink()  # as if the run died before the JSON was written
    rebuilt = cache.open_or_build(paths, 16, tmp_path / "c", data.BadImagePolicy(), num_workers=0)
    assert rebuilt.path.with_suffix(".json").is_file()


def test_epoch_batches_are_a_function_of_seed_and_epoch(tmp_path: Path):
    paths = _images(tmp_path / "img", count=10, bad=1)
    decoded = cache.open_or_build(paths, 16, tmp_path / "c", data.BadImagePolicy(), num_workers=0)

    def order(seed: int, epoch: int) -> list[int]:
        return [i for _, idx in cache.batches(decoded, 3, seed, epoch) for i in idx.tolist()]

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    assert len(order(0, 0)) == 9 and 10 not in order(0, 0)  # drop_last; the bad file never appears
    assert cache.steps_per_epoch(decoded, 3) == 3
    x, idx = next(cache.batches(decoded, 3, 0, 0))
    assert x.dtype == torch.uint8 and x.shape == (3, 3, 16, 16)
    assert torch.equal(x[0], torch.from_numpy(np.array(decoded.array[idx[0]])))


def test_probe_features_are_the_same_from_the_cache_and_from_the_files(cifar_small: Path):
    from sslcli.encoders import build_encoder
    from sslcli.features import extract_features

    torch.manual_seed(0)
    model, info = build_encoder("resnet10t", 32, small_stem=False)
    paths = data.find_images(cifar_small / "test").paths[:64]
    common = dict(batch_size=16, num_workers=0, device=torch.device("cpu"), policy=data.BadImagePolicy())
    cached, kept_cached = extract_features(model, info, paths, caching=cache.CachePolicy("auto"), **common)
    decoded, kept_decoded = extract_features(model, info, paths, caching=cache.CachePolicy("off"), **common)
    assert cache.cache_key(paths, 32) in {p.stem for p in cache.default_cache_dir().glob("*.u8")}
    assert torch.equal(kept_cached, kept_decoded)
    assert torch.equal(cached, decoded)
