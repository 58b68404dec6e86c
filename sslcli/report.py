"""report/ in the run folder: curves.png, neighbors.png and summary.json, drawn from metrics.jsonl and a
neighbour grid that online_knn.py built (and map.png, attention.png when `sslcli report` computed their data);
for a depth run (monodepth), depth.png: a few frames of its clips beside the disparity its saved depth network
predicts. Apart from those depth maps this module only draws and summarises: it computes no features.

Written by pretrain after each online kNN and at the end, and by `sslcli report RUN_DIR` on demand.
matplotlib runs with the Agg backend: no display.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sslcli import console, data
from sslcli.files import atomic_write_json

if TYPE_CHECKING:
    from sslcli.attention_maps import AttentionMaps
    from sslcli.embedding_map import EmbeddingMap
    from sslcli.online_knn import NeighbourGrid

FILES = ("curves.png", "neighbors.png", "map.png", "attention.png", "depth.png", "summary.json")
DRAWN_ON_DEMAND = ("map.png", "attention.png", "depth.png")  # listed only when drawn (depth.png: depth runs)
DEPTH_FRAMES = 6  # frames drawn in depth.png, evenly spaced over the run's clips


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a kill: the others still tell the story
    return records


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(r["step"], r[key]) for r in records if key in r and "step" in r and _finite(r[key])]
    return [p[0] for p in points], [p[1] for p in points]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves_png(records: list[dict[str, Any]], path: Path, title: str) -> None:
    """Loss, lr, online kNN top-1 and effective rank against steps, one panel each."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), constrained_layout=True)
    panels = [("loss", ["loss"], "loss"), ("learning rate", ["lr"], "lr"),
              ("online kNN top-1 (%)", ["knn_top1"], "top-1 %"),
              ("effective rank (RankMe)", ["features_effective_rank", "projections_effective_rank"], "rank")]
    for ax, (name, keys, ylabel) in zip(axes.flat, panels, strict=True):
        drawn = False
        for key in keys:
            steps, values = _series(records, key)
            if key == "knn_top1":
                values = [100 * v for v in values]
            if steps:
                ax.plot(steps, values, marker="o" if len(steps) < 30 else None, label=key.split("_")[0])
                drawn = True
        if "knn_top1" in keys and drawn:
            chance = next((r["knn_chance"] for r in records if _finite(r.get("knn_chance"))), None)
            if chance is not None:  # the reference, which also keeps noise from filling the whole panel
                ax.axhline(100 * chance, color="grey", linestyle="--", linewidth=1, label="chance")
                ax.legend()
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(keys) > 1 and drawn:
            ax.legend()
        if not drawn:
            ax.text(0.5, 0.5, "not measured in this run", ha="center", va="center", transform=ax.transAxes,
                    color="grey")
    fig.suptitle(title)
    _save(fig, path)


def _show(ax, image) -> None:
    """A decoded uint8 [C, H, W] image: RGB as it is, one channel (or two) as grey, N > 3 by its first three."""
    if image.shape[0] == 3:
        ax.imshow(image.permute(1, 2, 0).numpy())
    elif image.shape[0] < 3:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(image[:3].permute(1, 2, 0).numpy())


def neighbours_png(grid: NeighbourGrid, path: Path, title: str) -> None:
    """One row per query: the query, then its neighbours framed green (same class) or red (another)."""
    plt = _pyplot()
    rows, cols = len(grid.query_paths), 1 + max((len(r) for r in grid.neighbour_paths), default=0)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows), squeeze=False)
    storage = data.storage_size_for(grid.image_size)
    for r in range(rows):
        cells = [(grid.query_paths[r], grid.query_labels[r], None)]
        cells += [(p, label, label == grid.query_labels[r])
                  for p, label in zip(grid.neighbour_paths[r], grid.neighbour_labels[r], strict=True)]
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(cells):
                ax.axis("off")
                continue
            file, label, same = cells[c]
            try:
                _show(ax, data.decode_image(file, storage, grid.channels))
            except data.BadImageError:
                ax.text(0.5, 0.5, "unreadable", ha="center", va="center", fontsize=6)
            colour = "black" if same is None else ("tab:green" if same else "tab:red")
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3 if same is not None else 1.5)
            ax.set_title(console.literal(grid.classes[label])[:12] if c == 0 else "", fontsize=7)
    fig.suptitle(f"{title}\nquery | its 8 nearest {grid.bank_name} (green: same class). Over all "
                 f"{grid.queries} eval images {100 * grid.same_class:.1f} % of the 8 nearest share the query's class "
                 f"(chance {100 * grid.chance:.0f} %)", fontsize=8, wrap=True)
    fig.tight_layout()
    _save(fig, path)


def map_png(points: EmbeddingMap, path: Path, title: str) -> None:
    """report/map.png: every eval image a point of the 2-D map, coloured by its class, the method in the title."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 6.5), constrained_layout=True)
    labels = np.asarray(points.labels)
    colours = plt.get_cmap("tab10" if len(points.classes) <= 10 else "tab20")
    size = 12 if len(labels) < 2000 else 5
    for c, name in enumerate(points.classes):
        mine = labels == c
        if mine.any():
            ax.scatter(points.points[mine, 0], points.points[mine, 1], s=size, alpha=0.75, linewidths=0,
                       color=colours(c % colours.N), label=console.literal(name)[:20])
    ax.set_xticks([])
    ax.set_yticks([])
    if len(points.classes) <= 20:
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, markerscale=2, frameon=False)
    ax.set_title(f"{title}\n{points.method} of the features of {len(labels)} eval images, coloured by class", fontsize=9)
    _save(fig, path)


MAX_HEADS_SHOWN = 6


def attention_png(attention: AttentionMaps, path: Path, title: str) -> None:
    """report/attention.png: one row per eval image: the image, the mean over heads of the last block's CLS
    attention laid over it, then each head's map (the DINO paper's figure 1), at patch resolution."""
    import torch
    import torch.nn.functional as F

    plt = _pyplot()
    maps = attention.maps
    heads = min(maps.shape[1], MAX_HEADS_SHOWN)
    rows, cols = maps.shape[0], 2 + heads
    size = attention.images.shape[-1]
    # Patch blocks at the image's size; each map stretched over its own range (least to most attended patch),
    # so every head's focus shows even where the attention is nearly uniform.
    shown = torch.cat([maps.mean(1, keepdim=True), maps[:, :heads]], dim=1)
    shown = F.interpolate(shown, size=(size, size), mode="nearest")
    low, high = shown.amin(dim=(-2, -1), keepdim=True), shown.amax(dim=(-2, -1), keepdim=True)
    shown = (shown - low) / (high - low).clamp_min(1e-12)
    fig, axes = plt.subplots(rows, cols, figsize=(1.45 * cols, 1.5 * rows), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                _show(ax, attention.images[r])
                ax.set_ylabel(console.literal(attention.titles[r])[:14], fontsize=7)
            elif c == 1:
                _show(ax, attention.images[r])
                ax.imshow(shown[r, 0].numpy(), cmap="inferno", alpha=0.6, vmin=0, vmax=1)
            else:
                ax.imshow(shown[r, c - 1].numpy(), cmap="inferno", vmin=0, vmax=1)
            if r == 0:
                ax.set_title(["image", "mean of heads", *(f"head {h + 1}" for h in range(heads))][c], fontsize=7)
    more = f" (first {heads} of {maps.shape[1]} heads)" if heads < maps.shape[1] else ""
    fig.suptitle(f"{title}\nlast block's [CLS] attention to the {attention.patch_size} px patches{more}, each map from its "
                 "least (dark) to its most attended patch (bright)", fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def query_neighbours_png(query: Path, query_title: str, neighbours: list[tuple[Path, str]], image_size: int,
                         path: Path, title: str, channels: int = 3) -> None:
    """`sslcli neighbors --png`: the query, then its neighbours in order, each titled (similarity, class)."""
    plt = _pyplot()
    cells = [(query, query_title), *neighbours]
    cols = min(6, len(cells))
    rows = -(-len(cells) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 2.0 * rows), squeeze=False)
    storage = data.storage_size_for(image_size)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= len(cells):
            ax.axis("off")
            continue
        file, label = cells[i]
        try:
            _show(ax, data.decode_image(file, storage, channels))
        except data.BadImageError:
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center", fontsize=7)
        for spine in ax.spines.values():
            spine.set_edgecolor("black" if i == 0 else "grey")
            spine.set_linewidth(3 if i == 0 else 1)
        ax.set_title(console.literal(label)[:28], fontsize=7)
    fig.suptitle(title, fontsize=8, wrap=True)
    fig.tight_layout()
    _save(fig, path)


def depth_png(frames: np.ndarray, disparities: np.ndarray, captions: list[str], path: Path, title: str) -> None:
    """depth.png: one row per frame, the frame beside its predicted disparity (magma, bright = near; each map
    scaled to its own 95th percentile, as Monodepth2's test_simple.py shows them)."""
    plt = _pyplot()
    rows = len(frames)
    fig, axes = plt.subplots(rows, 2, figsize=(4.6, 2.2 * rows), squeeze=False)
    for r in range(rows):
        axes[r][0].imshow(np.transpose(frames[r], (1, 2, 0)))
        disp = disparities[r]
        axes[r][1].imshow(disp, cmap="magma", vmin=float(disp.min()), vmax=float(np.percentile(disp, 95)))
        axes[r][0].set_title(console.literal(captions[r])[:40], fontsize=7)
        # Each map is scaled on its own: its range says whether the contrast is depth or a nearly flat map.
        axes[r][1].set_title(f"disparity {disp.min():.3f}-{disp.max():.3f} (bright: near)", fontsize=7)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{title}\nframes of the clips | the depth network's disparity", fontsize=8, wrap=True)
    fig.tight_layout()
    _save(fig, path)


def depth_report(run_dir: Path, spec: dict[str, Any], path: Path, title: str) -> bool:
    """depth.png of a run with a depth decoder: DEPTH_FRAMES frames evenly spaced over its clips (the frame
    cache the run decoded them into) through the saved encoder and decoder. Without its clips (moved, deleted) it
    says so on stderr and draws nothing."""
    import torch

    from sslcli import clip_training, video, video_data
    from sslcli.errors import UsageError
    from sslcli.methods.monodepth.depth_maps import load_depth_network, predict_disparity
    from sslcli.spec import PretrainSpec

    try:
        run_spec = PretrainSpec.model_validate(spec)
        encoder, info, decoder = load_depth_network(run_dir)
        clips = video.find_clips(data.split_folders(run_spec.data.path)[0]).clips
        decoded = video_data.open_or_build(clips, data.storage_size_for(info.image_size), run_spec.data.fps,
                                           clip_training.frame_cache_folder(run_spec), data.BadImagePolicy("skip", 0),
                                           num_workers=0)
    except (UsageError, ValueError, OSError) as exc:
        console.info(f"depth.png not drawn: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        return False
    if decoded.count == 0:
        console.info("depth.png not drawn: the run's clips give no frames")
        return False
    rows = np.unique(np.linspace(0, decoded.count - 1, DEPTH_FRAMES).round().astype(np.int64))
    frames = np.ascontiguousarray(decoded.images.array[rows])
    disparity = predict_disparity(encoder, info, decoder, torch.from_numpy(frames)).numpy()
    clip_of = decoded.index.clip_of[rows]
    captions = [f"{clips[c].path.name} frame {int(r - decoded.index.starts[c])}" for r, c in zip(rows, clip_of, strict=True)]
    depth_png(frames, disparity, captions, path, title)
    return True


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    tmp.replace(path)  # a reader never sees half a PNG


def summarize(run_dir: Path, records: list[dict[str, Any]], spec: dict[str, Any],
              neighbours: dict[str, float] | None) -> dict[str, Any]:
    steps = [r for r in records if "loss" in r]
    knn = [r for r in records if "knn_top1" in r]
    warnings = [r for r in records if r.get("collapse")]
    summary = {
        "method": (spec.get("method") or {}).get("name"),
        "encoder": (spec.get("encoder") or {}).get("name"),
        "steps": steps[-1]["step"] if steps else 0,
        "epochs": steps[-1].get("epoch") if steps else 0,
        "first_loss": steps[0]["loss"] if steps else None,
        "final_loss": steps[-1]["loss"] if steps else None,
        "images_per_s": steps[-1].get("images_per_s") if steps else None,
        "knn_top1": knn[-1]["knn_top1"] if knn else None,
        "best_knn_top1": max(r["knn_top1"] for r in knn) if knn else None,
        "random_init_knn_top1": next((r["knn_top1"] for r in knn if r.get("step") == 0), None),
        "knn_chance": knn[-1].get("knn_chance") if knn else None,
        "features_effective_rank": next((r["features_effective_rank"] for r in reversed(steps)
                                         if "features_effective_rank" in r), None),
        "collapse_warnings": len(warnings),
        "neighbours_same_class": (neighbours or {}).get("neighbours_same_class"),
        "chance": (neighbours or {}).get("chance"),
        "files": {name: str(run_dir / "report" / name) for name in FILES
                  if (name != "neighbors.png" or neighbours is not None)
                  and (name not in DRAWN_ON_DEMAND or (run_dir / "report" / name).is_file())},
    }
    if (run_dir / "encoder.safetensors").is_file():
        summary["files"]["encoder"] = str(run_dir / "encoder.safetensors")
    return summary


def write(run_dir: Path, grid: NeighbourGrid | None = None, embedding_map: EmbeddingMap | None = None,
          attention: AttentionMaps | None = None) -> dict[str, Any]:
    """(Re)write report/ from metrics.jsonl (and the grid, map and attention maps when given); returns
    summary.json's content."""
    records = read_metrics(run_dir)
    spec_path = run_dir / "spec.json"
    spec = json.loads(spec_path.read_text()) if spec_path.is_file() else {}
    title = f"{(spec.get('method') or {}).get('name', '?')} · {(spec.get('encoder') or {}).get('name', '?')} · {run_dir.name}"
    report = run_dir / "report"
    curves_png(records, report / "curves.png", title)
    neighbours = None
    if grid is not None:
        neighbours_png(grid, report / "neighbors.png", title)
        neighbours = {"neighbours_same_class": round(grid.same_class, 4), "chance": round(grid.chance, 4)}
    elif (report / "neighbors.png").exists():  # a curves-only refresh keeps the grid's numbers
        neighbours = _previous_neighbours(report)
    if embedding_map is not None:
        map_png(embedding_map, report / "map.png", title)
    if (run_dir / "depth_decoder.safetensors").is_file():
        depth_report(run_dir, spec, report / "depth.png", title)
    if attention is not None:
        attention_png(attention, report / "attention.png", title)
    summary = summarize(run_dir, records, spec, neighbours)
    if embedding_map is not None:
        summary["map_method"] = embedding_map.method
    atomic_write_json(report / "summary.json", summary)
    return summary


def _previous_neighbours(report: Path) -> dict[str, float] | None:
    try:
        previous = json.loads((report / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if previous.get("neighbours_same_class") is None:
        return None
    return {"neighbours_same_class": previous["neighbours_same_class"], "chance": previous.get("chance")}
