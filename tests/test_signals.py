"""A signal stops pretraining at a step boundary with a checkpoint and the conventional exit code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
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
