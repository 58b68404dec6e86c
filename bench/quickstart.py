"""make bench-quickstart: the quickstart preset on CIFAR-10, trained vs the same encoder at random init.

Prints the figures side by side; the last line is one JSON object with knn_top1, knn_top1_random_init,
images_per_s and wall_s (plus the linear-probe figures). Acceptance: trained beats random init by at
least 10 kNN points.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from bench.common import random_init_encoder
from sslcli.commands import pretrain, probe
from sslcli.spec import PretrainSpec, ProbeSpec, preset_expectations, resolve

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path("runs") / f"bench-quickstart-{time.strftime('%Y%m%d-%H%M%S')}")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="extra spec overrides")
    args = parser.parse_args()

    # The epochs the preset's expected figure was measured with, in place of its time budget, so the figures
    # do not depend on the machine (a --set train.budget=... still chooses a budget).
    epochs = preset_expectations()["quickstart"]["epochs"]
    spec = resolve(PretrainSpec, preset="quickstart", sets=args.sets,
                   options={"data.path": str(args.data), "out": str(args.out), "train.epochs": epochs})
    summary = pretrain.run(spec)
    baseline = random_init_encoder(spec, args.out / "random-init")

    results = {}
    for name, encoder in (("trained", Path(summary["encoder"])), ("random_init", baseline)):
        results[name] = probe.run(ProbeSpec(encoder=encoder, data={"path": args.data}, probe={"seed": spec.train.seed}))

    trained, random = results["trained"], results["random_init"]
    print(f"{'quickstart on ' + str(args.data):<44} {'trained':>10} {'random init':>12} {'difference':>11}")
    for label, key in (("kNN top-1 (k=20)", "k20"), ("kNN top-1 (k=200)", "k200")):
        a, b = trained["knn"][key]["top1"], random["knn"][key]["top1"]
        print(f"{label:<44} {100 * a:>9.2f}% {100 * b:>11.2f}% {100 * (a - b):>+10.2f}")
    a, b = trained["linear"]["top1"], random["linear"]["top1"]
    print(f"{'linear top-1':<44} {100 * a:>9.2f}% {100 * b:>11.2f}% {100 * (a - b):>+10.2f}")
    print(f"{'pretrain images/s':<44} {summary['images_per_s']:>10.1f}")
    print(f"{'pretrain wall time (s)':<44} {summary['wall_s']:>10.1f}")
    figures = {
        "knn_top1": trained["knn"]["k20"]["top1"],
        "knn_top1_random_init": random["knn"]["k20"]["top1"],
        "knn200_top1": trained["knn"]["k200"]["top1"],
        "knn200_top1_random_init": random["knn"]["k200"]["top1"],
        "linear_top1": trained["linear"]["top1"],
        "linear_top1_random_init": random["linear"]["top1"],
        "images_per_s": summary["images_per_s"],
        "wall_s": summary["wall_s"],
        "probe_s": trained["seconds"],
        "device": summary["device"],
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
