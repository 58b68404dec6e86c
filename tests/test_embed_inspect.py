"""sslcli embed (the probe's features, written with an index) and sslcli inspect (any artifact's metadata)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import sslcli
from sslcli import checkpoint, data
from sslcli.features import extract_features
from tests.test_cli import assert_one_clean_error, sslcli_run


def test_embed_equals_probe_features_with_an_index(tmp_path: Path, resnet10t_encoder: Path, cifar_small: Path):
    out = tmp_path / "emb.safetensors"
    proc = sslcli_run("embed", str(resnet10t_encoder), "--data", str(cifar_small / "test"), "--out", str(out),
                      "--batch-size", "64", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["count"] == 200
    tensors = load_file(out)
    images = data.find_images(cifar_small / "test")
    model, info, _ = checkpoint.load_encoder(resnet10t_encoder)
    expected, kept = extract_features(model, info, images.paths, batch_size=50, num_workers=0,
                                      device=torch.device("cpu"), policy=data.BadImagePolicy())
    assert tensors["embeddings"].shape == (200, 512)
    assert torch.allclose(tensors["embeddings"], expected, atol=1e-5)
    assert tensors["labels"].tolist() == [images.labels[i] for i in kept.tolist()]
    with open(tmp_path / "emb.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["path"] for row in rows] == [str(p) for p in images.paths]
    assert rows[0]["class"] == "airplane" and rows[-1]["class"] == "truck" and rows[-1]["label"] == "9"

    shown = sslcli_run("inspect", str(out), "--json")
    described = json.loads(shown.stdout)
    assert described["kind"] == "embeddings" and described["embeddings_shape"] == [200, 512]
    assert described["metadata"]["source_encoder"] == str(resnet10t_encoder)
    # The version that wrote the file is this one; the encoder's own is kept apart.
    encoder_version = json.loads(sslcli_run("inspect", str(resnet10t_encoder), "--json").stdout)["metadata"].get(
        "sslcli_version", "")
    assert described["metadata"]["sslcli_version"] == sslcli.__version__
    assert described["metadata"]["source_sslcli_version"] == encoder_version


def test_inspect_prints_metadata_readably_and_literally(tmp_path: Path, resnet10t_encoder: Path):
    proc = sslcli_run("inspect", str(resnet10t_encoder))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{resnet10t_encoder}: encoder, ")
    assert any(line.split() == ["encoder", "resnet10t"] for line in proc.stdout.splitlines())
    assert '"note": "test"' in proc.stdout  # the spec, indented as JSON
    hostile = tmp_path / "hostile.safetensors"
    save_file({"w": torch.zeros(3, 4)}, hostile, metadata={"name": "\x1b[31mred\x1b[0m"})
    shown = sslcli_run("inspect", str(hostile))
    assert "\x1b" not in shown.stdout and "\\x1b[31mred" in shown.stdout
    assert "without an sslcli tag, 1 tensor, 12 values" in shown.stdout


def test_inspect_refuses_a_file_that_is_not_safetensors(tmp_path: Path):
    bogus = tmp_path / "notes.txt"
    bogus.write_text("hello")
    assert_one_clean_error(sslcli_run("inspect", str(bogus)), 2, "not a safetensors file (it is a text file)")
