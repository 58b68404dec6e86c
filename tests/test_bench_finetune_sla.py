"""bench-finetune's SLA rows: measured against plain fine-tuning with SLA's own recipe, never the bench's other one."""

from __future__ import annotations

from bench import finetune as bench_finetune


def summary(top1: float, **extra) -> dict:
    return {"top1": top1, "wall_s": 1.0, **extra}


def test_sla_rows_are_measured_against_plain_fine_tuning_with_the_same_recipe(capsys):
    rows = {"plain_sgd_random_init": summary(0.40), "sla_random_init": summary(0.45),
            "sla_sd_random_init": summary(0.41, aggregated_top1=0.43),
            "plain_sgd_pretrained": summary(0.50), "sla_pretrained": summary(0.49)}
    bench_finetune.print_sla_rows(rows)
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert lines["sla_random_init"].split()[1:3] == ["45.00%", "+5.00"]
    assert lines["sla_pretrained"].split()[1:3] == ["49.00%", "-1.00"]  # against plain_sgd_pretrained, not 0.40
    assert "joint head aggregated 43.00%" in lines["sla_sd_random_init"]
    assert "optim.name=sgd" in next(line for line in lines.values() if line.startswith("SLA recipe"))


def test_the_sla_recipe_is_the_papers_and_sla_rows_run_with_it(monkeypatch, tmp_path):
    assert {"optim.name=sgd", "augment.label_smoothing=0"} <= set(bench_finetune.SLA_SETS)
    calls = {}

    def fake_run(encoder, data, out, fraction, sets, extra=None):
        calls[out.name] = (encoder.name, sets, extra or {})
        return summary(0.5)

    monkeypatch.setattr(bench_finetune, "finetune_run", fake_run)
    args = type("Args", (), {"data": tmp_path, "out": tmp_path, "label_fraction": 0.1, "finetune_set": ["x=1"]})
    rows = bench_finetune.sla_rows({"random_init": tmp_path / "r", "pretrained": tmp_path / "p"}, args)
    assert set(rows) == {"plain_sgd_random_init", "sla_random_init", "sla_sd_random_init", "plain_sgd_pretrained",
                         "sla_pretrained"}
    # Every row, plain or SLA, on the same recipe (then the user's overrides); only SLA's switches differ.
    assert all(sets == [*bench_finetune.SLA_SETS, "x=1"] for _, sets, _ in calls.values())
    assert calls["finetune-plain_sgd_pretrained"] == ("p", [*bench_finetune.SLA_SETS, "x=1"], {})
    assert calls["finetune-sla_sd_random_init"][2] == {"sla.enabled": True, "sla.self_distill": True}
