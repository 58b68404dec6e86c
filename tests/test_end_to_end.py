"""pretrain -> encoder.safetensors -> probe, through the CLI, on a small real subset of CIFAR-10."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from sslcli import checkpoint
from tests.test_cli import sslcli_run


@pytest.fixture(scope="module")
def pretrained(cifar_small: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    run = tmp_path_factory.mktemp("e2e") / "run"
    proc = sslcli_run("pretrain", str(cifar_small), "--preset", "quickstart", "--epochs", "2",
                      "--batch-size", "64", "--out", str(run), "--set", "train.log_every=1",
                      "--set", "train.checkpoint_every=1", "--set", "method.proj_hidden_dim=256", "--json")
    assert proc.returncode == 0, proc.stderr
    return run, proc


def test_pretrain_writes_the_run_folder(pretrained):
    run, proc = pretrained
    summary = json.loads(proc.stdout)  # stdout holds the JSON and nothing else
    assert summary["images"] == 400 and summary["steps"] == 2 * (400 // 64)
    assert summary["encoder"] == str(run / "encoder.safetensors")
    spec = json.loads((run / "spec.json").read_text())
    assert spec["train"]["batch_size"] == 64 and spec["data"]["path"].endswith(str(Path(spec["data"]["path"]).name))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, summary["steps"] + 1))
    assert all(r["loss"] > 0 and r["images_per_s"] > 0 for r in records)
    # Not a TTY: plain progress lines on stderr.
    assert "step 1/12" in proc.stderr and "loss" in proc.stderr
    states = checkpoint.complete_states(run / "checkpoints")
    assert len(states) == 2  # epoch 1 and the end, the newest two kept


def test_encoder_file_has_the_documented_metadata(pretrained):
    run, _ = pretrained
    with safe_open(str(run / "encoder.safetensors"), "pt") as f:
        meta = f.metadata()
    for key in ("format", "sslcli_format", "sslcli_version", "torch_version", "timm_version", "method", "encoder",
                "encoder_kwargs", "small_stem", "feature_dim", "image_size", "mean", "std", "epoch", "step", "spec"):
        assert key in meta, key
    assert meta["method"] == "simclr" and meta["encoder"] == "resnet10t" and meta["epoch"] == "2"
    assert json.loads(meta["spec"])["train"]["epochs"] == 2
    model, info, _ = checkpoint.load_encoder(run / "encoder.safetensors")
    assert info.feature_dim == 512
    # The weights moved away from their initialisation seed: training did something.
    fresh, _ = checkpoint.rebuild_encoder(info), None
    changed = [not torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(),
                                                        strict=True)]
    assert any(changed)


def test_probe_reports_knn_and_linear(pretrained, cifar_small: Path):
    run, _ = pretrained
    proc = sslcli_run("probe", str(run / "encoder.safetensors"), "--data", str(cifar_small), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["n_train"] == 400 and result["n_eval"] == 200 and result["feature_dim"] == 512
    assert set(result["knn"]) == {"k20", "k200"}
    for scores in [*result["knn"].values(), result["linear"]]:
        assert 0.0 <= scores["top1"] <= scores["top5"] <= 1.0
    # Even a barely trained encoder separates CIFAR classes better than chance (10 %).
    assert result["linear"]["top1"] > 0.15
    assert json.loads((run / "probe.json").read_text()) == result
    table = sslcli_run("probe", str(run / "encoder.safetensors"), "--data", str(cifar_small))
    assert "kNN k=20" in table.stdout and "linear" in table.stdout


def test_max_images_is_a_seeded_subset_of_the_train_split(cifar_small: Path):
    from sslcli.pretrain import training_images
    from sslcli.spec import PretrainSpec, resolve

    def pick(seed: int) -> list[Path]:
        spec = resolve(PretrainSpec, options={"data.path": str(cifar_small)},
                       sets=["data.max_images=50", f"train.seed={seed}"])
        return training_images(spec).paths

    first = pick(0)
    assert len(first) == 50 and first == pick(0) and first != pick(1)
    assert all(p.parent.parent == cifar_small / "train" for p in first)  # never the test split
