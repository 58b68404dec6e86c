"""make bench-demo: recipes for `make demo` side by side, each run exactly as the demo runs it.

For every candidate and precision: `sslcli pretrain DATA --preset P --budget B` (with the candidate's --set
values and train.precision) in a fresh decode cache, then `sslcli probe RUN --data DATA --label-fraction 0.2`
(weighted kNN k=20 and the linear probe, each beside the same architecture at a seeded random init). Prints
one row per run: the whole time (pretraining and probe, as a user waits for them), the steps trained, kNN and
linear top-1 against random init, and whether the demo's goals are met (at most 5 minutes, kNN at least 10
points and linear at least 5 points above random init); then one JSON line with every row.

The candidates (CANDIDATES below) are what the recipe search compared; `--candidates a,b` runs some of them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import SHARED_DATA

DATA = SHARED_DATA / "cifar10"
GOAL_S, KNN_GAIN, LINEAR_GAIN = 300.0, 0.10, 0.05
# name -> (preset, extra --set values): the quickstart as it is, and the variations tried against it.
NARROW = 'encoder.kwargs={"channels": [32, 64, 128, 256]}'  # resnet10t at half width, the quickstart's
CANDIDATES: dict[str, tuple[str, list[str]]] = {
    "quickstart": ("quickstart", []),  # SimCLR, resnet10t at half width, batch 128: the recipe chosen
    "full-width-batch256": ("quickstart", ["encoder.kwargs={}", "train.batch_size=256"]),  # the recipe before it
    "batch64": ("quickstart", ["train.batch_size=64"]),
    "batch256": ("quickstart", ["train.batch_size=256"]),
    "proj512": ("quickstart", ["method.proj_hidden_dim=512"]),
    "byol": ("byol-cpu", [NARROW, "train.batch_size=128"]),
    "vicreg": ("vicreg-cpu", [NARROW, "train.batch_size=128"]),
}


def run(cmd: list[str], env: dict[str, str], cores: str | None = None) -> tuple[dict, float]:
    """Run an sslcli command with --json (on the given cores only); (its result, seconds). Its stderr goes to ours."""
    if cores:
        cmd = ["taskset", "-c", cores, *cmd]
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    started = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), seconds


def demo(name: str, precision: str, args: argparse.Namespace, work: Path) -> dict:
    preset, sets = CANDIDATES[name]
    out = work / f"{name}-{precision}"
    sslcli = [sys.executable, "-m", "sslcli"]
    with tempfile.TemporaryDirectory(prefix="sslcli-demo-cache-") as cache:
        env = {**os.environ, "SSLCLI_CACHE_DIR": cache}  # an empty decode cache, as a new user's
        if args.cores:  # fewer cores: a stand-in for a slower CPU
            env["OMP_NUM_THREADS"] = str(len(args.cores.split(",")))
        extra = [item for value in [*sets, f"train.precision={precision}"] for item in ("--set", value)]
        pretrained, pretrain_s = run([*sslcli, "pretrain", str(args.data), "--preset", preset, "--budget", args.budget,
                                      "--out", str(out), *extra, "--json"], env, args.cores)
        probed, probe_s = run([*sslcli, "probe", str(out / "encoder.safetensors"), "--data", str(args.data),
                               "--label-fraction", str(args.label_fraction), "--json"], env, args.cores)
    knn, linear = probed["knn"]["k20"]["top1"], probed["linear"]["top1"]
    base_knn, base_linear = probed["baseline"]["knn"]["k20"]["top1"], probed["baseline"]["linear"]["top1"]
    total = pretrain_s + probe_s
    return {"candidate": name, "precision": precision, "cores": args.cores or "all", "sets": sets,
            "total_s": round(total, 1),
            "pretrain_s": round(pretrain_s, 1), "probe_s": round(probe_s, 1), "steps": pretrained["steps"],
            "epochs": pretrained["epochs"], "images_per_s": pretrained["images_per_s"], "knn_top1": knn,
            "random_knn_top1": base_knn, "linear_top1": linear, "random_linear_top1": base_linear,
            "goals_met": total <= GOAL_S and knn - base_knn >= KNN_GAIN and linear - base_linear >= LINEAR_GAIN}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--budget", default="3m30s", help="the demo's pretraining budget")
    parser.add_argument("--label-fraction", type=float, default=0.2, help="the demo probe's bank (of the train split)")
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help="comma-separated names")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--cores", default=None, help="run on these cores only (taskset), e.g. 0: one core of this "
                        "machine stands in for a slower CPU")
    parser.add_argument("--workdir", default=f"runs/bench-demo-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()
    work = Path(args.workdir)
    rows = [demo(name, precision, args, work) for name in args.candidates.split(",")
            for precision in args.precisions.split(",")]
    print(f"demo recipes, budget {args.budget}, on {platform.processor() or platform.machine()} "
          f"({len(args.cores.split(',')) if args.cores else os.cpu_count()} of {os.cpu_count()} cores)")
    print(f"{'candidate':<24} {'prec':<5} {'total s':>8} {'steps':>6} {'kNN':>7} {'random':>7} {'gain':>6} "
          f"{'linear':>7} {'random':>7} {'gain':>6}  goals")
    for r in rows:
        print(f"{r['candidate']:<24} {r['precision']:<5} {r['total_s']:>8.0f} {r['steps']:>6} "
              f"{100 * r['knn_top1']:>6.2f}% {100 * r['random_knn_top1']:>6.2f}% "
              f"{100 * (r['knn_top1'] - r['random_knn_top1']):>+6.2f} {100 * r['linear_top1']:>6.2f}% "
              f"{100 * r['random_linear_top1']:>6.2f}% {100 * (r['linear_top1'] - r['random_linear_top1']):>+6.2f}  "
              f"{'yes' if r['goals_met'] else 'no'}")
    print(json.dumps({"budget": args.budget, "rows": rows}, sort_keys=True))


if __name__ == "__main__":
    main()
