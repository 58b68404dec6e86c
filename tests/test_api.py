"""The Python API (sslcli.pretrain, probe, embed, load_encoder, ...): the CLI's specs and results, typed errors,
Ctrl-C as KeyboardInterrupt after a checkpoint, and an `import sslcli` without torch."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import sslcli
from sslcli import command_specs
from sslcli.spec import dump
from tests.test_cli import sslcli_run

TINY = ["encoder.name=resnet10t", "encoder.small_stem=false", "train.batch_size=25", "train.epochs=2",
        "train.log_every=1", "method.proj_hidden_dim=64", "data.num_workers=0", "train.seed=3",
        "optim.warmup_epochs=1"]
# What differs between two runs of one spec by its nature: the clock, and where each wrote.
TIMING = {"wall_s", "images_per_s", "command_s", "run_dir", "encoder", "report"}


def typed(items: list[str]) -> dict[str, object]:
    """--set items as the API's keyword overrides."""
    return {key: json.loads(value) if value[0].isdigit() else value for key, value in (i.split("=") for i in items)}


def test_import_sslcli_is_light_and_exports_the_errors():
    code = ("import json, sys, sslcli; sslcli.UsageError; "
            "print(json.dumps(sorted(m for m in ('torch', 'torchvision', 'timm', 'sslcli.api') if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert json.loads(proc.stdout) == [], proc.stderr
    assert sslcli.UsageError is sslcli.errors.UsageError and issubclass(sslcli.UsageError, sslcli.SslcliError)
    assert callable(sslcli.pretrain) and sslcli.PretrainResult.__module__ == "sslcli.api"


def test_api_and_cli_build_the_same_spec_with_the_same_precedence(cifar_tiny: Path, tmp_path: Path):
    # preset < arguments < overrides: the preset's epochs, then epochs=3, then train.epochs=1 wins.
    api = command_specs.pretrain_spec(cifar_tiny, preset="simclr-cpu", epochs=3, out=tmp_path / "r",
                                      overrides={"train": {"epochs": 1}, "optim.base_lr": 0.5})
    cli = sslcli_run("pretrain", str(cifar_tiny), "--preset", "simclr-cpu", "--epochs", "3", "--out",
                     str(tmp_path / "r"), "--set", "train.epochs=1", "--set", "optim.base_lr=0.5", "--dry-run",
                     "--json")
    assert cli.returncode == 0, cli.stderr
    assert dump(api) == json.loads(cli.stdout)
    assert api.train.epochs == 1 and api.optim.base_lr == 0.5


def test_bad_input_raises_a_typed_error_instead_of_exiting(cifar_tiny: Path, tmp_path: Path):
    with pytest.raises(sslcli.UsageError, match="unknown method 'simclrr'"):
        sslcli.pretrain(cifar_tiny, method="simclrr", out=tmp_path / "r")
    with pytest.raises(sslcli.UsageError, match="unknown key 'train.epoch'"):
        sslcli.pretrain(cifar_tiny, out=tmp_path / "r", train__epoch=2)
    with pytest.raises(sslcli.UsageError, match="does not exist|not a"):
        sslcli.probe(tmp_path / "missing.safetensors", cifar_tiny)


@pytest.mark.slow
def test_pretrain_and_probe_match_the_cli_json(cifar_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    run = sslcli.pretrain(cifar_tiny, method="simclr", out=tmp_path / "api", **typed(TINY))
    assert [line for line in capsys.readouterr().err.splitlines() if not line.startswith("warning:")] == []  # quiet
    assert isinstance(run, sslcli.PretrainResult) and run.encoder == tmp_path / "api" / "encoder.safetensors"
    sets = [arg for item in TINY for arg in ("--set", item)]
    cli = sslcli_run("pretrain", str(cifar_tiny), "--method", "simclr", "--out", str(tmp_path / "cli"), *sets,
                     "--json")
    assert cli.returncode == 0, cli.stderr
    printed = json.loads(cli.stdout)
    mine = run.as_json()
    assert mine.keys() == printed.keys()
    # Two processes on one thread train bit for bit alike: every field but the clock's and the paths' is equal.
    assert {k: v for k, v in mine.items() if k not in TIMING} == {k: v for k, v in printed.items() if k not in TIMING}
    assert mine["steps"] == 8 and mine["final_loss"] == printed["final_loss"]
    spec_api = json.loads((tmp_path / "api" / "spec.json").read_text())
    spec_cli = json.loads((tmp_path / "cli" / "spec.json").read_text())
    assert spec_api.pop("out") != spec_cli.pop("out") and spec_api == spec_cli

    steps, losses = run.curve("loss")
    assert steps == list(range(1, 9)) and losses[-1] == pytest.approx(run.final_loss)
    assert run.curve("knn_top1")[0] == [0, 4, 8]

    scores = sslcli.probe(run.encoder, cifar_tiny, baseline=False, out=tmp_path / "api-probe.json")
    cli_probe = sslcli_run("probe", str(run.encoder), "--data", str(cifar_tiny), "--no-baseline", "--out",
                           str(tmp_path / "cli-probe.json"), "--json")
    assert cli_probe.returncode == 0, cli_probe.stderr
    printed, mine = json.loads(cli_probe.stdout), scores.as_json()
    assert mine["spec"].pop("out") != printed["spec"].pop("out")  # each its own file; the rest is one spec
    assert {k: v for k, v in mine.items() if k not in TIMING | {"seconds", "out"}} == \
        {k: v for k, v in printed.items() if k not in TIMING | {"seconds", "out"}}
    assert json.loads((tmp_path / "api-probe.json").read_text())["knn"] == printed["knn"]


def test_load_encoder_with_its_transform_gives_the_features_embed_writes(resnet10t_encoder: Path, cifar_tiny: Path,
                                                                        tmp_path: Path):
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    result = sslcli.embed(resnet10t_encoder, cifar_tiny / "test", tmp_path / "e.safetensors", device="cpu",
                          num_workers=0)
    assert isinstance(result, sslcli.EmbedResult)
    written = load_file(str(tmp_path / "e.safetensors"))["embeddings"]
    first = (tmp_path / "e.csv").read_text().splitlines()[1].split(",")[1]
    model = sslcli.load_encoder(resnet10t_encoder)
    assert not model.training and model.sslcli_info.image_size == 32
    with torch.no_grad():
        features = model(model.transform(Image.open(cifar_tiny / "test" / first)).unsqueeze(0))
    assert features.shape == (1, written.shape[1])
    assert torch.allclose(features[0], written[0], atol=1e-4)


def test_ctrl_c_stops_after_a_checkpoint_and_raises_keyboard_interrupt(cifar_tiny: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch):
    from sslcli import checkpoint, train

    real, calls = train._Loop.synchronous_step, {"n": 0}

    def step(*args, **kwargs):  # Ctrl-C during the second step, as a notebook's interrupt sends SIGINT
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(train._Loop, "synchronous_step", step)
    with pytest.raises(KeyboardInterrupt, match="--resume auto") as stopped:
        sslcli.pretrain(cifar_tiny, out=tmp_path / "run", monitor__knn_every=0, monitor__report=False,
                        **typed(TINY))
    assert isinstance(stopped.value.__cause__, sslcli.Interrupted)
    assert checkpoint.complete_states(tmp_path / "run" / "checkpoints")[-1].name == "state-000000002.safetensors"
    resumed = sslcli.pretrain(cifar_tiny, out=tmp_path / "run", resume="auto", monitor__knn_every=0,
                              monitor__report=False, **typed(TINY))
    assert resumed.resumed_from_step == 2 and resumed.steps == 8


# The page's blocks with the data path and the training length made tiny (docs/python-api.md says how).
PAGE_DATA = "../shared/data/cifar10"
PAGE_TINY = {"encoder.name": "resnet10t", "encoder.small_stem": False, "method.proj_hidden_dim": 64,
             "train.batch_size": 25, "train.log_every": 1, "data.num_workers": 0, "optim.warmup_epochs": 1}


def page_blocks(data: Path) -> list[str]:
    page = (Path(__file__).resolve().parents[1] / "docs" / "python-api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, re.S)
    code = "\n\x00\n".join(blocks)
    for old, new in {PAGE_DATA: str(data), "epochs=2": "epochs=1, **TINY", 'budget="3m"': "epochs=1, **TINY"}.items():
        assert old in code, f"docs/python-api.md no longer has {old}: update the substitutions and the page"
        code = code.replace(old, new)
    return code.split("\n\x00\n")


@pytest.mark.slow
def test_the_python_api_page_runs_as_written(cifar_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"TINY": PAGE_TINY}
    blocks = page_blocks(cifar_tiny)
    assert len(blocks) == 5
    for block in blocks:
        exec(compile(block, "docs/python-api.md", "exec"), namespace)
    run = namespace["run"]
    assert isinstance(run, sslcli.PretrainResult) and run.run_dir.resolve() == (tmp_path / "runs/notebook").resolve()
    assert run.steps == 100 // 25 and run.encoder.is_file() and (tmp_path / "runs/nb/encoder.safetensors").is_file()
    steps, losses = run.curve("loss")
    assert steps == list(range(1, run.steps + 1)) and len(losses) == run.steps
    scores = namespace["scores"].as_json()
    assert scores["n_train"] == 20 and scores["n_eval"] == 50  # label_fraction=0.2 of 10 per class
    assert 0 <= scores["linear"]["top1"] <= 1 and "k20" in scores["knn"]
    left, right = namespace["left"], namespace["right"]
    assert [list(line.get_xdata()) for line in left.get_lines()] == [steps]
    assert [list(line.get_ydata()) for line in right.get_lines()] == [run.curve("knn_top1")[1]]
    encoder = namespace["encoder"]
    assert namespace["features"].shape == (1, encoder.sslcli_info.feature_dim)
    import torch

    with torch.no_grad():
        assert namespace["classifier"](namespace["x"]).shape == (1, 10)
