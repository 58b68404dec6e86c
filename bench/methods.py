"""make bench-methods: every method's CPU preset, pretrained for the same wall-clock budget on CIFAR-10.

For each method: the preset is pretrained with `--budget` (8 min by default; pretrain's calibration sets
the steps that fill it) on ../shared/data/cifar10/train (20k-image seeded subset), and a
weighted kNN (k=20, t=0.07) on the frozen features of a class-balanced 10k-image bank from
the train split classifies the whole test split. The
same architecture at random init (the seed the run starts from) is the baseline. Each method runs in its own
process so its peak RSS is its own. Prints a table, then one JSON line with the rows. "train s" is the
training loop's time, "run s" the whole pretrain command's (set-up, calibration and closing included): the
clock the budget counts.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from bench.common import SHARED_DATA, peak_rss_mb, random_init_encoder, run_phase

# Methods, then the published recipes offered as presets of them (PRESET_FAMILIES): each runs its <name>-cpu preset.
ORDER = ["simclr", "mocov2", "mocov3", "byol", "simsiam", "swav", "deepcluster", "barlow", "vicreg", "dino", "dinov2", "mae",
         "rotation", "jigsaw", "relpos", "colorization", "inpainting", "cpc", "instdisc", "cmc",
         "exemplar", "dim", "localagg",
         "mocov1", "invariantspread", "simclrv2", "infomin", "cpc-v1", "s4l-rotation", "s4l-exemplar"]
DATA = SHARED_DATA / "cifar10"
KNN_BANK_FRACTION = 0.2


def _spec(method: str, out: Path, sets: list[str]):
    from sslcli.spec import PretrainSpec, resolve

    # The online kNN and report are monitors with a cost of their own: off, so the budget is all training.
    sets = ["monitor.knn_every=0", "monitor.report=false", *sets]
    return resolve(PretrainSpec, preset=f"{method}-cpu", options={"data.path": str(DATA), "out": str(out)}, sets=sets)


def _knn(encoder: Path) -> dict:
    from sslcli import cache, checkpoint, data
    from sslcli.device import resolve_device
    from sslcli.evaluate import knn_evaluate
    from sslcli.features import extract_features
    from sslcli.splits import labeled_images, match_classes

    device = resolve_device("auto")
    model, info, _ = checkpoint.load_encoder(encoder)
    train_set, test_set = labeled_images(DATA / "train", "train"), labeled_images(DATA / "test", "eval")
    # The kNN bank is a seeded class-balanced 20 % of train (10,000 images): the whole split would take a
    # ViT-Tiny ~7 minutes per encoder on 2 cores. The test split is used whole.
    train_set = data.subset(train_set, data.label_fraction_subset(train_set.labels, KNN_BANK_FRACTION, 0))
    common = dict(batch_size=512, num_workers=1, device=device, policy=data.BadImagePolicy("skip"), caching=cache.CachePolicy("auto"))
    train_f, train_kept = extract_features(model, info, train_set.paths, **common)
    test_f, test_kept = extract_features(model, info, test_set.paths, **common)
    train_y = torch.tensor(train_set.labels)[train_kept]
    test_y = torch.tensor(match_classes(train_set, test_set))[test_kept]
    knn = knn_evaluate(train_f, train_y, test_f, test_y, len(train_set.classes), ks=[20, 200], temperature=0.07)
    return {"knn_top1": knn["k20"]["top1"], "knn200_top1": knn["k200"]["top1"]}


def phase_method(args: argparse.Namespace) -> dict:
    """Calibrate, pretrain for the budget, probe; all in this process (its peak RSS is the method's)."""
    from sslcli.commands import pretrain

    work = Path(args.workdir) / args.method
    # --budget: pretrain's own calibration sets the steps that fill the minutes (set-up and evaluation included).
    spec = _spec(args.method, work / "run", [*args.sets, f"train.budget={args.minutes * 60}"])
    summary = pretrain.run(spec)
    result = {"method": args.method, "epochs": summary["epochs"], "steps": summary["steps"],
              "budget_s": summary["budget_s"], "images_per_s": summary["images_per_s"],
              "pretrain_s": summary["wall_s"], "command_s": summary["command_s"], "final_loss": summary["final_loss"],
              "encoder": spec.encoder.name, "encoder_kwargs": spec.encoder.kwargs,
              "small_stem": spec.encoder.small_stem, "image_size": spec.data.image_size}
    result.update(_knn(Path(summary["encoder"])))
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def phase_random(args: argparse.Namespace) -> dict:
    spec = _spec(args.method, Path(args.workdir) / f"random-{args.method}", args.sets)
    return _knn(random_init_encoder(spec, Path(args.workdir) / f"random-{args.method}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--phase", choices=["all", "method", "random"], default="all")
    parser.add_argument("--method", default=None)
    parser.add_argument("--methods", default=",".join(ORDER), help="comma-separated subset to run")
    parser.add_argument("--minutes", type=float, default=8.0, help="pretraining budget per method")
    parser.add_argument("--workdir", default=f"runs/bench-methods-{time.strftime('%Y%m%d-%H%M%S')}")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="extra spec overrides")
    args = parser.parse_args()
    if args.phase == "method":
        print(json.dumps(phase_method(args)))
        return
    if args.phase == "random":
        print(json.dumps(phase_random(args)))
        return

    extra = ["--minutes", str(args.minutes), "--workdir", args.workdir] + [f"--set={s}" for s in args.sets]
    rows, baselines = [], {}
    for method in args.methods.split(","):
        row = run_phase("bench.methods", "method", ["--method", method, *extra])
        # One random-init baseline per architecture: same encoder, kwargs, stem and image size, same seed.
        arch = json.dumps([row["encoder"], row["encoder_kwargs"], row["small_stem"], row["image_size"]],
                          sort_keys=True)
        if arch not in baselines:
            baselines[arch] = run_phase("bench.methods", "random", ["--method", method, *extra])
        row["knn_top1_random_init"] = baselines[arch]["knn_top1"]
        row["knn200_top1_random_init"] = baselines[arch]["knn200_top1"]
        rows.append(row)
        _print_row(row, header=len(rows) == 1)
    beaten = sum(r["knn_top1"] > r["knn_top1_random_init"] for r in rows)
    print(f"{beaten}/{len(rows)} methods beat random init of their own encoder "
          f"({args.minutes:g} min of pretraining each, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads)")
    print(json.dumps({"minutes": args.minutes, "rows": rows, "beat_random_init": beaten}, sort_keys=True))


def _print_row(row: dict, header: bool) -> None:
    if header:
        print(f"{'method':<15} {'kNN top-1':>10} {'random init':>12} {'ratio':>6} {'images/s':>9} {'steps':>7} "
              f"{'train s':>8} {'run s':>6} {'budget s':>9} {'peak RSS MiB':>13}")
    ratio = row["knn_top1"] / max(row["knn_top1_random_init"], 1e-9)
    print(f"{row['method']:<15} {100 * row['knn_top1']:>9.2f}% {100 * row['knn_top1_random_init']:>11.2f}% "
          f"{ratio:>6.2f} {row['images_per_s']:>9.1f} {row['steps']:>7} {row['pretrain_s']:>8.0f} "
          f"{row['command_s']:>6.0f} "
          f"{row['budget_s']:>9.0f} {row['peak_rss_mb']:>13.0f}", flush=True)


if __name__ == "__main__":
    main()
