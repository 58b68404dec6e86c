"""A signal stops pretraining at a step boundary with a checkpoint and the conventional exit code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from sslcli import checkpoint


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_checkpoints_and_exits(cifar_small: Path, tmp_path: Path, signum: int, code: int):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "sslcli", "pretrain", str(cifar_small), "--preset", "quickstart",
            "--epochs", "50", "--batch-size", "32", "--out", str(run), "--set", "train.log_every=1",
            "--set", "method.proj_hidden_dim=64"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items() if k != "SSLCLI_DEBUG"})
    deadline = time.monotonic() + 120
    for line in proc.stderr:  # wait until training is under way
        if line.startswith("step 2/") or time.monotonic() > deadline:
            break
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("warning: stopped by " + signal.Signals(signum).name) and "/600" in last
    with safe_open(str(run / "encoder.safetensors"), "pt") as f:
        stopped_at = int(f.metadata()["step"])
    assert 2 <= stopped_at < 600
    states = checkpoint.complete_states(run / "checkpoints")
    assert states and states[-1].name == f"state-{stopped_at:09d}.safetensors"


def test_sigterm_mid_epoch_gives_143_and_an_exact_resume(cifar_small: Path, tmp_path: Path):
    from safetensors.torch import load_file

    def args(run: Path) -> list[str]:
        return [sys.executable, "-m", "sslcli", "pretrain", str(cifar_small), "--method", "simclr", "--out", str(run),
                "--set", "encoder.name=resnet10t", "--set", "encoder.small_stem=false", "--set", "data.max_images=384",
                "--batch-size", "32", "--epochs", "2", "--set", "method.proj_hidden_dim=64", "--set",
                "data.num_workers=0", "--set", "train.log_every=1"]

    env = {k: v for k, v in os.environ.items() if k != "SSLCLI_DEBUG"}
    whole = subprocess.run(args(tmp_path / "whole"), capture_output=True, text=True, env=env)
    assert whole.returncode == 0, whole.stderr
    proc = subprocess.Popen(args(tmp_path / "split"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    for line in proc.stderr:
        if line.startswith("step 2/24"):
            break
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "--resume auto" in stderr.strip().splitlines()[-1]
    stopped = int(checkpoint.complete_states(tmp_path / "split" / "checkpoints")[-1].stem.split("-")[1])
    assert 2 <= stopped < 12  # mid-epoch (12 steps per epoch)
    resumed = subprocess.run(args(tmp_path / "split") + ["--resume", "auto"], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(str(tmp_path / "whole" / "encoder.safetensors"))
    b = load_file(str(tmp_path / "split" / "encoder.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_during_finetune_saves_the_classifier_and_says_so(encoder_file: Path, cifar_small: Path,
                                                                   tmp_path: Path):
    out = tmp_path / "ft"
    args = [sys.executable, "-m", "sslcli", "finetune", str(encoder_file), "--data", str(cifar_small), "--epochs", "50",
            "--batch-size", "32", "--out", str(out), "--set", "train.log_every=1", "--set", "data.num_workers=0"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items() if k != "SSLCLI_DEBUG"})
    for line in proc.stderr:  # wait until training is under way
        if line.startswith("step 2/"):
            break
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("warning: stopped by SIGTERM") and str(out / "classifier.safetensors") in last
    with safe_open(str(out / "classifier.safetensors"), "pt") as f:  # what the message says was kept, is there
        stopped_at = int(f.metadata()["step"])
    assert 2 <= stopped_at < 50 * (400 // 32) and f"at step {stopped_at}/" in last
