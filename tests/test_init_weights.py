"""Starting from weights sslcli did not train (--init, probe --baseline pretrained) and distilling a frozen teacher.

Offline throughout: HF_HUB_OFFLINE=1 and an empty Hugging Face cache, the weights built on disk here (a timm
model in a local-dir folder, a torchvision ResNet's state dict as safetensors)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sslcli import checkpoint, weights
from sslcli.errors import RunError, UsageError
from tests.test_cli import sslcli_run


@pytest.fixture(autouse=True)
def _offline_hub(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf-empty"))


def _plain(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


@pytest.fixture(scope="module")
def local_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A timm local-dir folder: resnet10t's weights and a config.json whose pretrained_cfg has its own size
    and normalisation."""
    import timm

    torch.manual_seed(3)
    folder = tmp_path_factory.mktemp("local-dir")
    save_file(_plain(timm.create_model("resnet10t", num_classes=0).state_dict()), folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({
        "architecture": "resnet10t", "num_classes": 0,
        "pretrained_cfg": {"input_size": [3, 24, 24], "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3],
                           "interpolation": "bicubic", "classifier": "fc"}}))
    return folder


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torchvision resnet18 state dict (with its fc classifier) as safetensors."""
    import torchvision

    torch.manual_seed(4)
    path = tmp_path_factory.mktemp("tv") / "resnet18-torchvision.safetensors"
    save_file(_plain(torchvision.models.resnet18().state_dict()), path)
    return path


def _same_weights(model: torch.nn.Module, saved: Path) -> None:
    from safetensors.torch import load_file

    expected = load_file(saved)
    state = model.state_dict()
    for key, value in state.items():
        assert torch.equal(value, expected[key]), key  # bit for bit


def test_local_dir_weights_load_bit_for_bit_with_their_size_and_normalisation(local_dir: Path):
    source = weights.locate(f"local-dir:{local_dir}")
    model, info = weights.build_from(source, "resnet18", None)
    _same_weights(model, local_dir / "model.safetensors")
    assert (info.name, info.image_size, info.small_stem) == ("resnet10t", 24, False)
    assert info.mean == (0.5, 0.4, 0.3) and info.std == (0.2, 0.25, 0.3)
    assert info.init["sha256"] == source.sha256 and info.init["kind"] == "local-dir"


def test_a_torchvision_resnet_file_loads_into_timm_without_its_classifier(torchvision_file: Path):
    source = weights.locate(str(torchvision_file))
    model, info = weights.build_from(source, "resnet18", 32)  # 32 px would turn the small stem on without --init
    assert info.small_stem is False and model.conv1.kernel_size == (7, 7)
    from safetensors.torch import load_file

    expected = load_file(torchvision_file)
    assert set(model.state_dict()) == set(expected) - {"fc.weight", "fc.bias"}
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_a_file_of_another_architecture_is_one_line_naming_the_tensor(torchvision_file: Path, tmp_path: Path):
    source = weights.locate(str(torchvision_file))
    with pytest.raises(UsageError, match="does not fit a resnet34 encoder: the file has no tensor layer1.2"):
        weights.build_from(source, "resnet34", 32)
    from safetensors.torch import load_file

    state = load_file(torchvision_file)
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    save_file(state, tmp_path / "bad.safetensors")
    bad = weights.locate(str(tmp_path / "bad.safetensors"))
    with pytest.raises(UsageError, match=r"tensor layer1.0.conv1.weight is \[64, 64, 1, 1\] in the file, "
                                         r"\[64, 64, 3, 3\] in the encoder"):
        weights.build_from(bad, "resnet18", 32)


def test_hub_weights_not_cached_and_offline_are_one_line_and_exit_1(cifar_tiny: Path, tmp_path: Path):
    with pytest.raises(RunError, match="not in the local cache and the Hugging Face Hub is unreachable"):
        weights.locate("pretrained", "resnet18.a1_in1k")
    proc = sslcli_run("pretrain", str(cifar_tiny), "--encoder", "resnet18.a1_in1k", "--init", "pretrained",
                      "--epochs", "1", "--out", str(tmp_path / "run"))
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pass --init local-dir:DIR" in lines[0] and "Traceback" not in proc.stderr
    # A malformed reference is bad input: exit 2 before anything loads.
    proc = sslcli_run("pretrain", str(cifar_tiny), "--init", "hf-hub:no-slash", "--dry-run")
    assert proc.returncode == 2 and "hf-hub:ORG/NAME" in proc.stderr


def test_pretrain_from_local_dir_records_it_and_probe_scores_the_start(local_dir: Path, cifar_tiny: Path,
                                                                       tmp_path: Path):
    run = tmp_path / "run"
    proc = sslcli_run("pretrain", str(cifar_tiny), "--init", f"local-dir:{local_dir}", "--epochs", "1",
                      "--batch-size", "32", "--out", str(run), "--set", "monitor.report=false",
                      "--set", "data.num_workers=0", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    sha = weights.sha256_of(local_dir / "model.safetensors")
    assert summary["init"]["sha256"] == sha and "starting weights" in proc.stderr
    spec = json.loads((run / "spec.json").read_text())
    assert spec["encoder"]["init"] == f"local-dir:{local_dir}" and spec["encoder"]["init_sha256"] == sha
    assert spec["data"]["image_size"] == 24  # the weights' input size, not DATA's 32 px
    _, info, meta = checkpoint.load_encoder(run / "encoder.safetensors")
    assert json.loads(meta["init"])["sha256"] == sha and info.mean == (0.5, 0.4, 0.3)
    state = json.loads(next((run / "checkpoints").glob("state-*.json")).read_text())
    assert state["fingerprint_parts"]["init"] == {"ref": f"local-dir:{local_dir}", "sha256": sha}
    shown = sslcli_run("inspect", str(run))
    assert f"started from: local-dir:{local_dir}" in shown.stdout and sha in shown.stdout

    proc = sslcli_run("probe", str(run), "--data", str(cifar_tiny), "--baseline", "pretrained", "--set",
                      "probe.knn_k=[5]", "--set", "data.num_workers=0", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["baseline"] is not None and result["start"]["sha256"] == sha
    assert set(result["start"]["knn"]) == {"k5"} and 0 <= result["start"]["linear"]["top1"] <= 1
    # The starting weights are what the probe scored: the loaded start equals the saved folder bit for bit.
    from sslcli.commands.probe import starting_backbone

    start, _ = starting_backbone("pretrained", info, run / "encoder.safetensors")
    _same_weights(start, local_dir / "model.safetensors")


def test_probe_baseline_pretrained_without_a_recorded_init_is_one_line(encoder_file: Path, cifar_tiny: Path):
    proc = sslcli_run("probe", str(encoder_file), "--data", str(cifar_tiny), "--baseline", "pretrained")
    assert proc.returncode == 2 and "records no starting weights" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- distillation


def _distill(teacher: str, steps: int, seed: int = 0):
    from sslcli.augment import Augmenter
    from sslcli.encoders import build_encoder
    from sslcli.methods import method_class
    from sslcli.methods.base import Budget
    from sslcli.methods.distill.config import DistillConfig
    from sslcli.pretraining import build_optimizer
    from sslcli.spec import OptimConfig
    from sslcli.views import ViewConfig

    torch.manual_seed(seed)
    encoder, info = build_encoder("resnet10t", 16, small_stem=False)
    cfg = DistillConfig(teacher=teacher, proj_hidden_dim=64)
    model = method_class("distill")(cfg, encoder, info.feature_dim, Budget(steps, steps, 0))
    augment = Augmenter(model.views(ViewConfig(size=16)), info.mean, info.std, torch.Generator().manual_seed(0))
    optimizer = build_optimizer(model, OptimConfig(name="adamw", weight_decay=0.0), 3e-3)
    x = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    model.train()
    cosines = []
    for step in range(steps):
        out = model(augment(x), step)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        cosines.append(float(out.logs["teacher_cos"]))
    return model, cosines


def test_the_student_approaches_the_teacher_which_stays_frozen_in_eval_mode(encoder_file: Path):
    before = {k: v.clone() for k, v in checkpoint.load_encoder(encoder_file)[0].state_dict().items()}
    model, cosines = _distill(str(encoder_file), 30)
    assert sum(cosines[-5:]) / 5 > sum(cosines[:5]) / 5 + 0.2, cosines  # the student's embeddings approach
    assert not model.teacher.training and all(not p.requires_grad for p in model.teacher.parameters())
    for key, value in model.teacher.state_dict().items():  # batch-norm statistics included
        assert torch.equal(value, before[key]), key
    assert model.export_encoder() is model.encoder  # the student is what a run saves


def test_the_negative_control_a_random_teacher_is_matched_as_readily():
    """random:NAME (a seeded random init) is a teacher like any other to the loss: the student approaches it as
    it approaches a trained one, so a falling distillation loss says nothing of what the teacher knows (the kNN
    half of the control, a random teacher's student no better than its own init, is the slow test below)."""
    model, cosines = _distill("random:resnet10t", 30)
    assert sum(cosines[-5:]) / 5 > sum(cosines[:5]) / 5 + 0.2, cosines
    assert model.teacher_info.image_size == 0  # no input size of its own: it sees the student's views as they are
    assert not model.teacher.training and all(not p.requires_grad for p in model.teacher.parameters())
    again, _ = _distill("random:resnet10t", 1)  # seeded by the run's seed: the same control teacher every time
    for key, value in again.teacher.state_dict().items():
        assert torch.equal(value, model.teacher.state_dict()[key]), key


def test_distill_without_a_teacher_is_one_line(cifar_tiny: Path, tmp_path: Path):
    proc = sslcli_run("pretrain", str(cifar_tiny), "--method", "distill", "--epochs", "1", "-b", "32", "--out",
                      str(tmp_path / "run"))
    assert proc.returncode == 2 and "needs a teacher" in proc.stderr


@pytest.mark.slow
def test_distilling_a_random_teacher_teaches_nothing_a_trained_one_does(cifar_small: Path, tmp_path: Path):
    """The negative control: a student of a random-init teacher is no better by kNN than its own random init,
    while one of a teacher trained here (a short SimCLR run) gains on it."""
    common = ["--epochs", "3", "--batch-size", "64", "--set", "data.num_workers=0", "--set", "data.image_size=32",
              "--set", "encoder.small_stem=false", "--set", "monitor.report=false", "--set", "optim.warmup_epochs=0",
              "--json"]
    teacher = sslcli_run("pretrain", str(cifar_small), "--encoder", "resnet18", "--out", str(tmp_path / "t"),
                         *common[:1], "6", *common[2:])
    assert teacher.returncode == 0, teacher.stderr
    gains = {}
    for name, ref in (("trained", str(tmp_path / "t" / "encoder.safetensors")), ("random", "random:resnet18")):
        proc = sslcli_run("pretrain", str(cifar_small), "--method", "distill", "--encoder", "resnet10t", "--set",
                          f"method.teacher={ref}", "--set", "method.proj_hidden_dim=256", "--out",
                          str(tmp_path / name), *common)
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        gains[name] = summary["knn_top1"] - summary["random_init_knn_top1"]
    assert gains["trained"] > gains["random"], gains
