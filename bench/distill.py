"""make bench-distill: a student distilled from a teacher trained here, against the teacher and its own random init.

The teacher: the quickstart preset (SimCLR, resnet10t at half width, 32 px) trained for a fixed number of epochs
on CIFAR-10, or an encoder you name with --teacher. The student: the distill-cpu preset (a full-width resnet10t,
another architecture than the half-width teacher) regressing the teacher's normalised embeddings for a fixed
number of epochs. Both are probed on the full CIFAR-10 train / test split: the student (with its random init,
the same architecture at the same seed, as probe's baseline) and the teacher.

Prints the figures side by side; the last line is one JSON object. Fixed epochs, not a time budget, so the
figures do not depend on the machine's speed.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from sslcli.commands import pretrain, probe
from sslcli.spec import PretrainSpec, ProbeSpec, resolve

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path("runs") / f"bench-distill-{time.strftime('%Y%m%d-%H%M%S')}")
    parser.add_argument("--teacher", type=Path, help="an sslcli encoder to distill (default: train one with the "
                        "quickstart preset for --teacher-epochs)")
    parser.add_argument("--teacher-epochs", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=6, help="the student's epochs")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="extra spec overrides (student)")
    args = parser.parse_args()

    start = time.perf_counter()
    teacher = args.teacher
    teacher_summary = None
    if teacher is None:
        spec = resolve(PretrainSpec, preset="quickstart", sets=["monitor.knn_every=0"],
                       options={"data.path": str(args.data), "out": str(args.out / "teacher"),
                                "train.epochs": args.teacher_epochs})
        teacher_summary = pretrain.run(spec)
        teacher = Path(teacher_summary["encoder"])
    spec = resolve(PretrainSpec, preset="distill-cpu", sets=["monitor.knn_every=0", *args.sets],
                   options={"data.path": str(args.data), "out": str(args.out / "student"), "train.epochs": args.epochs,
                            "method.teacher": str(teacher)})
    student_summary = pretrain.run(spec)

    seed = {"seed": spec.train.seed}
    student = probe.run(ProbeSpec(encoder=Path(student_summary["encoder"]), data={"path": args.data}, probe=seed))
    teacher_scores = probe.run(ProbeSpec(encoder=teacher, data={"path": args.data},
                                         probe={**seed, "baseline": False}))
    rows = {"student": student, "student random init": student["baseline"], "teacher": teacher_scores}

    print(f"{'distill on ' + str(args.data):<44} {'student':>9} {'random init':>12} {'teacher':>9}")
    for label, pick in (("kNN top-1 (k=20)", lambda r: r["knn"]["k20"]["top1"]),
                        ("kNN top-1 (k=200)", lambda r: r["knn"]["k200"]["top1"]),
                        ("linear top-1", lambda r: r["linear"]["top1"])):
        print(f"{label:<44} " + " ".join(f"{100 * pick(rows[name]):>{w}.2f}%" for name, w in
                                         (("student", 8), ("student random init", 11), ("teacher", 8))))
    print(f"{'student pretrain images/s':<44} {student_summary['images_per_s']:>9.1f}")
    figures = {
        "student_knn_top1": student["knn"]["k20"]["top1"],
        "student_random_init_knn_top1": student["baseline"]["knn"]["k20"]["top1"],
        "teacher_knn_top1": teacher_scores["knn"]["k20"]["top1"],
        "student_linear_top1": student["linear"]["top1"],
        "student_random_init_linear_top1": student["baseline"]["linear"]["top1"],
        "teacher_linear_top1": teacher_scores["linear"]["top1"],
        "student_epochs": args.epochs,
        "teacher": str(teacher),
        "teacher_epochs": args.teacher_epochs if teacher_summary else None,
        "final_teacher_cos_loss": student_summary["final_loss"],
        "wall_s": round(time.perf_counter() - start, 1),
        "device": student_summary["device"],
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
