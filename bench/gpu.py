"""make bench-gpu: one CUDA GPU measured in one command, in under 8 minutes on one H200.

1. Steady-state throughput: `python -m bench.throughput --device cuda` (SimCLR, ResNet-18 small stem,
   batch 512, bf16; warm-up excluded): (a) sslcli, (b) lightly, (c) model only, the monitors' cost.
   Targets: a/c >= 0.85, a/b >= 3.
2. Time to quality: `sslcli pretrain DATA --preset simclr-cifar10-fast --budget BUDGET --json`, then
   `sslcli probe RUN/encoder.safetensors --data DATA --json` (weighted kNN k=20 on the full test split, and
   the linear probe). Goal with --budget 5m: kNN top-1 >= 85 %.

DATA is a folder with train/ and test/ (or val/) class folders (default ../shared/data/cifar10), or a tar
archive of one (cifar10.tgz, .tar.gz, .tar), unpacked into a temporary folder for the run. Prints the
figures side by side; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath

from bench.common import SHARED_DATA

PRESET = "simclr-cifar10-fast"
KNN_GOAL = 0.85
TOTAL_GOAL_S = 8 * 60


def budget_seconds(text: str) -> float | None:
    """'90s', '5m', '2h', '1.5m' or plain seconds; None when sslcli's own syntax is something else."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match:
        return None
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def safe_extract(archive: Path, dest: Path) -> None:
    """Unpack a tar archive of plain files and folders; refuse absolute paths, '..', links and devices."""
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for member in members:
            parts = PurePosixPath(member.name).parts
            if member.name.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", member.name):
                raise SystemExit(f"{archive}: refusing member with an unsafe path: {member.name!r}")
            if not (member.isfile() or member.isdir()):
                raise SystemExit(f"{archive}: refusing member that is not a plain file or folder: {member.name!r}")
        if hasattr(tarfile, "data_filter"):  # Python 3.12+, and security releases of 3.10-3.11
            tar.extractall(dest, members=members, filter="data")
        else:  # pragma: no cover - older Pythons; the members were checked above
            tar.extractall(dest, members=members)


def dataset_root(folder: Path) -> Path:
    """The folder holding train/ and test/ (or val/): `folder` itself or one or two levels below."""
    candidates = [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]
    candidates += [q for p in candidates[1:] for q in sorted(p.iterdir()) if q.is_dir()]
    for candidate in candidates:
        if (candidate / "train").is_dir() and ((candidate / "test").is_dir() or (candidate / "val").is_dir()):
            return candidate
    raise SystemExit(f"{folder}: no folder with train/ and test/ (or val/) class sub-folders in it")


def resolve_data(data: str, scratch: Path) -> Path:
    path = Path(data)
    if path.is_dir():
        return dataset_root(path)
    if path.is_file() and tarfile.is_tarfile(path):
        dest = scratch / "data"
        dest.mkdir(parents=True)
        print(f"unpacking {path} into {dest}", file=sys.stderr, flush=True)
        safe_extract(path, dest)
        return dataset_root(dest)
    raise SystemExit(f"DATA={data}: not a folder nor a tar archive (.tgz, .tar.gz, .tar)")


def run(cmd: list[str], echo: bool) -> tuple[list[str], float]:
    """Run a command, its stderr (progress) passed through and its stdout echoed or kept; (stdout lines, seconds)."""
    print(f"$ {shlex.join(cmd)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    lines = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}) as proc:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if echo:
                print(line, end="", flush=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"`{shlex.join(cmd)}` failed with exit code {proc.returncode} after {seconds:.0f} s")
    return lines, seconds


def last_json(lines: list[str], what: str) -> dict:
    for line in reversed(lines):
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit(f"{what} printed no JSON line")


def commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parents[1])
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED_DATA / "cifar10"), help="folder, or a .tgz/.tar.gz/.tar of one")
    parser.add_argument("--budget", default="5m", help="pretrain --budget (5m; 3m to shorten)")
    parser.add_argument("--out", type=Path, default=Path("runs") / f"bench-gpu-{time.strftime('%Y%m%d-%H%M%S')}")
    parser.add_argument("--workers", type=int, default=None, help="lightly's DataLoader workers (default: all cores)")
    parser.add_argument("--compile", action="store_true", help="also the train.compile=true throughput (adds ~1-2 min)")
    parser.add_argument("--skip-throughput", action="store_true", help="only the time-to-quality run")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing (no GPU needed)")
    args = parser.parse_args()

    sslcli = [sys.executable, "-m", "sslcli"]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sslcli-bench-gpu-") as scratch:
        data = Path(args.data) if args.dry_run else resolve_data(args.data, Path(scratch))
        run_dir = args.out / "run"
        throughput_cmd = [sys.executable, "-m", "bench.throughput", "--data", str(data), "--device", "cuda",
                          "--workdir", str(args.out / "throughput")]
        throughput_cmd += (["--workers", str(args.workers)] if args.workers else []) + (
            ["--compile"] if args.compile else [])
        pretrain_cmd = [*sslcli, "pretrain", str(data), "--preset", PRESET, "--budget", args.budget,
                        "--out", str(run_dir), "--json"]
        probe_cmd = [*sslcli, "probe", str(run_dir / "encoder.safetensors"), "--data", str(data), "--json"]
        if args.dry_run:
            for cmd in ([] if args.skip_throughput else [throughput_cmd]) + [pretrain_cmd, probe_cmd]:
                print(shlex.join(cmd))
            return
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("bench-gpu needs a CUDA GPU (torch.cuda.is_available() is False); "
                             "see --dry-run for the commands it runs")
        args.out.mkdir(parents=True, exist_ok=True)
        throughput, throughput_s = None, 0.0
        if not args.skip_throughput:
            lines, throughput_s = run(throughput_cmd, echo=True)
            throughput = last_json(lines, "bench.throughput")
        lines, pretrain_s = run(pretrain_cmd, echo=False)
        summary = last_json(lines, "sslcli pretrain")
        lines, probe_s = run(probe_cmd, echo=False)
        probe = last_json(lines, "sslcli probe")
    total_s = time.perf_counter() - started
    report(args, throughput, summary, probe, {"throughput": throughput_s, "pretrain": pretrain_s, "probe": probe_s,
                                              "total": total_s}, torch)


def report(args: argparse.Namespace, throughput: dict | None, summary: dict, probe: dict, walls: dict,
           torch) -> None:
    budget_s = budget_seconds(args.budget)
    knn = probe["knn"]["k20"]["top1"]
    linear = probe["linear"]["top1"]
    device = torch.cuda.get_device_name()
    print()
    print(f"bench-gpu on {device}, torch {torch.__version__}, commit {commit() or 'unknown'}")
    if throughput is not None:
        print(f"{'steady-state SimCLR images/s':<52} {'value':>10} {'target':>10}")
        print(f"{'(a) sslcli (monitors off)':<52} {throughput['sslcli_images_per_s']:>10.0f}")
        print(f"{'(b) lightly':<52} {throughput['lightly_images_per_s']:>10.0f}")
        print(f"{'(c) model only':<52} {throughput['model_only_images_per_s']:>10.0f}")
        if "sslcli_monitors_images_per_s" in throughput:
            print(f"{'(a) with the online kNN and monitors on':<52} {throughput['sslcli_monitors_images_per_s']:>10.0f}")
        if "sslcli_compile_images_per_s" in throughput:
            print(f"{'(a) with train.compile=true':<52} {throughput['sslcli_compile_images_per_s']:>10.0f}")
        if "sslcli_prefetch_images_per_s" in throughput:
            print(f"{'(a) with train.prefetch=true (opt-in side stream)':<52} "
                  f"{throughput['sslcli_prefetch_images_per_s']:>10.0f} {throughput['prefetch_speedup']:>9.2f}x")
        print(f"{'a/b':<52} {throughput['ratio_a_b']:>10.2f} {'>= 3':>10}")
        print(f"{'a/c':<52} {throughput['ratio_a_c']:>10.2f} {'>= 0.85':>10}")
    print(f"{f'time to quality: {PRESET}, --budget {args.budget}':<52} {'value':>10} {'goal':>10}")
    print(f"{'kNN top-1 (k=20, full test split)':<52} {100 * knn:>9.2f}% {'>= 85 %':>10}")
    print(f"{'linear probe top-1':<52} {100 * linear:>9.2f}%")
    print(f"{'pretrain epochs / steps':<52} {summary.get('epochs')!s:>10} {summary.get('steps')!s:>10}")
    print(f"{'pretrain images/s (whole run)':<52} {summary.get('images_per_s', 0):>10.0f}")
    budget_note = f"{budget_s:.0f} s +-5 %" if budget_s else args.budget
    print(f"{'pretrain command wall s (budget)':<52} {walls['pretrain']:>10.1f} {budget_note:>10}")
    print(f"{'probe wall s':<52} {walls['probe']:>10.1f}")
    if throughput is not None:
        print(f"{'throughput wall s':<52} {walls['throughput']:>10.1f}")
    print(f"{'bench-gpu wall s':<52} {walls['total']:>10.1f} {'< 480':>10}")
    figures = {
        "device": device, "torch": torch.__version__, "commit": commit(), "preset": PRESET, "budget": args.budget,
        "budget_s": budget_s, "knn_top1": knn, "knn_goal": KNN_GOAL, "knn_goal_met": knn >= KNN_GOAL,
        "linear_top1": linear, "pretrain_epochs": summary.get("epochs"), "pretrain_steps": summary.get("steps"),
        "pretrain_images_per_s": summary.get("images_per_s"), "pretrain_wall_s": summary.get("wall_s"),
        "pretrain_command_s": round(walls["pretrain"], 1), "probe_command_s": round(walls["probe"], 1),
        "throughput_command_s": round(walls["throughput"], 1), "total_s": round(walls["total"], 1),
        "total_goal_s": TOTAL_GOAL_S, "run_dir": summary.get("run_dir"),
    }
    if budget_s:
        figures["pretrain_within_budget"] = abs(walls["pretrain"] - budget_s) <= 0.05 * budget_s
    if throughput is not None:
        figures["throughput"] = throughput
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
