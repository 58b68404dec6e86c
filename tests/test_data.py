"""Tests for sslcli.data: finding images, decoding every mode, bad files, loaders."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslcli import data
from sslcli.data import (
    BadImageError,
    BadImagePolicy,
    ImageDataset,
    collate_images,
    decode_image,
    find_images,
    iter_batches,
    make_loader,
    split_folders,
    storage_size_for,
    to_rgb,
)
from sslcli.errors import UsageError

CIFAR_TEST = Path("/work/shared/data/cifar10/test")


def _save(path: Path, color=(200, 30, 60), size=(8, 8), fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- finding


def test_imagefolder_tree_labels_and_order(tmp_path):
    for cls in ("dog", "cat", "Bird"):
        for name in ("b.jpg", "a.PNG"):
            _save(tmp_path / cls / name)
    _save(tmp_path / "cat" / "deeper" / "c.jpeg")  # nested below a class still counts for it
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    found = find_images(tmp_path)
    assert found.classes == ["Bird", "cat", "dog"]  # byte-wise sort like torchvision ImageFolder
    rel = [p.relative_to(tmp_path).as_posix() for p in found.paths]
    assert rel == [
        "Bird/a.PNG",
        "Bird/b.jpg",
        "cat/a.PNG",
        "cat/b.jpg",
        "cat/deeper/c.jpeg",
        "dog/a.PNG",
        "dog/b.jpg",
    ]
    assert found.labels == [0, 0, 1, 1, 1, 2, 2]
    assert len(found) == 7 and found.root == tmp_path


def test_flat_and_nested_unlabeled(tmp_path):
    _save(tmp_path / "flat" / "x.jpg")
    _save(tmp_path / "flat" / "y.webp", fmt="WEBP")
    flat = find_images(str(tmp_path / "flat"))
    assert flat.labels is None and flat.classes is None and len(flat) == 2

    nested = tmp_path / "nested"
    _save(nested / "top.png")
    _save(nested / "2020" / "a.jpg")
    _save(nested / "2021" / "deep" / "b.bmp")
    found = find_images(nested)
    assert found.labels is None and found.classes is None
    assert sorted(p.name for p in found.paths) == ["a.jpg", "b.bmp", "top.png"]


def test_hidden_and_empty_folders_ignored(tmp_path):
    _save(tmp_path / "cat" / "a.jpg")
    _save(tmp_path / "dog" / "a.jpg")
    _save(tmp_path / ".git" / "objects" / "x.jpg")
    _save(tmp_path / "dog" / ".thumbs" / "t.jpg")
    _save(tmp_path / "dog" / "._a.jpg")  # macOS AppleDouble file
    (tmp_path / "empty_class").mkdir()
    (tmp_path / "only_text").mkdir()
    (tmp_path / "only_text" / "readme.txt").write_text("x")
    found = find_images(tmp_path)
    assert found.classes == ["cat", "dog"]
    assert [p.relative_to(tmp_path).as_posix() for p in found.paths] == ["cat/a.jpg", "dog/a.jpg"]


def test_symlink_loop_does_not_hang(tmp_path):
    _save(tmp_path / "cat" / "a.jpg")
    os.symlink(tmp_path, tmp_path / "cat" / "loop")
    found = find_images(tmp_path)
    assert [p.name for p in found.paths] == ["a.jpg"]


def test_usage_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(UsageError, match="nope.*does not exist"):
        find_images(missing)
    a_file = _save(tmp_path / "single.jpg")
    with pytest.raises(UsageError, match="single.jpg is a file"):
        find_images(a_file)
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "a.txt").write_text("x")
    with pytest.raises(UsageError) as info:
        find_images(empty)
    assert str(empty) in str(info.value) and ".jpg" in str(info.value)
    assert info.value.exit_code == 2


def test_split_folders(tmp_path):
    both = tmp_path / "both"
    for split in ("train", "test", "val"):
        (both / split).mkdir(parents=True)
    assert split_folders(both) == (both / "train", both / "val")

    test_only = tmp_path / "test_only"
    for split in ("train", "test"):
        (test_only / split).mkdir(parents=True)
    assert split_folders(str(test_only)) == (test_only / "train", test_only / "test")

    plain = tmp_path / "plain"
    (plain / "train").mkdir(parents=True)
    (plain / "cat").mkdir()
    assert split_folders(plain) == (plain, None)


def test_storage_size_for():
    assert storage_size_for(32) == 32
    assert storage_size_for(64) == 64
    assert storage_size_for(96) == 110
    assert storage_size_for(224) == 258


# ---------------------------------------------------------------------------------------------- modes


def test_to_rgb_alpha_composited_over_white():
    rgba = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (10, 20, 30, 255))
    out = to_rgb(rgba)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)  # transparent black must not come out black
    assert out.getpixel((1, 0)) == (10, 20, 30)

    la = Image.new("LA", (1, 1), (0, 128))  # black at half opacity over white -> mid grey
    assert abs(to_rgb(la).getpixel((0, 0))[0] - 127) <= 1


def test_palette_with_transparency(tmp_path):
    p = Image.new("P", (2, 1))
    p.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    path = tmp_path / "p.png"
    p.save(path, transparency=0)
    with Image.open(path) as img:
        assert img.mode == "P"
        out = to_rgb(img)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (0, 200, 0)


@pytest.mark.parametrize("mode", ["L", "1", "CMYK", "YCbCr", "P"])
def test_simple_modes_become_rgb(mode):
    img = Image.new("RGB", (3, 3), (255, 255, 255)).convert(mode)
    out = to_rgb(img)
    assert out.mode == "RGB"
    assert all(abs(c - 255) <= 2 for c in out.getpixel((1, 1)))


def test_cmyk_jpeg_decodes(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("RGB", (16, 16), (255, 0, 0)).convert("CMYK").save(path, quality=95)
    t = decode_image(path, 16)
    r, g, b = (int(v) for v in t[:, 8, 8])
    assert r > 200 and g < 60 and b < 60


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_16bit_grey_is_scaled_not_clipped(tmp_path, mode):
    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    # Pillow 13 picks the 16-bit mode from the dtype and rejects an explicit mode= here.
    img = Image.fromarray(values if mode == "I;16" else values.astype(">u2"))
    assert img.mode == mode
    assert np.asarray(to_rgb(img))[0].tolist() == [[0, 0, 0], [128, 128, 128], [255, 255, 255]]

    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16)).save(path)
    with Image.open(path) as reopened:
        assert reopened.mode in ("I;16", "I")
    t = decode_image(path, 4)
    assert t.dtype == torch.uint8 and abs(int(t[0, 1, 1]) - 128) <= 1 and int(t.max()) < 200


def test_32bit_int_and_float_modes():
    i32 = Image.fromarray(np.array([[0, 65535]], dtype=np.int32))
    assert i32.mode == "I" and np.asarray(to_rgb(i32))[0, :, 0].tolist() == [0, 255]
    f = Image.fromarray(np.array([[0.0, 0.5]], dtype=np.float32))
    assert f.mode == "F" and np.asarray(to_rgb(f))[0, :, 0].tolist() == [0, 128]
    f255 = Image.fromarray(np.array([[0.0, 100.0, 300.0]], dtype=np.float32))
    assert np.asarray(to_rgb(f255))[0, :, 0].tolist() == [0, 100, 255]


def test_one_pixel_image_fills_the_square(tmp_path):
    path = _save(tmp_path / "dot.png", color=(1, 2, 3), size=(1, 1))
    t = decode_image(path, 5)
    assert t.shape == (3, 5, 5) and t.dtype == torch.uint8 and t.is_contiguous()
    assert t[:, 0, 0].tolist() == [1, 2, 3] and t[:, 4, 4].tolist() == [1, 2, 3]


def test_non_square_resizes_shorter_side_and_keeps_center(tmp_path):
    # 40 wide x 20 high: red left 8 columns, green middle 24, blue right 8. Scaled by 1/2 the green
    # spans columns 4..16 of 20, so the central 10 (5..15) are green with a column of margin.
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :8] = (255, 0, 0)
    arr[:, 8:32] = (0, 255, 0)
    arr[:, 32:] = (0, 0, 255)
    path = tmp_path / "wide.png"
    Image.fromarray(arr).save(path)
    t = decode_image(path, 10)  # -> 20x10, crop the middle 10 columns, all green
    assert t.shape == (3, 10, 10)
    assert (t[1] > 240).all() and (t[0] < 15).all() and (t[2] < 15).all()

    tall = tmp_path / "tall.png"
    Image.fromarray(np.ascontiguousarray(arr.transpose(1, 0, 2))).save(tall)
    t = decode_image(tall, 10)
    assert t.shape == (3, 10, 10) and (t[1] > 240).all()


# ---------------------------------------------------------------------------------------------- bad files


def _bad_files(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    corrupt = root / "corrupt.jpg"
    corrupt.write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    good_png = _png_bytes(noise)
    truncated = root / "truncated.png"
    truncated.write_bytes(good_png[: len(good_png) // 2])
    empty = root / "empty.jpg"
    empty.write_bytes(b"")
    text = root / "text.jpg"
    text.write_text("hello, I am not a JPEG\n" * 20)
    return {"corrupt": corrupt, "truncated": truncated, "empty": empty, "text": text}


def test_bad_files_raise_bad_image_error(tmp_path):
    bad = _bad_files(tmp_path)
    for name, path in bad.items():
        with pytest.raises(BadImageError) as info:
            decode_image(path, 8)
        assert info.value.path == path and info.value.reason, name
    with pytest.raises(BadImageError, match="0 bytes"):
        decode_image(bad["empty"], 8)

    ds = ImageDataset(list(bad.values()), 8)
    for i in range(len(ds)):
        img, index, reason = ds[i]
        assert img is None and index == i and isinstance(reason, str) and reason


def test_missing_file_is_bad(tmp_path):
    with pytest.raises(BadImageError, match="not found"):
        decode_image(tmp_path / "gone.jpg", 8)


def test_decompression_bomb_is_bad(tmp_path, monkeypatch):
    path = _save(tmp_path / "big.png", size=(40, 40))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 px: warning zone (1x..2x)
    with pytest.raises(BadImageError, match="decompression bomb"):
        decode_image(path, 8)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 16x over: Pillow's error zone
    with pytest.raises(BadImageError, match="decompression bomb"):
        decode_image(path, 8)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    assert decode_image(path, 8).shape == (3, 8, 8)


def test_policy_skip_counts_and_warns_at_most_show(capsys):
    policy = BadImagePolicy("skip", show=2)
    assert policy.summary() is None
    for k in range(5):
        policy.record(Path(f"/d/bad{k}.jpg"), "broken")
    policy.record(Path("/d/bad0.jpg"), "broken")  # the same file again in a later epoch
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines == [
        "warning: skipping unreadable image /d/bad0.jpg: broken",
        "warning: skipping unreadable image /d/bad1.jpg: broken",
    ]
    assert policy.count == 5
    assert policy.first_paths == [Path("/d/bad0.jpg"), Path("/d/bad1.jpg")]
    summary = policy.summary()
    assert summary.startswith("skipped 5 unreadable images (first: /d/bad0.jpg, /d/bad1.jpg")


def test_policy_fail_raises_usage_error():
    policy = BadImagePolicy("fail")
    with pytest.raises(UsageError, match=r"cannot read image /d/x\.jpg: broken.*--on-bad-image skip") as info:
        policy.record(Path("/d/x.jpg"), "broken")
    assert info.value.exit_code == 2
    with pytest.raises(ValueError):
        BadImagePolicy("ignore")


# ---------------------------------------------------------------------------------------------- batches


def test_collate_mixed_and_all_bad():
    a = torch.zeros(3, 4, 4, dtype=torch.uint8)
    b = torch.ones(3, 4, 4, dtype=torch.uint8)
    images, indices, bad = collate_images([(a, 3, None), (None, 5, "broken"), (b, 7, None)])
    assert images.shape == (2, 3, 4, 4) and images[1].eq(1).all()
    assert indices.dtype == torch.int64 and indices.tolist() == [3, 7]
    assert bad == [(5, "broken")]
    images, indices, bad = collate_images([(None, 0, "x")], size=4)
    assert images.shape == (0, 3, 4, 4) and indices.numel() == 0 and bad == [(0, "x")]


def _folder_with_bad(root: Path) -> list[Path]:
    for k in range(10):
        _save(root / f"good{k:02d}.png", color=(k * 20, 0, 0), size=(6, 6))
    bad = _bad_files(root / "bad")
    paths = sorted(root.glob("good*.png"))
    return paths[:3] + [bad["corrupt"]] + paths[3:7] + [bad["empty"]] + paths[7:]


def _run(paths, policy, seed, num_workers=0, epochs=1):
    loader = make_loader(paths, 6, 4, shuffle=True, drop_last=False, num_workers=num_workers, seed=seed)
    order = []
    for _ in range(epochs):
        for images, indices in iter_batches(loader, policy, paths):
            assert images.dtype == torch.uint8 and images.shape[1:] == (3, 6, 6)
            assert images.shape[0] == indices.shape[0] > 0
            for img, i in zip(images, indices.tolist(), strict=True):
                # each image is the one its index names: red channel encodes the file number
                assert int(img[0, 3, 3]) == int(paths[i].stem[-2:]) * 20
            order.extend(indices.tolist())
    return order


def test_loader_yields_only_good_images_reproducibly(tmp_path, capsys):
    paths = _folder_with_bad(tmp_path)
    policy = BadImagePolicy("skip")
    order = _run(paths, policy, seed=1)
    good = [i for i, p in enumerate(paths) if p.name.startswith("good")]
    assert sorted(order) == good and len(order) == 10
    assert policy.count == 2 and set(policy.first_paths) == {paths[3], paths[8]}
    assert "corrupt.jpg" in capsys.readouterr().err

    assert _run(paths, BadImagePolicy(), seed=1) == order
    assert _run(paths, BadImagePolicy(), seed=2) != order
    two_epochs = _run(paths, BadImagePolicy(), seed=1, epochs=2)
    assert two_epochs[:10] == order and two_epochs[10:] != order  # the generator advances per epoch


def test_loader_with_workers_matches_in_process(tmp_path):
    paths = _folder_with_bad(tmp_path)
    policy = BadImagePolicy("skip", show=0)
    assert _run(paths, policy, seed=3, num_workers=2) == _run(paths, BadImagePolicy(show=0), seed=3)
    assert policy.count == 2


def test_loader_fail_policy_stops(tmp_path):
    paths = _folder_with_bad(tmp_path)
    with pytest.raises(UsageError, match="cannot read image"):
        _run(paths, BadImagePolicy("fail"), seed=0)


# ---------------------------------------------------------------------------------------------- real data


@pytest.mark.skipif(not CIFAR_TEST.is_dir(), reason="shared CIFAR-10 copy not present")
def test_real_cifar10_test_split():
    found = find_images(CIFAR_TEST)
    assert len(found) == 10_000
    assert found.classes == [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    assert np.bincount(found.labels).tolist() == [1000] * 10
    path = found.paths[0]
    assert path.parent.name == "airplane"
    t = decode_image(path, 32)
    assert t.shape == (3, 32, 32) and t.dtype == torch.uint8
    with Image.open(path) as img:
        expected = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(t, expected)


def test_extensions_constant():
    expected = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".npy"}
    assert isinstance(data.IMAGE_EXTENSIONS, frozenset) and expected == data.IMAGE_EXTENSIONS


def test_very_large_image_is_decoded_to_the_storage_size(tmp_path):
    path = _save(tmp_path / "big.png", color=(10, 200, 30), size=(6000, 4000))  # 24 Mpx, under Pillow's limit
    out = decode_image(path, 32)
    assert out.shape == (3, 32, 32)
    assert out[:, 16, 16].tolist() == [10, 200, 30]


def test_unreadable_file_is_a_bad_image(tmp_path, monkeypatch):
    path = _save(tmp_path / "locked.jpg")
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads anything: make the open fail as it would for a user
        real_open = Image.open

        def denied(fp, *args, **kwargs):
            if Path(fp) == path:
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(fp, *args, **kwargs)

        monkeypatch.setattr(Image, "open", denied)
    with pytest.raises(BadImageError, match="permission denied"):
        decode_image(path, 8)
    path.chmod(0o644)


def test_non_utf8_file_names_are_found_decoded_and_reported_literally(tmp_path, capsys):
    folder = os.fsencode(tmp_path)
    good = Path(os.fsdecode(os.path.join(folder, b"caf\xe9.jpg")))
    _save(good)
    bad = Path(os.fsdecode(os.path.join(folder, b"bad\xff.jpg")))
    bad.write_bytes(b"junk")
    found = find_images(tmp_path)
    assert sorted(p.name for p in found.paths) == sorted([good.name, bad.name])
    assert decode_image(good, 8).shape == (3, 8, 8)
    policy = BadImagePolicy("skip")
    with pytest.raises(BadImageError) as info:
        decode_image(bad, 8)
    policy.record(bad, info.value.reason)
    from sslcli import console

    console.warn(policy.summary())  # must not raise UnicodeEncodeError on a surrogate-escaped name
    assert "bad\\udcff.jpg" in capsys.readouterr().err
