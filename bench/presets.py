"""make bench-presets: run every CPU preset for its own schedule and check it reaches its expected kNN top-1.

Each preset that carries `[preset.expected]` (the kNN top-1 its schedule reached when it was measured, the
tolerance in points, where and how) is pretrained as written on ../shared/data/cifar10 and scored with
the bench-methods protocol: weighted kNN (k=20, t=0.07), a class-balanced 10,000-image bank from the train
split, the whole test split. Prints ours vs expected side by side (and the ratio), then one JSON line;
exits 1 when a preset misses its expected value by more than its tolerance. One process per preset.
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


def _spec(preset: str, out: Path):
    from sslcli.spec import PretrainSpec, preset_expectations, resolve

    # The online kNN is a monitor; the check below scores the encoder itself, so the run skips it.
    sets = ["monitor.knn_every=0", "monitor.report=false"]
    # A preset with a time budget (the quickstart) names the epochs its figure was measured with: trained
    # for them, the check does not depend on how fast this machine is.
    epochs = preset_expectations().get(preset, {}).get("epochs")
    if epochs is not None:
        sets.append(f"train.epochs={epochs}")
    return resolve(PretrainSpec, preset=preset, options={"data.path": str(DATA), "out": str(out)}, sets=sets)


def phase_preset(args: argparse.Namespace) -> dict:
    from sslcli.commands import pretrain

    summary = pretrain.run(_spec(args.preset, Path(args.workdir) / args.preset))
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
    expected = preset_expectations()
    parser.add_argument("--presets", default=",".join(expected), help="comma-separated subset to run")
    parser.add_argument("--workdir", default=f"runs/bench-presets-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()
    if args.phase == "preset":
        print(json.dumps(phase_preset(args)))
        return
    rows = []
    print(f"{'preset':<18} {'kNN top-1':>10} {'expected':>9} {'ratio':>6} {'tolerance':>10} {'ok':>3} "
          f"{'epochs':>7} {'images/s':>9} {'minutes':>8}")
    for name in args.presets.split(","):
        row = run_phase("bench.presets", "preset", ["--preset", name, "--workdir", args.workdir])
        want = expected[name]
        row["expected_knn_top1"] = want["knn_top1"] / 100
        row["tolerance"] = want["tolerance"] / 100
        row["ok"] = abs(row["knn_top1"] - row["expected_knn_top1"]) <= row["tolerance"]
        rows.append(row)
        print(f"{name:<18} {100 * row['knn_top1']:>9.2f}% {want['knn_top1']:>8.2f}% "
              f"{row['knn_top1'] / row['expected_knn_top1']:>6.3f} {want['tolerance']:>9.1f}pt "
              f"{'yes' if row['ok'] else 'NO':>3} {row['epochs']:>7} {row['images_per_s']:>9.1f} "
              f"{row['pretrain_s'] / 60:>8.1f}", flush=True)
    passed = sum(r["ok"] for r in rows)
    print(f"{passed}/{len(rows)} presets within tolerance of their expected kNN top-1 "
          f"({platform.processor() or platform.machine()})")
    print(json.dumps({"rows": rows, "passed": passed, "presets": len(rows)}, sort_keys=True))
    sys.exit(0 if passed == len(rows) else 1)


if __name__ == "__main__":
    main()
