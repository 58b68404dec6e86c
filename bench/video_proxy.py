"""A labeled proxy for learning from video: labeled images turned into clips by a camera window that moves across
each image, then a temporal method pretrained on the train clips and probed on the clips of both splits (a clip's
feature is the mean of its frames'), beside the random-init encoder.

    python -m bench.video_proxy --methods tcn,shuffle --per-class 20 --epochs 2      # Imagenette, 10 classes

Each clip is one image: a square window of `--window` of the image's shorter side pans along a straight line
between two random points (seeded by the image's index) over `--frames` frames, written as an mp4 (PyAV) at 10 fps.
Nearby frames share most of their content, distant ones less, and every clip is one class: the label a kNN on
clip features recovers.

Each method is scored twice beside its random init, by kNN and linear probes: on the proxy's clips (frames of
held-out clips, a clip's feature the mean of its frames') and on the image set itself (transfer: a fraction of its
train split's labels, its val split), and beside an image method (SimCLR by default) pretrained on the frames of
the same train clips for the same steps and batch at the method's frame size.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import SHARED_DATA


def write_clip(image: Path, out: Path, frames: int, window: float, size: int, seed: int) -> None:
    import av

    with Image.open(image) as img:
        picture = img.convert("RGB")
    w, h = picture.size
    side = round(window * min(w, h))
    rng = np.random.default_rng(seed)
    start, end = (rng.uniform((0, 0), (w - side, h - side)) for _ in range(2))
    out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(out), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "2"}  # near-lossless: the proxy is about motion, not compression
        for t in np.linspace(0.0, 1.0, frames):
            left, top = start + t * (end - start)
            crop = picture.crop((round(left), round(top), round(left) + side, round(top) + side)).resize((size, size))
            container.mux(stream.encode(av.VideoFrame.from_image(crop)))
        container.mux(stream.encode())


def make_proxy(images: Path, out: Path, per_class: int, frames: int, window: float, size: int) -> Path:
    """out/train and out/val of CLASS/<image>.mp4 clips from the first per_class images of each class (val: half)."""
    for split, source, count in (("train", "train", per_class), ("val", "val", max(1, per_class // 2))):
        for c, folder in enumerate(sorted(p for p in (images / source).iterdir() if p.is_dir())):
            for i, image in enumerate(sorted(folder.iterdir())[:count]):
                target = out / split / folder.name / f"{image.stem}.mp4"
                if not target.exists():
                    write_clip(image, target, frames, window, size, seed=c * 100_003 + i)
    return out


def encoder_input_side(spec) -> int:
    """The side of what the method's encoder sees in training: tracking's patches, the other methods' views."""
    method = spec.method
    if method.name == "tracking":
        return method.patch_size or max(1, round(method.patch_fraction * spec.data.image_size))
    return spec.augment.size


def pretrain_run(preset: str, train: Path, out: Path, epochs: int, batch_size: int, sets: list[str]) -> dict:
    from sslcli.commands import pretrain
    from sslcli.spec import PretrainSpec, resolve

    spec = resolve(PretrainSpec, preset=preset, options={"data.path": str(train), "out": str(out),
                                                          "train.epochs": epochs, "train.batch_size": batch_size},
                   sets=["monitor.report=false", "monitor.knn_every=0", *sets])
    return pretrain.run(spec)


def scores(encoder: Path, data: Path, baseline: bool, label_fraction: float | None = None) -> dict:
    """kNN (k=5) and linear top-1 of the encoder (and of its random init) on a labeled folder."""
    from sslcli.commands import probe
    from sslcli.spec import ProbeSpec

    scored = probe.run(ProbeSpec(encoder=encoder, data={"path": data, "label_fraction": label_fraction},
                                 probe={"knn_k": [5], "linear_weight_decays": [1e-4], "baseline": baseline}))
    out = {"n_train": scored["n_train"], "n_eval": scored["n_eval"], "chance": scored["chance"],
           "knn_top1": scored["knn"]["k5"]["top1"], "linear_top1": scored["linear"]["top1"]}
    if baseline:
        out.update(random_init_knn_top1=scored["baseline"]["knn"]["k5"]["top1"],
                   random_init_linear_top1=scored["baseline"]["linear"]["top1"])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=SHARED_DATA / "imagenette")
    parser.add_argument("--out", type=Path, default=Path("runs/video-proxy"))
    parser.add_argument("--methods", default="tcn", help="temporal methods, comma-separated: each trains its -cpu "
                        "preset")
    parser.add_argument("--baseline", default="simclr", help="an image method trained on the same clips' frames "
                        "for the same steps and batch, at each method's frame size ('' for none)")
    parser.add_argument("--transfer-fraction", type=float, default=0.2, help="the share of the image set's train "
                        "split that the transfer probe trains on (its val split scores it)")
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--window", type=float, default=0.6)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a spec value for the "
                        "methods' runs (not the image method's), as pretrain's --set: method.track_frames=12")
    args = parser.parse_args(argv)
    from sslcli.spec import PretrainSpec, resolve

    data = make_proxy(args.images, args.out / "data", args.per_class, args.frames, args.window, args.size)
    rows, baselines = [], {}
    for method in [m for m in args.methods.split(",") if m]:
        spec = resolve(PretrainSpec, preset=f"{method}-cpu", options={"data.path": str(data / "train")})
        size = spec.data.image_size
        runs = [(method, f"{method}-cpu", args.set)]
        if args.baseline and size not in baselines:
            # The image method's views are whole-frame sized (augment.size follows data.image_size): where the
            # method's encoder sees less (tracking's patches), the image method is given the larger input.
            runs.append((f"{args.baseline}@{size}px", f"{args.baseline}-cpu", [f"data.image_size={size}"]))
        for name, preset, sets in runs:
            summary = pretrain_run(preset, data / "train", args.out / name, args.epochs, args.batch_size, sets)
            encoder, own = Path(summary["encoder"]), name == method
            row = {"method": name, "preset": preset, "frame_size": size, "steps": summary["steps"],
                   "final_loss": summary["final_loss"], "pretrain_s": summary["wall_s"],
                   "clips": scores(encoder, data, baseline=own),
                   "transfer": scores(encoder, args.images, baseline=own, label_fraction=args.transfer_fraction)}
            if own:
                rows.append(row)
            else:
                baselines[size] = row
        rows[-1]["baseline"] = baselines.get(size)
        rows[-1]["encoder_input"] = encoder_input_side(spec)
    for row in rows:
        clips, transfer, base = row["clips"], row["transfer"], row.get("baseline")
        print(f"{row['method']} ({row['preset']}, {row['frame_size']} px frames, {row['steps']} steps of "
              f"{args.batch_size}; clips {clips['n_train']} train / {clips['n_eval']} eval; transfer "
              f"{transfer['n_train']} / {transfer['n_eval']} images):")
        lines = [("clip kNN top-1 (k=5)", "clips", "knn_top1"), ("clip linear top-1", "clips", "linear_top1"),
                 ("transfer kNN top-1 (k=5)", "transfer", "knn_top1"),
                 ("transfer linear top-1", "transfer", "linear_top1")]
        for label, where, key in lines:
            text = (f"  {label:<26} {100 * row[where][key]:6.2f} %   random init "
                    f"{100 * row[where]['random_init_' + key]:6.2f} %")
            if base:
                text += f"   {base['method']} {100 * base[where][key]:6.2f} %"
            print(text)
    print(json.dumps({"epochs": args.epochs, "batch_size": args.batch_size, "per_class": args.per_class,
                      "sets": args.set, "rows": rows}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
