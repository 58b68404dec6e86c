"""bench/gpu_smoke.py, the GPU issue's smoke matrix, run on the CPU so it cannot rot between GPU sessions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu_smoke import cifar10_presets, steady_rate

ROOT = Path(__file__).resolve().parents[1]


def _smoke(data: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.gpu_smoke", "--data", str(data), "--device", "cpu", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_the_matrix_is_every_cifar10_preset():
    presets = cifar10_presets()
    assert {"simclr-cifar10", "simclr-cifar10-fast", "dino-cifar10", "mae-cifar10", "distill-cifar10"} <= set(presets)
    assert all("cifar10" in name for name in presets)


def test_steady_rate_leaves_out_the_first_interval():
    records = [{"images_per_s": 10.0}, {"loss": 1.0}, {"images_per_s": 100.0}, {"images_per_s": 120.0},
               {"images_per_s": 110.0}]
    assert steady_rate(records) == 110.0
    assert steady_rate([{"loss": 1.0}]) is None


@pytest.mark.slow
def test_smoke_rows_for_a_working_and_a_stand_in_preset(cifar_tiny):
    # distill-cifar10 names no teacher: the matrix runs it with its stand-in (a random ResNet-18 teacher).
    result = _smoke(cifar_tiny, "--steps", "2", "--batch-size", "16", "--label-fraction", "1.0",
                    "--presets", "simclr-cifar10,distill-cifar10")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["failed"] == []
    assert [row["preset"] for row in summary["rows"]] == ["simclr-cifar10", "distill-cifar10"]
    for row in summary["rows"]:
        assert row["images_per_s"] > 0
        assert 0.0 <= row["knn_top1"] <= 1.0 and 0.0 <= row["linear_top1"] <= 1.0


def test_a_failing_preset_is_one_line_and_exit_1(cifar_tiny):
    result = _smoke(cifar_tiny, "--steps", "2", "--presets", "simclr-cifar10")  # batch 512 > the 100 images
    assert result.returncode == 1
    line = next(line for line in result.stdout.splitlines() if line.startswith("simclr-cifar10"))
    assert "FAILED" in line and "batch size" in line
    assert json.loads(result.stdout.strip().splitlines()[-1])["failed"] == ["simclr-cifar10"]


def test_bench_presets_checks_a_gpu_figure_at_its_own_budget(monkeypatch, tmp_path):
    import sslcli.spec
    from bench.presets import _spec

    figure = {"knn_top1": 85.0, "tolerance": 2.0, "device": "cuda", "budget": "5m"}
    monkeypatch.setattr(sslcli.spec, "preset_expectations", lambda: {"simclr-cifar10-fast": figure})
    spec = _spec("simclr-cifar10-fast", tmp_path, device="cuda")
    assert spec.train.budget == 300 and spec.train.device == "cuda"
    assert _spec("simclr-cifar10-fast", tmp_path, budget="3m").train.budget == 180  # --budget measures another
    monkeypatch.setattr(sslcli.spec, "preset_expectations", lambda: {})
    assert _spec("simclr-cifar10-fast", tmp_path).train.budget is None  # no figure, no budget: its own epochs


def test_bench_presets_runs_the_figures_of_this_device():
    from bench.presets import presets_for

    expected = {"quickstart": {"knn_top1": 46.9}, "simclr-cifar10-fast": {"knn_top1": 85.0, "device": "cuda"}}
    assert presets_for(expected, "cpu") == ["quickstart"]
    assert presets_for(expected, "cuda") == ["simclr-cifar10-fast"]


def test_bench_presets_refuses_a_preset_without_a_figure_unless_given_a_budget():
    result = subprocess.run([sys.executable, "-m", "bench.presets", "--device", "cpu", "--presets", "simclr-cifar10"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "carries no expected figure: give --budget" in result.stderr
