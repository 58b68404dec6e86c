"""The CLI as users meet it: a subprocess, its exit code, stdout and stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import sslcli


def sslcli_run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SSLCLI_DEBUG"}
    return subprocess.run([sys.executable, "-m", "sslcli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def assert_one_clean_error(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert proc.stdout == ""


def test_version_and_help_do_not_import_torch():
    from sslcli.methods import CONFIGS

    assert sslcli_run("--version").stdout.strip() == f"sslcli {sslcli.__version__}"
    probe = "import sys, sslcli.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    helped = sslcli_run("pretrain", "--help")
    assert helped.returncode == 0 and "--preset" in helped.stdout and "--set" in helped.stdout
    flat = " ".join(helped.stdout.replace("│", " ").split())
    missing = [name for name in CONFIGS if f" {name}," not in flat and f" {name} " not in flat]
    assert not missing, f"--method's help leaves out {missing}"


def test_missing_folder_exits_2(tmp_path: Path):
    proc = sslcli_run("pretrain", str(tmp_path / "nope"), "--out", str(tmp_path / "run"))
    assert_one_clean_error(proc, 2, "does not exist")


def test_folder_without_images_exits_2(tmp_path: Path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    proc = sslcli_run("pretrain", str(tmp_path / "empty"), "--out", str(tmp_path / "run"))
    assert_one_clean_error(proc, 2, "no images found")
    assert not (tmp_path / "run").exists()


def test_unknown_set_key_exits_2(tmp_path: Path):
    proc = sslcli_run("pretrain", str(tmp_path), "--set", "train.epoch=3")
    assert_one_clean_error(proc, 2, "unknown key 'train.epoch'")


def test_missing_argument_is_a_usage_error():
    proc = sslcli_run("probe")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "encoder" in proc.stderr.lower()
    assert len(proc.stderr.strip().splitlines()) == 1


def test_probe_refuses_a_file_that_is_not_an_encoder(tmp_path: Path):
    plain = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, plain)
    proc = sslcli_run("probe", str(plain), "--data", str(tmp_path))
    assert_one_clean_error(proc, 2, "not an sslcli encoder")


def test_dry_run_prints_the_resolved_spec(tmp_path: Path):
    proc = sslcli_run("pretrain", str(tmp_path), "--preset", "quickstart", "--epochs", "3", "--set",
                      "optim.base_lr=0.7", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    spec = json.loads(proc.stdout)
    assert spec["train"]["epochs"] == 3 and spec["optim"]["base_lr"] == 0.7
    assert spec["encoder"]["name"] == "resnet10t" and spec["data"]["path"] == str(tmp_path)
    assert not list(tmp_path.iterdir()), "a dry run must not write anything"


def test_presets_lists_one_line_each():
    proc = sslcli_run("presets")
    assert proc.returncode == 0
    lines = proc.stdout.strip().splitlines()
    assert any(line.startswith("quickstart ") for line in lines)
    assert any(line.startswith("simclr-cifar10 ") for line in lines)
    from sslcli.methods import CONFIGS
    from tests.test_methods import preset_kinds

    for method in CONFIGS:  # every method's presets are listed (a temporal method's: cpu and video)
        for kind in preset_kinds(method):
            assert any(line.startswith(f"{method}-{kind} ") for line in lines), f"{method}-{kind} not listed"


def test_methods_lists_every_method_with_its_paper():
    import json

    from sslcli.methods import CONFIGS

    proc = sslcli_run("methods")
    assert proc.returncode == 0
    lines = proc.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(CONFIGS)
    assert all("arxiv.org/abs/" in line for line in lines)
    rows = json.loads(sslcli_run("methods", "--json").stdout)
    assert set(rows) == set(CONFIGS) and all(r["paper"].startswith("https://arxiv.org/abs/") for r in rows.values())


def test_unknown_method_lists_the_valid_ones_and_exits_2(tmp_path: Path):
    proc = sslcli_run("pretrain", str(tmp_path), "--method", "simclrr")
    assert_one_clean_error(proc, 2, "unknown method 'simclrr'", "mocov3", "mae")
    proc = sslcli_run("pretrain", str(tmp_path), "--set", "method.name=nope", "--dry-run")
    assert proc.returncode == 2
    assert "unknown method 'nope'" in proc.stderr and "vicreg" in proc.stderr


def _folder_with_one_bad_image(root: Path) -> Path:
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"{i}.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


def test_a_folder_of_unreadable_images_says_so_rather_than_blaming_the_batch_size(tmp_path: Path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        (folder / f"{i}.jpg").write_bytes(b"not a jpeg")
    (folder / "gone.jpg").symlink_to(tmp_path / "missing.jpg")  # a broken link, as a moved dataset leaves
    proc = sslcli_run("pretrain", str(folder), "--preset", "quickstart", "--epochs", "1", "--batch-size", "4",
                      "--out", str(tmp_path / "run"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0]  # progress lines may precede it
    assert "only 0 of the 7 images found could be read (7 unreadable" in errors[0] and "larger than" not in errors[0]


def test_bad_images_are_skipped_and_reported_or_fatal_on_request(tmp_path: Path):
    images = _folder_with_one_bad_image(tmp_path / "images")
    common = ["--preset", "quickstart", "--epochs", "1", "--batch-size", "4", "--set", "method.proj_hidden_dim=64"]
    failed = sslcli_run("pretrain", str(images), "--out", str(tmp_path / "fail"), "--on-bad-image", "fail", *common)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and failed.stderr.strip().splitlines()[-1] == errors[0]  # progress lines may precede it
    assert "broken.jpg" in errors[0] and "--on-bad-image skip" in errors[0]
    assert not (tmp_path / "fail" / "encoder.safetensors").exists()

    skipped = sslcli_run("pretrain", str(images), "--out", str(tmp_path / "skip"), "--json", *common)
    assert skipped.returncode == 0, skipped.stderr
    assert "skipping unreadable image" in skipped.stderr and "broken.jpg" in skipped.stderr
    summary = json.loads(skipped.stdout)
    assert summary["skipped_images"] == 1 and summary["steps"] == 2  # 8 good images, batch 4


def test_every_cpu_preset_carries_its_expected_knn_and_presets_json_shows_it():
    import json

    from sslcli.methods import CONFIGS, PRESET_FAMILIES
    from sslcli.spec import PretrainSpec, list_presets, preset_expectations, resolve

    expected = preset_expectations()
    cpu_presets = {name for name, _ in list_presets() if name.endswith("-cpu")}
    assert cpu_presets >= {f"{m}-cpu" for m in [*CONFIGS, *PRESET_FAMILIES]}
    # Every CPU preset carries its 8-minute bench-methods figure: a new one without it fails here.
    # distill-cpu has none: its figure depends on the teacher the user names (method.teacher has no default). The
    # temporal methods train on video, which has no labeled CIFAR-10 eval split to score (docs/methods.md).
    temporal = {f"{m}-cpu" for m, config in CONFIGS.items() if config.frames_per_sample}
    assert set(expected) == (cpu_presets - temporal - {"distill-cpu"}) | {"quickstart"}
    for name, e in expected.items():
        assert 10 < e["knn_top1"] < 100 and 0 < e["tolerance"] <= 5, name
        assert "CPU" in e["measured_on"] and e["command"].startswith("make bench-"), name
        resolve(PretrainSpec, preset=name)  # the [preset.expected] table is not a spec key
    rows = json.loads(sslcli_run("presets", "--json").stdout)
    assert rows["simclr-cpu"]["expected"]["knn_top1"] == expected["simclr-cpu"]["knn_top1"]
    assert rows["simclr-cifar10"]["expected"] is None  # GPU presets: not measured here
    listed = sslcli_run("presets").stdout
    assert "expect kNN" in listed
    # A CPU preset without a figure (one a user adds to presets/) says so; a GPU preset says nothing.
    from sslcli.commands import presets

    lines = presets.format_text({"mine-cpu": {"description": "d", "expected": None},
                                 "mine-cifar10": {"description": "d", "expected": None}}).splitlines()
    assert lines[0].endswith("[kNN not measured yet]") and lines[1].endswith("  d")
    # The quickstart trains for a budget: its figure says the epochs it was measured over.
    quickstart = next(line for line in listed.splitlines() if line.startswith("quickstart "))
    assert quickstart.endswith(f"after {expected['quickstart']['epochs']} epochs]")
