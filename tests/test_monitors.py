"""Label-free monitors: known values, and collapse flagged only when it happens."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sslcli import monitors


def spread(n: int = 256, d: int = 128, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def collapsed(n: int = 256, d: int = 128, seed: int = 0) -> torch.Tensor:
    """Every image at (almost) the same point: one vector plus noise a thousand times smaller."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, d, generator=g) + 1e-3 * torch.randn(n, d, generator=g)


def test_effective_rank_of_a_non_finite_matrix_is_nan_not_an_error():
    """A diverged step's embeddings (an lr of 1e19 gives NaN): the SVD would fail to converge and raise."""
    for bad in (float("nan"), float("inf")):
        z = torch.randn(16, 8)
        z[3, 2] = bad
        assert math.isnan(monitors.effective_rank(z).item())
    assert monitors.effective_rank(torch.eye(8)).item() == pytest.approx(8, rel=1e-3), "finite rows unaffected"


def test_effective_rank_of_known_matrices():
    # k orthonormal directions with equal weight: the normalised singular values are uniform over k -> rank k.
    q, _ = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(1)))
    for k in (1, 3, 10):
        z = q[:, :k] @ q[:, :k].T * 5.0  # rank k, k equal singular values
        assert monitors.effective_rank(z).item() == pytest.approx(k, rel=1e-3)
    # Unequal singular values (4, 1): exp(entropy of (0.8, 0.2)).
    z = torch.diag(torch.tensor([4.0, 1.0, 0.0]))
    assert monitors.effective_rank(z).item() == pytest.approx(math.exp(-(0.8 * math.log(0.8) + 0.2 * math.log(0.2))),
                                                              rel=1e-4)


def test_alignment_and_uniformity_known_values():
    z = spread(8, 16)
    assert monitors.alignment(z, 3 * z).item() == pytest.approx(0.0, abs=1e-6)  # same direction: aligned
    assert monitors.alignment(z, -z).item() == pytest.approx(4.0, rel=1e-5)  # opposite points
    same = torch.ones(10, 4)
    assert monitors.uniformity(same).item() == pytest.approx(0.0, abs=1e-6)
    # Two antipodal points: the one pair is at squared distance 4 -> log exp(-8) = -8.
    assert monitors.uniformity(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])).item() == pytest.approx(-8.0, rel=1e-5)


def test_normalised_std_is_one_when_spread_and_zero_when_collapsed():
    assert monitors.normalised_std(spread(4096, 64)).item() == pytest.approx(1.0, abs=0.03)
    assert monitors.normalised_std(collapsed()).item() < 0.01


def test_collapse_is_flagged_for_collapsed_embeddings_and_not_for_spread_ones():
    healthy = {k: float(v) for k, v in monitors.measure((spread(), spread(seed=1) * 0.1 + spread()), "z").items()}
    assert monitors.collapse_signs(healthy) == [], healthy
    sick = {k: float(v) for k, v in monitors.measure((collapsed(), collapsed(seed=1)), "z").items()}
    signs = monitors.collapse_signs(sick)
    assert any("z_std" in s for s in signs) and any("z_effective_rank" in s for s in signs)
    assert any("z_uniformity" in s for s in signs)
    # Dimensional collapse alone: well spread along one direction only.
    line = torch.randn(256, 1, generator=torch.Generator().manual_seed(2)) * torch.randn(1, 128)
    values = {k: float(v) for k, v in monitors.measure((line,), "h").items()}
    assert values["h_effective_rank"] < 2 and any("h_effective_rank" in s for s in monitors.collapse_signs(values))


def test_measure_returns_tensors_without_alignment_for_one_view():
    out = monitors.measure((spread(),), "h")
    assert set(out) == {"h_std", "h_effective_rank", "h_uniformity"}
    assert all(isinstance(v, torch.Tensor) for v in out.values())


def test_collapse_warning_is_printed_once_per_change_and_logged(tmp_path, capsys):
    from sslcli import console
    from sslcli.monitors import CollapseWatch

    metrics = console.MetricsLog(tmp_path / "metrics.jsonl")
    health = CollapseWatch(metrics)
    healthy = {"step": 1, "loss": 1.0, "features_std": 0.9, "features_effective_rank": 40.0}
    sick = {"step": 2, "loss": 1.0, "features_std": 0.01, "features_effective_rank": 1.2}
    for record in (healthy, sick, {**sick, "step": 3}, healthy):
        health.check(record)
    metrics.close()
    err = capsys.readouterr().err
    assert err.count("look collapsed") == 1 and "features_std 0.01 < 0.1" in err
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events] == [2, 3] and all(e["event"] == "collapse" for e in events)
    assert health.warnings == 1
