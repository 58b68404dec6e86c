"""pretrain -> encoder.safetensors -> probe, through the CLI, on a small real subset of CIFAR-10."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from sslcli import checkpoint
from tests.helpers import images_are_valid_png
from tests.test_cli import sslcli_run


@pytest.fixture(scope="module")
def pretrained(cifar_small: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    run = tmp_path_factory.mktemp("e2e") / "run"
    proc = sslcli_run("pretrain", str(cifar_small), "--preset", "quickstart", "--epochs", "2",
                      "--batch-size", "64", "--out", str(run), "--set", "train.log_every=1",
                      "--set", "train.checkpoint_every=1", "--set", "method.proj_hidden_dim=256", "--json")
    assert proc.returncode == 0, proc.stderr
    return run, proc


def test_pretrain_writes_the_run_folder(pretrained, cifar_small: Path):
    run, proc = pretrained
    summary = json.loads(proc.stdout)  # stdout holds the JSON and nothing else
    assert summary["images"] == 400 and summary["steps"] == 2 * (400 // 64)
    assert summary["encoder"] == str(run / "encoder.safetensors")
    spec = json.loads((run / "spec.json").read_text())
    assert spec["train"]["batch_size"] == 64 and Path(spec["data"]["path"]) == cifar_small
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, summary["steps"] + 1))
    assert all(r["loss"] > 0 and r["images_per_s"] > 0 for r in steps)
    # Label-free monitors on every logged step, for the encoder features and the projections.
    for key in ("features_std", "features_effective_rank", "features_uniformity", "features_alignment",
                "projections_std", "projections_effective_rank", "projections_alignment"):
        assert all(key in r for r in steps), key
    assert all(1 <= r["features_effective_rank"] <= 64 for r in steps)  # at most min(batch, dim)
    # cifar_small holds train/ and test/: the online kNN ran before the first step and after each epoch.
    knn = [r for r in records if "knn_top1" in r]
    assert [(r["epoch"], r["step"]) for r in knn] == [(0, 0), (1, 6), (2, 12)]
    assert all(r["knn_chance"] == 0.1 for r in knn)
    report = json.loads((run / "report" / "summary.json").read_text())
    assert report["random_init_knn_top1"] == knn[0]["knn_top1"] and report["knn_chance"] == 0.1
    assert summary["knn_top1"] == knn[-1]["knn_top1"] and 0.1 < summary["knn_top1"] <= 1
    assert 0.1 < summary["linear_top1"] <= 1
    # Not a TTY: plain progress lines on stderr.
    assert "step 1/12" in proc.stderr and "loss" in proc.stderr and "online kNN top-1" in proc.stderr
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
    # The quickstart's resnet10t at half width (channels 32-64-128-256): 256 features, recorded as such.
    assert info.feature_dim == 256 == int(meta["feature_dim"])
    assert json.loads(meta["encoder_kwargs"]) == {"channels": [32, 64, 128, 256]}
    # The weights moved during training: the final encoder differs from the one in epoch 1's training state.
    first_state = checkpoint.complete_states(run / "checkpoints")[0]
    with safe_open(str(first_state), "pt") as f:
        epoch1 = {key[len("model/encoder."):]: f.get_tensor(key) for key in f.keys()  # noqa: SIM118
                  if key.startswith("model/encoder.")}
    final = model.state_dict()
    assert set(epoch1) == set(final)
    assert any(not torch.equal(final[key], epoch1[key]) for key in final if final[key].is_floating_point())


def test_probe_reports_knn_and_linear(pretrained, cifar_small: Path):
    run, _ = pretrained
    proc = sslcli_run("probe", str(run / "encoder.safetensors"), "--data", str(cifar_small), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["n_train"] == 400 and result["n_eval"] == 200 and result["feature_dim"] == 256
    assert set(result["knn"]) == {"k20", "k200"}
    for scores in [*result["knn"].values(), result["linear"]]:
        assert 0.0 <= scores["top1"] <= scores["top5"] <= 1.0
    # Even a barely trained encoder separates CIFAR classes better than chance (10 %).
    assert result["linear"]["top1"] > 0.15
    # Printed first, then written beside the encoder under a name that says which data it scored.
    written = run / f"probe-{cifar_small.name}-test.json"
    assert result["out"] == str(written) and json.loads(written.read_text()) == result
    table = sslcli_run("probe", str(run / "encoder.safetensors"), "--data", str(cifar_small))
    assert "kNN k=20" in table.stdout and "linear" in table.stdout
    assert json.loads(written.read_text())["spec"] == result["spec"], "the same probe again replaces its own file"


def test_max_images_is_a_seeded_subset_of_the_train_split(cifar_small: Path):
    from sslcli.spec import PretrainSpec, resolve
    from sslcli.training_data import training_images

    def pick(seed: int) -> list[Path]:
        spec = resolve(PretrainSpec, options={"data.path": str(cifar_small)},
                       sets=["data.max_images=50", f"train.seed={seed}"])
        return training_images(spec).paths

    first = pick(0)
    assert len(first) == 50 and first == pick(0) and first != pick(1)
    assert all(p.parent.parent == cifar_small / "train" for p in first)  # never the test split


def test_pretrain_report_shows_the_loss_falling_and_neighbours_of_the_same_class(pretrained):
    run, proc = pretrained
    summary = json.loads(proc.stdout)
    assert summary["report"] == str(run / "report")
    for name in ("curves.png", "neighbors.png"):
        assert images_are_valid_png(run / "report" / name), name
        with Image.open(run / "report" / name) as img:
            assert img.width > 500 and img.height > 400  # a figure, not an empty canvas
    written = json.loads((run / "report" / "summary.json").read_text())
    assert written["steps"] == summary["steps"] and written["knn_top1"] == summary["knn_top1"]
    assert written["final_loss"] < written["first_loss"], "the curves show the loss falling"
    assert written["neighbours_same_class"] > written["chance"] == 0.1, "neighbours share the query's class"


def test_report_command_regenerates_the_report(pretrained, tmp_path: Path):
    run, _ = pretrained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "report")
    proc = sslcli_run("report", str(copy), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)  # nothing but the JSON on stdout
    assert set(summary["files"]) == {"curves.png", "neighbors.png", "summary.json", "encoder"}
    assert all(images_are_valid_png(copy / "report" / n) for n in ("curves.png", "neighbors.png"))
    assert summary["neighbours_same_class"] == json.loads((run / "report" / "summary.json").read_text())[
        "neighbours_same_class"], "the same encoder and data give the same grid"
    bad = sslcli_run("report", str(tmp_path / "nothing-here"))
    assert bad.returncode == 2 and "not a run folder" in bad.stderr and "Traceback" not in bad.stderr


def command_lines(run: Path, data: Path, tmp: Path) -> dict[str, list[str]]:
    encoder = str(run / "encoder.safetensors")
    return {
        "pretrain": ["pretrain", str(data), "--preset", "quickstart", "--epochs", "1", "--batch-size", "128",
                     "--set", "method.proj_hidden_dim=64", "--out", str(tmp / "pretrain"),
                     "--set", "optim.warmup_epochs=0", "--set", "train.log_every=1"],  # long enough not to warn
        "probe": ["probe", encoder, "--data", str(data), "--set", "probe.knn_k=[20]", "--no-baseline"],
        "finetune": ["finetune", encoder, "--data", str(data), "--epochs", "1", "--batch-size", "4",
                     "--out", str(tmp / "ft")],  # 100 steps: long enough not to warn
        "export": ["export", encoder, "--to", "timm", "--out", str(tmp / "export")],
        "embed": ["embed", encoder, "--data", str(data / "test"), "--out", str(tmp / "emb.safetensors")],
        "inspect": ["inspect", encoder],
        "presets": ["presets"],
        "methods": ["methods"],
        "report": ["report", str(tmp / "run")],
    }


@pytest.mark.parametrize("command", ["pretrain", "probe", "finetune", "export", "embed", "inspect", "presets",
                                     "methods", "report"])
def test_every_command_prints_only_json_with_json_and_nothing_on_stderr_with_quiet(pretrained, cifar_small: Path,
                                                                                   tmp_path: Path, command: str):
    run, _ = pretrained
    shutil.copytree(run, tmp_path / "run")  # report rewrites the folder it is given
    args = command_lines(run, cifar_small, tmp_path)[command]
    proc = sslcli_run(*args, "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and isinstance(json.loads(lines[0]), dict), proc.stdout[:500]
    assert proc.stderr == "", f"--quiet leaves stderr to warnings and errors: {proc.stderr[:500]}"


def _pty_stderr(args: list[str], env: dict[str, str]) -> str:
    """Run sslcli with stderr on a pseudo-terminal (so the Rich progress bar is used); returns what it drew."""
    import os
    import pty
    import subprocess
    import sys

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "sslcli", *args], stdout=subprocess.PIPE, stderr=slave,
                            env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", **env})
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=300)
    os.close(master)
    assert proc.returncode == 0, b"".join(chunks)[-2000:]
    return b"".join(chunks).decode(errors="replace")


def test_no_color_removes_colour_from_the_progress_bar(cifar_small: Path, tmp_path: Path):
    import re

    args = ["pretrain", str(cifar_small / "train"), "--preset", "quickstart", "--epochs", "1", "--batch-size", "64",
            "--set", "method.proj_hidden_dim=64", "--set", "monitor.report=false"]
    colour = re.compile(r"\x1b\[[0-9;]*(3[0-7]|9[0-7]|38;[25];[0-9;]+)m")
    coloured = _pty_stderr([*args, "--out", str(tmp_path / "a")], {})
    assert colour.search(coloured), "control: on a terminal the bar is drawn in colour"
    plain = _pty_stderr([*args, "--out", str(tmp_path / "b")], {"NO_COLOR": "1"})
    assert "step" in plain or "simclr" in plain
    assert not colour.search(plain), "NO_COLOR=1: no colour codes"


def test_online_knn_with_unlabeled_training_images_uses_halves_of_val(cifar_small: Path, tmp_path: Path):
    flat = tmp_path / "unlabeled"
    flat.mkdir()
    for file in sorted((cifar_small / "train").rglob("*.jpg")) + sorted((cifar_small / "train").rglob("*.png")):
        (flat / f"{file.parent.name}-{file.name}").symlink_to(file)
    proc = sslcli_run("pretrain", str(flat), "--preset", "quickstart", "--epochs", "1", "--batch-size", "128",
                      "--val", str(cifar_small / "test"), "--set", "method.proj_hidden_dim=64",
                      "--out", str(tmp_path / "run"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert "half each" in proc.stderr
    knn = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
           if "knn_top1" in line]
    assert [r["epoch"] for r in knn] == [0, 1]  # before the first step, after the epoch
    # 100 bank / 100 queried images, 10 classes: a score in hundredths. (Three steps of training: whether it is
    # above chance on 100 images is noise, 9-20 % across CPUs and precisions.)
    for record in knn:
        assert 0 <= record["knn_top1"] <= 1 and abs(record["knn_top1"] * 100 - round(record["knn_top1"] * 100)) < 1e-4
    assert json.loads(proc.stdout)["knn_top1"] == knn[1]["knn_top1"]
