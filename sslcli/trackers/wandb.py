"""Weights & Biases: a run in RUN/wandb, offline unless WANDB_MODE says otherwise (sslcli uses no network
unless asked; `wandb sync RUN/wandb/offline-run-*` uploads an offline run).

Metrics by step, the spec as the run's config, the report's figures as images, the result as the run's
summary and the encoder (or classifier) as a model artifact. A resumed run reopens the same run id."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

EXIT_CODES = {"finished": 0, "stopped": 130, "failed": 1}


class WandbRun:
    def __init__(self, folder: Path, spec: dict[str, Any], experiment: str, run_id: str | None):
        import wandb

        self.wandb = wandb
        mode = None if os.environ.get("WANDB_MODE") else "offline"
        # console off: W&B would otherwise wrap stdout and stderr (stdout carries sslcli's results); no system
        # metrics sampler thread in the training process.
        settings = wandb.Settings(console="off", silent=True, x_disable_stats=True)
        self.run = wandb.init(project=experiment, dir=str(folder), id=run_id, resume="allow" if run_id else None,
                              name=folder.name, config=spec if run_id is None else None, mode=mode,
                              settings=settings, reinit="create_new")
        self.run_id = self.run.id
        self.where = str(folder / "wandb")

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def log_images(self, paths: list[Path], step: int) -> None:
        self.run.log({f"report/{p.stem}": self.wandb.Image(str(p)) for p in paths}, step=step)

    def log_results(self, results: dict[str, float], artifacts: list[Path], summary: dict[str, Any],
                    step: int) -> None:
        self.run.summary.update({f"final/{k}": v for k, v in results.items()})
        if artifacts:
            artifact = self.wandb.Artifact(f"{artifacts[0].stem}-{self.run_id}", type="model",
                                           metadata={"result": summary})
            for path in artifacts:
                artifact.add_file(str(path))
            self.run.log_artifact(artifact)

    def close(self, status: str) -> None:
        self.run.finish(exit_code=EXIT_CODES[status])


def open_run(folder: Path, spec: dict[str, Any], experiment: str, run_id: str | None = None,
             where: str | None = None) -> WandbRun:
    return WandbRun(folder, spec, experiment, run_id)
