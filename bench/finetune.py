"""make bench-finetune: 10 % labels on Imagenette, fine-tuned from random init vs from a SimCLR encoder.

The SimCLR encoder is pretrained inside the bench on Imagenette's train split (all images, no labels) with
the quickstart recipe; both encoders are then fine-tuned with the same recipe on the same seeded 10 %
class-balanced subset and scored on the full val split. CPU budget: resnet10t at 32 px, 15 pretraining
epochs and 20 fine-tuning epochs, about 4 minutes on 2 cores with bf16. Prints the figures side by side; the last
line is one JSON object with top1_random_init and top1_pretrained. Acceptance: pretrained wins.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from bench.common import random_init_encoder
from sslcli.commands import finetune, pretrain
from sslcli.spec import FinetuneSpec, PretrainSpec, resolve

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette"
PRETRAIN_SETS = ["data.image_size=32", "data.max_images=null", "train.epochs=15", "train.batch_size=256",
                 "augment.scale=[0.2,1.0]"]
FINETUNE_SETS = ["train.epochs=20", "train.batch_size=64", "train.eval_every=10", "optim.base_lr=2e-3",
                 "optim.warmup_epochs=2", "augment.scale=[0.25,1.0]", "train.log_every=100"]


def finetune_run(encoder: Path, data: Path, out: Path, fraction: float, sets: list[str]) -> dict:
    options = {"encoder": str(encoder), "data.path": str(data), "data.label_fraction": fraction, "out": str(out)}
    return finetune.run(resolve(FinetuneSpec, options=options, sets=FINETUNE_SETS + sets))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path("runs") / f"bench-finetune-{time.strftime('%Y%m%d-%H%M%S')}")
    parser.add_argument("--label-fraction", type=float, default=0.1)
    parser.add_argument("--pretrain-set", action="append", default=[], help="extra pretraining spec overrides")
    parser.add_argument("--finetune-set", action="append", default=[], help="extra fine-tuning spec overrides")
    args = parser.parse_args()

    spec = resolve(PretrainSpec, preset="quickstart", options={"data.path": str(args.data),
                   "out": str(args.out / "simclr")}, sets=PRETRAIN_SETS + args.pretrain_set)
    summary = pretrain.run(spec)
    (args.out / "random-init").mkdir(parents=True, exist_ok=True)
    baseline = random_init_encoder(spec, args.out / "random-init")
    results = {}
    for name, encoder in (("random_init", baseline), ("pretrained", Path(summary["encoder"]))):
        results[name] = finetune_run(encoder, args.data, args.out / f"finetune-{name}", args.label_fraction,
                                     args.finetune_set)

    a, b = results["pretrained"], results["random_init"]
    title = f"{100 * args.label_fraction:g}% labels, {args.data.name} val ({a['n_eval']} images)"
    print(f"{title:<44} {'SimCLR':>10} {'random init':>12} {'difference':>11}")
    for label, key in (("fine-tuned top-1", "top1"), ("fine-tuned top-5", "top5")):
        print(f"{label:<44} {100 * a[key]:>9.2f}% {100 * b[key]:>11.2f}% {100 * (a[key] - b[key]):>+10.2f}")
    print(f"{'fine-tuning wall time (s)':<44} {a['wall_s']:>10.1f} {b['wall_s']:>12.1f}")
    print(f"{'pretrain wall time (s), images/s':<44} {summary['wall_s']:>10.1f} {summary['images_per_s']:>12.1f}")
    figures = {
        "top1_pretrained": a["top1"],
        "top1_random_init": b["top1"],
        "top5_pretrained": a["top5"],
        "top5_random_init": b["top5"],
        "n_train": a["n_train"],
        "n_eval": a["n_eval"],
        "label_fraction": args.label_fraction,
        "pretrain_wall_s": summary["wall_s"],
        "finetune_wall_s": a["wall_s"] + b["wall_s"],
        "device": summary["device"],
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
