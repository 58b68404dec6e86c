"""make bench-presets: run every CPU preset for its own schedule and check it reaches its expected kNN top-1.

Each preset that carries `[preset.expected]` (the kNN top-1 its schedule reached when it was measured, the
tolerance in points, where and how) is pretrained as written on ../shared/data/cifar10 and scored with
the bench-methods protocol: weighted kNN (k=20, t=0.07), a class-balanced 10,000-image bank from the train
split, the whole test split. Prints ours vs expected side by side (and the ratio), then one JSON line;
exits 1 when a preset misses its expected value by more than its tolerance. One process per preset.

An expected figure belongs to a device: `device = "cuda"` in `[preset.expected]` marks one measured on a GPU
(default "cpu"), and `budget = "5m"` one measured for a time budget instead of the preset's epochs. By default
the presets whose figure belongs to this machine's device run. `--budget 5m --presets A,B` measures presets at
that budget whether or not they carry a figure (how a GPU figure is taken before it is written down): a row
without an expected figure prints "-" and counts neither way.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from bench.common import peak_rss_mb, run_phase
from bench.methods import DATA, _knn


def _spec(preset: str, out: Path, budget: str | None = None, device: str = "auto"):
    from sslcli.spec import PretrainSpec, preset_expectations, resolve

    # The online kNN is a monitor; the check below scores the encoder itself, so the run skips it.
    sets = ["monitor.knn_every=0", "monitor.report=false", f"train.device={device}"]
    options = {"data.path": str(DATA), "out": str(out)}
    expected = preset_expectations().get(preset, {})
    budget = budget or expected.get("budget")
    if budget:
        # A figure measured for a time budget (a GPU preset's) is checked for the same budget, as the CLI's
        # --budget sets it (an option: above the preset's epochs).
        options["train.budget"] = budget
    elif expected.get("epochs") is not None:
        # A preset with a time budget (the quickstart) names the epochs its figure was measured with: trained
        # for them, the check does not depend on how fast this machine is.
        sets.append(f"train.epochs={expected['epochs']}")
    return resolve(PretrainSpec, preset=preset, options=options, sets=sets)


def expected_device(want: dict) -> str:
    return str(want.get("device", "cpu"))


def presets_for(expected: dict[str, dict], kind: str) -> list[str]:
    """The presets whose expected figure was measured on this kind of device ("cpu" or "cuda")."""
    return [name for name, want in expected.items() if expected_device(want) == kind]


def phase_preset(args: argparse.Namespace) -> dict:
    from sslcli.commands import pretrain

    summary = pretrain.run(_spec(args.preset, Path(args.workdir) / args.preset, args.budget, args.device))
    row = {"preset": args.preset, "epochs": summary["epochs"], "images_per_s": summary["images_per_s"],
           "pretrain_s": summary["wall_s"]}
    row.update(_knn(Path(summary["encoder"])))
    row["peak_rss_mb"] = peak_rss_mb()
    return row


def main() -> None:
    from sslcli.spec import preset_expectations

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--phase", choices=["all", "preset"], default="all")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--presets", default=None, help="comma-separated presets to run (default: those with an "
                        "expected figure for this device)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    parser.add_argument("--budget", default=None, help="train each preset for this time budget (e.g. 5m) instead "
                        "of its expected figure's schedule")
    parser.add_argument("--workdir", default=f"runs/bench-presets-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.phase == "preset":
        print(json.dumps(phase_preset(args)))
        return
    expected = preset_expectations()
    kind = args.device.split(":")[0]
    names = args.presets.split(",") if args.presets else presets_for(expected, kind)
    if not names:
        raise SystemExit(f"no preset carries an expected figure for {kind}: name them with --presets (and --budget)")
    for name in names:
        want = expected.get(name)
        if want is None and not args.budget:
            raise SystemExit(f"{name} carries no expected figure: give --budget to measure it")
        if want is not None and expected_device(want) != kind and not args.budget:
            raise SystemExit(f"{name}'s expected figure was measured on {expected_device(want)}, not {kind}")
    rows = []
    print(f"{'preset':<22} {'kNN top-1':>10} {'expected':>9} {'ratio':>6} {'tolerance':>10} {'ok':>3} "
          f"{'epochs':>7} {'images/s':>9} {'minutes':>8}")
    phase_args = ["--workdir", args.workdir, "--device", args.device, *(["--budget", args.budget] if args.budget else [])]
    for name in names:
        row = run_phase("bench.presets", "preset", ["--preset", name, *phase_args])
        want = expected.get(name)
        # A figure is checked only where it was measured: on its device, at its own budget or schedule.
        comparable = want is not None and expected_device(want) == kind and args.budget in (None, want.get("budget"))
        if comparable:
            row["expected_knn_top1"] = want["knn_top1"] / 100
            row["tolerance"] = want["tolerance"] / 100
            row["ok"] = abs(row["knn_top1"] - row["expected_knn_top1"]) <= row["tolerance"]
            columns = (f"{want['knn_top1']:>8.2f}% {row['knn_top1'] / row['expected_knn_top1']:>6.3f} "
                       f"{want['tolerance']:>9.1f}pt {'yes' if row['ok'] else 'NO':>3}")
        else:
            row["ok"] = None
            columns = f"{'-':>9} {'-':>6} {'-':>10} {'-':>3}"
        rows.append(row)
        print(f"{name:<22} {100 * row['knn_top1']:>9.2f}% {columns} {row['epochs']:>7} {row['images_per_s']:>9.1f} "
              f"{row['pretrain_s'] / 60:>8.1f}", flush=True)
    checked = [r for r in rows if r["ok"] is not None]
    passed = sum(r["ok"] for r in checked)
    print(f"{passed}/{len(checked)} presets within tolerance of their expected kNN top-1 "
          f"({args.device}: {platform.processor() or platform.machine()})")
    print(json.dumps({"rows": rows, "passed": passed, "presets": len(checked), "device": args.device,
                      "budget": args.budget}, sort_keys=True))
    sys.exit(0 if passed == len(checked) else 1)


if __name__ == "__main__":
    main()
