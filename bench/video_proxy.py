"""A labeled proxy for learning from video: labeled images turned into clips by a camera window that moves across
each image, then a temporal method pretrained on the train clips and probed on the clips of both splits (a clip's
feature is the mean of its frames'), beside the random-init encoder.

    python -m bench.video_proxy --method tcn --per-class 20 --epochs 2      # Imagenette, 10 classes

Each clip is one image: a square window of `--window` of the image's shorter side pans along a straight line
between two random points (seeded by the image's index) over `--frames` frames, written as an mp4 (PyAV) at 10 fps.
Nearby frames share most of their content, distant ones less, and every clip is one class: the label a kNN on
clip features recovers.
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=SHARED_DATA / "imagenette")
    parser.add_argument("--out", type=Path, default=Path("runs/video-proxy"))
    parser.add_argument("--method", default="tcn")
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--window", type=float, default=0.6)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)
    from sslcli.commands import pretrain, probe
    from sslcli.spec import PretrainSpec, ProbeSpec, resolve

    data = make_proxy(args.images, args.out / "data", args.per_class, args.frames, args.window, args.size)
    spec = resolve(PretrainSpec, preset=f"{args.method}-cpu",
                   options={"data.path": str(data / "train"), "out": str(args.out / "run"), "train.epochs": args.epochs},
                   sets=["monitor.report=false"])
    summary = pretrain.run(spec)
    scored = probe.run(ProbeSpec(encoder=Path(summary["encoder"]), data={"path": data},
                                 probe={"knn_k": [5], "linear_weight_decays": [1e-4]}))
    figures = {"method": args.method, "train_clips": scored["n_train"], "eval_clips": scored["n_eval"],
               "steps": summary["steps"], "knn_top1": scored["knn"]["k5"]["top1"],
               "random_init_knn_top1": scored["baseline"]["knn"]["k5"]["top1"],
               "linear_top1": scored["linear"]["top1"], "random_init_linear_top1": scored["baseline"]["linear"]["top1"],
               "chance": scored["chance"]}
    print(f"{args.method} on the video proxy ({scored['n_train']} train / {scored['n_eval']} eval clips): kNN top-1 "
          f"{100 * figures['knn_top1']:.2f} % (random init {100 * figures['random_init_knn_top1']:.2f} %), linear "
          f"{100 * figures['linear_top1']:.2f} % (random init {100 * figures['random_init_linear_top1']:.2f} %)")
    print(json.dumps(figures))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
