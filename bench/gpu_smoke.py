"""make gpu-smoke: every method's -cifar10 preset trains a few steps on the device, then is probed.

Each preset pretrains STEPS steps (30) on DATA's train split with the online kNN and the report off, on CUDA
under `train.debug_sync=true` (any host sync inside the step loop fails the run), then the encoder is probed
(weighted kNN k=20 and the linear probe on a class-balanced LABEL_FRACTION of train, the whole test split).
One line per preset: its steady-state images/s (the median of the logged rates after the first), the probe,
or the one-line error that stopped it. A preset that needs something the data cannot give is run with a
stand-in that exercises the same code: distill's teacher is a random ResNet-18 (`random:resnet18`).

Everything runs in one process through the Python API (one CUDA context, one decode cache), so 31 presets
take a few minutes on one GPU. `--device cpu --steps 2` runs the same matrix on a CPU (no sync check there).
Exit 1 when any preset failed. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.common import SHARED_DATA
from bench.gpu import resolve_data

PRESETS_DIR = Path(__file__).resolve().parents[1] / "presets"
# Stand-ins for what a preset leaves to the user.
STAND_INS = {"distill-cifar10": {"method.teacher": "random:resnet18"}}


def cifar10_presets() -> list[str]:
    return sorted(path.stem for path in PRESETS_DIR.glob("*-cifar10*.toml"))


def steady_rate(metrics: list[dict]) -> float | None:
    """The median logged images/s, the first logged interval (compilation, cache warm-up) left out."""
    rates = [record["images_per_s"] for record in metrics if "images_per_s" in record]
    rates = rates[1:] if len(rates) > 1 else rates
    return round(statistics.median(rates), 1) if rates else None


def smoke_one(preset: str, data: Path, out: Path, steps: int, device: str, label_fraction: float,
              batch_size: int | None) -> dict:
    import sslcli

    overrides = {"train.max_steps": steps, "train.log_every": max(1, steps // 6), "train.device": device,
                 "train.checkpoint_every": 0, "monitor.knn_every": 0, "monitor.report": False,
                 **STAND_INS.get(preset, {})}
    if device.startswith("cuda"):
        overrides["train.debug_sync"] = True
    start = time.perf_counter()
    run = sslcli.pretrain(data / "train", preset=preset, out=out / preset, force=True, batch_size=batch_size,
                          **overrides)
    pretrain_s = time.perf_counter() - start
    probe = sslcli.probe(run.encoder, data, label_fraction=label_fraction, baseline=False,
                         **{"probe.device": device, "probe.knn_k": [20]})
    return {"preset": preset, "ok": True, "images_per_s": steady_rate(run.metrics), "pretrain_s": round(pretrain_s, 1),
            "knn_top1": probe.knn["k20"]["top1"],
            "linear_top1": probe.linear["top1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED_DATA / "cifar10"), help="folder, or a .tgz/.tar.gz/.tar of one")
    parser.add_argument("--presets", default="", help="comma-separated preset names (default: every -cifar10 preset)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=None, help="instead of each preset's (for small data)")
    parser.add_argument("--label-fraction", type=float, default=0.1, help="of train, for the probe's bank and fit")
    parser.add_argument("--out", type=Path, default=None, help="run folders (default: a temporary folder)")
    args = parser.parse_args()

    presets = [p.strip() for p in args.presets.split(",") if p.strip()] or cifar10_presets()
    unknown = sorted(set(presets) - set(cifar10_presets()) - {p.stem for p in PRESETS_DIR.glob("*.toml")})
    if unknown:
        raise SystemExit(f"unknown preset(s): {', '.join(unknown)}")
    from sslcli.errors import SslcliError

    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as scratch:
        data = resolve_data(args.data, Path(scratch))
        out = args.out or Path(scratch) / "runs"
        print(f"{'preset':<24} {'img/s':>9} {'pretrain s':>10} {'kNN':>7} {'linear':>7}", flush=True)
        for preset in presets:
            try:
                row = smoke_one(preset, data, out, args.steps, args.device, args.label_fraction, args.batch_size)
            except (SslcliError, RuntimeError) as exc:  # RuntimeError: debug_sync's "operation synchronized"
                row = {"preset": preset, "ok": False, "error": " ".join(str(exc).split())[:300]}
                print(f"{preset:<24} FAILED: {row['error']}", flush=True)
            else:
                rate = "-" if row["images_per_s"] is None else f"{row['images_per_s']:.0f}"
                print(f"{preset:<24} {rate:>9} {row['pretrain_s']:>10.1f} {100 * row['knn_top1']:>6.2f}% "
                      f"{100 * row['linear_top1']:>6.2f}%", flush=True)
            rows.append(row)
    failed = [row["preset"] for row in rows if not row["ok"]]
    print(json.dumps({"bench": "gpu-smoke", "device": args.device, "steps": args.steps, "failed": failed, "rows": rows}))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
