"""DATA as list files (.txt, .csv) and images of other than 3 channels (data.channels): reading, decoding, the
decode cache, the encoder's metadata, and pretrain -> probe -> export through the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslcli import cache, checkpoint, data
from sslcli.augment import Augmenter
from sslcli.encoders import build_encoder
from sslcli.errors import UsageError
from sslcli.spec import PretrainSpec, resolve
from sslcli.views import ViewConfig
from tests.test_cli import sslcli_run


def _png(path: Path, value: int, size: int = 24) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, 255 - value, value // 2)).save(path)
    return path


def _decoded(paths: list[Path], policy: data.BadImagePolicy, channels: int = 3) -> dict[Path, torch.Tensor]:
    loader = data.make_loader(paths, 16, 4, shuffle=False, drop_last=False, num_workers=0, seed=0, channels=channels)
    return {paths[int(i)]: x for images, indices in data.iter_batches(loader, policy, paths)
            for x, i in zip(images, indices, strict=True)}


# ---------------------------------------------------------------- lists


@pytest.fixture
def mixed_list(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """A .txt list: a relative path, an absolute one, a name with spaces and non-ASCII characters, a missing
    file, a duplicate line, a comment and blank lines."""
    files = {"relative": _png(tmp_path / "lists" / "imgs" / "a.png", 10),
             "absolute": _png(tmp_path / "elsewhere" / "b.png", 80),
             "odd": _png(tmp_path / "lists" / "my photos" / "Ünïcødé été 1.png", 160)}
    lines = ["# training images", "imgs/a.png", "", str(files["absolute"]), "  my photos/Ünïcødé été 1.png  ",
             "imgs/missing.png", "./imgs/a.png", ""]
    listed = tmp_path / "lists" / "paths.txt"
    listed.write_text("\n".join(lines), encoding="utf-8")
    return listed, files


def test_a_text_list_keeps_its_order_resolves_relative_paths_and_skips_a_duplicate(mixed_list, capsys):
    listed, files = mixed_list
    images = data.find_images(listed)
    missing = listed.parent / "imgs" / "missing.png"
    assert images.paths == [files["relative"], files["absolute"], files["odd"], missing]
    assert images.labels is None and images.classes is None and images.root == listed
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and "1 duplicate line skipped" in warning[0] and "line 7 repeats line 2" in warning[0]


def test_a_listed_file_that_is_missing_follows_on_bad_image(mixed_list, capsys):
    listed, files = mixed_list
    images = data.find_images(listed)
    policy = data.BadImagePolicy("skip")
    decoded = _decoded(images.paths, policy)
    assert set(decoded) == {files["relative"], files["absolute"], files["odd"]}
    assert policy.count == 1 and "missing.png: file not found" in capsys.readouterr().err
    # The odd name decodes to its own pixels.
    with Image.open(files["odd"]) as img:
        assert int(decoded[files["odd"]][0, 0, 0]) == img.getpixel((0, 0))[0]
    with pytest.raises(UsageError, match="missing.png: file not found"):
        _decoded(images.paths, data.BadImagePolicy("fail"))


def test_a_csv_label_column_gives_the_classes_not_the_folders(tmp_path: Path):
    flat = tmp_path / "all"
    for i in range(4):
        _png(flat / f"{i}.png", 40 * i)
    listed = tmp_path / "split.csv"
    listed.write_text("path,label\n" + "".join(f"all/{i}.png,{label}\n" for i, label in
                                               enumerate(["zebra", "apple", "zebra", "mango"])))
    images = data.find_images(listed)
    assert images.classes == ["apple", "mango", "zebra"]  # sorted label strings, as ImageFolder sorts folders
    assert [images.classes[label] for label in images.labels] == ["zebra", "apple", "zebra", "mango"]
    # No header, a comment, quoted paths with commas: the same reading.
    _png(flat / "x, y.png", 5)
    headerless = tmp_path / "plain.csv"
    headerless.write_text('# comment\n"all/x, y.png",apple\nall/0.png,zebra\n')
    again = data.find_images(headerless)
    assert again.paths == [flat / "x, y.png", flat / "0.png"] and again.classes == ["apple", "zebra"]


@pytest.mark.parametrize(("text", "message"), [
    ("a.png,cat\nb.png\n", "line 2 has no label"),
    ("a.png,cat\na.png,dog\n", "one image has one label"),
    ("# nothing\n\n", "lists no images"),
    ("a.png,cat,x\n", "3 columns"),
])
def test_a_csv_that_makes_no_sense_is_one_clear_error(tmp_path: Path, text: str, message: str):
    listed = tmp_path / "bad.csv"
    listed.write_text(text)
    with pytest.raises(UsageError, match=message):
        data.find_images(listed)


def test_the_decode_cache_of_a_list_is_reused_and_changes_with_the_list_or_a_file(mixed_list, tmp_path, capsys):
    listed, files = mixed_list
    paths = data.find_images(listed).paths
    folder = tmp_path / "cache"
    first = cache.open_or_build(paths, 16, folder, data.BadImagePolicy("skip"), 0)
    capsys.readouterr()
    second = cache.open_or_build(paths, 16, folder, data.BadImagePolicy("skip"), 0)
    assert "decode cache: reusing" in capsys.readouterr().err and second.path == first.path
    assert second.good.tolist() == [True, True, True, False]  # the missing file is recorded, not decoded
    key = cache.cache_key(paths, 16)
    assert cache.cache_key(paths[:2], 16) != key  # the list changed
    os.utime(files["absolute"], ns=(1, 1))
    assert cache.cache_key(paths, 16) != key  # a listed file changed
    assert cache.cache_key(paths, 16, channels=1) not in (key, cache.cache_key(paths, 16))


def test_probe_splits_and_auto_size_take_lists(tmp_path: Path):
    from sslcli.sizing import auto_image_size
    from sslcli.splits import labeled_splits

    for split, count in (("train", 4), ("val", 2)):
        rows = ["path,label"] + [f"{split}-{i}.png,{'ab'[i % 2]}" for i in range(count)]
        for i in range(count):
            _png(tmp_path / f"{split}-{i}.png", 30 * i, size=90)
        (tmp_path / f"{split}.csv").write_text("\n".join(rows))
    train, val, val_labels = labeled_splits(tmp_path / "train.csv", tmp_path / "val.csv", None, 0)
    assert len(train) == 4 and val_labels.tolist() == [0, 1]
    assert auto_image_size(tmp_path / "train.csv")[0] == 96
    with pytest.raises(UsageError, match="pass the eval images as --val"):
        labeled_splits(tmp_path / "train.csv", None, None, 0)


# ---------------------------------------------------------------- channels


def test_greyscale_8_and_16_bit_decode_to_one_channel_and_16_bit_is_stretched_not_clipped(tmp_path: Path):
    grey8 = np.tile(np.arange(0, 240, 10, dtype=np.uint8), (24, 1))
    Image.fromarray(grey8).save(tmp_path / "g8.png")
    grey16 = np.tile(np.linspace(1000, 4000, 24).astype(np.uint16), (24, 1))  # a 12-bit range in 16 bits
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    x8 = data.decode_image(tmp_path / "g8.png", 24, channels=1)
    assert x8.shape == (1, 24, 24) and torch.equal(x8[0], torch.from_numpy(grey8))
    x16 = data.decode_image(tmp_path / "g16.png", 24, channels=1)
    assert x16.shape == (1, 24, 24)
    assert int(x16.min()) == 0 and int(x16.max()) == 255  # its own range: 1000 -> 0, 4000 -> 255
    assert len(torch.unique(x16)) == 24  # every level kept apart (the 16-bit range would leave 12 of them)
    assert torch.all(x16[0, :, 1:] > x16[0, :, :-1])  # the order of the values survives
    # An RGB photo for a 1-channel run: its luma.
    rgb = _png(tmp_path / "rgb.png", 100)
    with Image.open(rgb) as img:
        assert int(data.decode_image(rgb, 24, channels=1)[0, 0, 0]) == img.convert("L").getpixel((0, 0))


def test_four_channel_tiff_and_npy_keep_their_bands(tmp_path: Path):
    import tifffile

    bands = np.stack([np.full((20, 30), 1000 * (c + 1), dtype=np.uint16) for c in range(4)])  # C x H x W
    tifffile.imwrite(tmp_path / "stack.tif", bands, photometric="minisblack", planarconfig="separate")
    np.save(tmp_path / "chw.npy", bands.astype(np.float32))
    np.save(tmp_path / "hwc.npy", bands.transpose(1, 2, 0).astype(np.uint8))
    expected = torch.tensor([0, 85, 170, 255], dtype=torch.uint8)  # stretched over all bands together
    for name in ("stack.tif", "chw.npy"):
        x = data.decode_image(tmp_path / name, 16, channels=4)
        assert x.shape == (4, 16, 16) and torch.equal(x[:, 5, 5], expected), name
    hwc = data.decode_image(tmp_path / "hwc.npy", 16, channels=4)
    assert torch.equal(hwc[:, 0, 0], torch.tensor([1000 * (c + 1) % 256 for c in range(4)], dtype=torch.uint8))
    with pytest.raises(data.BadImageError, match="4 channels.*data.channels is 3"):
        data.decode_image(tmp_path / "chw.npy", 16, channels=3)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(data.BadImageError, match="never unpickles"):
        data.decode_image(tmp_path / "objects.npy", 16, channels=4)


def test_the_rgb_only_augmentations_are_off_for_other_channels_with_one_line(capsys):
    view = ViewConfig(size=16, jitter_p=1.0, gray_p=1.0, solarize_p=1.0, randaugment_ops=2)
    augment = Augmenter([view, view], (0.5,), (0.25,), torch.Generator().manual_seed(0))
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "colour jitter, random grayscale, solarize and RandAugment are off" in lines[0]
    assert all(v.jitter_p == v.gray_p == v.solarize_p == 0 and v.randaugment_ops == 0 for v in augment.views)
    x = torch.full((2, 1, 20, 20), 255, dtype=torch.uint8)
    (out, _) = augment(x)
    assert out.shape == (2, 1, 16, 16) and torch.allclose(out, torch.full_like(out, 2.0))  # (1 - 0.5) / 0.25
    Augmenter([view], (0.5,) * 3, (0.25,) * 3, torch.Generator())
    assert capsys.readouterr().err == ""  # RGB keeps its recipe, silently


def test_the_encoder_file_records_its_channels_and_rebuilds_with_them(tmp_path: Path):
    model, info = build_encoder("resnet10t", 32, channels=1)
    assert info.channels == 1 and info.mean == (0.5,) and info.std == (0.25,) and "in_chans" not in info.kwargs
    meta = checkpoint.encoder_metadata(info, method="simclr", epoch=1, step=1, spec={})
    assert meta["channels"] == "1"
    checkpoint.save_encoder(tmp_path / "encoder.safetensors", model, meta)
    loaded, loaded_info, _ = checkpoint.load_encoder(tmp_path / "encoder.safetensors")
    assert loaded_info.channels == 1 and loaded(torch.zeros(2, 1, 32, 32)).shape == (2, info.feature_dim)


@pytest.mark.parametrize("small_stem", [True, False])
def test_a_one_channel_resnet18_exports_to_torchvision(tmp_path: Path, small_stem: bool):
    from sslcli.commands import export
    from sslcli.spec import ExportSpec

    model, info = build_encoder("resnet18", 32, small_stem=small_stem, channels=1)
    path = tmp_path / "encoder.safetensors"
    checkpoint.save_encoder(path, model, checkpoint.encoder_metadata(info, method="simclr", epoch=1, step=1, spec={}))
    export.run(resolve(ExportSpec, options={"encoder": str(path), "to": "torchvision", "out": str(tmp_path / "tv")}))
    loaded = export.load_torchvision(tmp_path / "tv")
    assert loaded.conv1.in_channels == 1
    model.eval(), loaded.eval()
    x = torch.rand(2, 1, 32, 32)
    assert torch.allclose(loaded(x), model(x), atol=1e-5)


def test_a_colour_method_refuses_other_channels_and_channels_have_bounds():
    with pytest.raises(UsageError, match="colorization .* needs data.channels=3"):
        resolve(PretrainSpec, options={"method.name": "colorization", "data.image_size": 32},
                sets=["data.channels=1"])
    with pytest.raises(UsageError, match="data.channels"):
        resolve(PretrainSpec, options={"data.image_size": 32}, sets=["data.channels=0"])
    assert resolve(PretrainSpec, options={"data.image_size": 32}, sets=["data.channels=4"]).data.channels == 4


# ---------------------------------------------------------------- end to end


def _generated(root: Path, kind: str) -> tuple[Path, Path]:
    """train.csv and val.csv over generated images of two classes told apart by brightness: 1-channel 8- and
    16-bit PNGs, or 4-channel TIFFs and .npy stacks. Class names are labels, the files share one folder."""
    import tifffile

    rng = np.random.default_rng(0)
    folder = root / "images"
    folder.mkdir(parents=True)
    lists = []
    for split, count in (("train", 16), ("val", 8)):
        rows = ["path,label"]
        for i in range(count):
            bright = i % 2
            if kind == "grey":
                name = f"{split}{i}.png"
                if i % 4 < 2:  # 16-bit
                    Image.fromarray((rng.integers(0, 500, (36, 36)) + 2000 * (1 + bright)).astype(np.uint16)).save(
                        folder / name)
                else:
                    Image.fromarray((rng.integers(0, 60, (36, 36)) + 60 + 120 * bright).astype(np.uint8)).save(
                        folder / name)
            else:
                stack = (rng.random((4, 36, 36)) * (1 + 3 * bright)).astype(np.float32)
                name = f"{split}{i}.{'tif' if i % 4 < 2 else 'npy'}"
                if name.endswith(".tif"):
                    tifffile.imwrite(folder / name, (stack * 1000).astype(np.uint16), photometric="minisblack",
                                     planarconfig="separate")
                else:
                    np.save(folder / name, stack)
            rows.append(f"images/{name},{'bright' if bright else 'dark'}")
        lists.append(root / f"{split}.csv")
        lists[-1].write_text("\n".join(rows) + "\n")
    return lists[0], lists[1]


@pytest.mark.parametrize(("kind", "channels"), [("grey", 1), ("bands", 4)])
def test_pretrain_probe_export_on_other_channels(tmp_path: Path, kind: str, channels: int):
    train, val = _generated(tmp_path, kind)
    run = tmp_path / "run"
    proc = sslcli_run("pretrain", str(train), "--val", str(val), "--preset", "quickstart", "--epochs", "1",
                      "--batch-size", "8", "--out", str(run), "--set", f"data.channels={channels}",
                      "--set", "monitor.report=false", "--set", "monitor.knn_every=0")
    assert proc.returncode == 0, proc.stderr
    assert f"data.channels={channels}: colour jitter" in proc.stderr
    meta = checkpoint.read_metadata(run / "encoder.safetensors")
    assert meta["channels"] == str(channels) and json.loads(meta["mean"]) == [0.5] * channels
    # probe and export in this process (the CLI's start-up is paid once, by pretrain), with the CLI's specs.
    from sslcli.commands import export, probe
    from sslcli.spec import ExportSpec, ProbeSpec

    result = probe.run(resolve(ProbeSpec, options={"encoder": str(run / "encoder.safetensors"), "data.path": str(train),
                                                   "data.val": str(val), "probe.baseline": False}))
    assert result["n_train"] == 16 and result["n_eval"] == 8 and result["num_classes"] == 2
    assert result["feature_dim"] == int(meta["feature_dim"])
    export.run(resolve(ExportSpec, options={"encoder": str(run / "encoder.safetensors"), "to": "timm",
                                            "out": str(tmp_path / "timm")}))  # it loads the export back to check it
    config = json.loads((tmp_path / "timm" / "config.json").read_text())
    assert config["pretrained_cfg"]["input_size"][0] == channels and config["model_args"]["in_chans"] == channels


@pytest.mark.slow
def test_pretrain_and_probe_from_lists_of_real_images_reuse_the_decode_cache(cifar_tiny: Path, tmp_path: Path):
    """CIFAR images named by lists outside their folders: a .txt for pretraining, CSVs for the probe."""
    train_images = data.find_images(cifar_tiny / "train")
    val_images = data.find_images(cifar_tiny / "test")
    (tmp_path / "train.txt").write_text("\n".join(str(p) for p in train_images.paths) + "\n")
    for name, images in (("train", train_images), ("val", val_images)):
        rows = [f"{p},{images.classes[label]}" for p, label in zip(images.paths, images.labels, strict=True)]
        (tmp_path / f"{name}.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    run = tmp_path / "run"
    proc = sslcli_run("pretrain", str(tmp_path / "train.txt"), "--val", str(tmp_path / "val.csv"), "--preset",
                      "quickstart", "--epochs", "1", "--batch-size", "32", "--out", str(run),
                      "--set", "monitor.report=false", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["steps"] == len(train_images) // 32
    args = ("probe", str(run), "--data", str(tmp_path / "train.csv"), "--val", str(tmp_path / "val.csv"),
            "--no-baseline", "--json")
    first, second = sslcli_run(*args), sslcli_run(*args)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "decode cache: decoding" not in second.stderr and second.stderr.count("decode cache: reusing") == 2
    result = json.loads(second.stdout)
    assert result["n_train"] == len(train_images) and result["num_classes"] == 10
