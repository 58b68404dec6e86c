"""MLflow: a run in the tracking store of MLFLOW_TRACKING_URI, or a file store in RUN/mlruns by default.

Metrics by step, the spec as parameters (and spec.json), the report's figures and the encoder (or classifier)
as artifacts, the result as final metrics and result.json. MLflow 3 keeps its file store only for who opts in
(MLFLOW_ALLOW_FILE_STORE): the default store of a run folder is one, so sslcli opts in for it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sslcli.trackers import flat

FOLDER = "mlruns"
STATUS = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}
BATCH = 100  # MLflow takes at most 100 parameters (1000 metrics) per log_batch


def tracking_uri(folder: Path, saved: str | None) -> str:
    """A resumed run's own store, else MLFLOW_TRACKING_URI, else the run folder's file store."""
    uri = saved or os.environ.get("MLFLOW_TRACKING_URI") or (folder / FOLDER).resolve().as_uri()
    if uri.startswith("file:") or "://" not in uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


class MlflowRun:
    def __init__(self, folder: Path, spec: dict[str, Any], experiment: str, run_id: str | None, where: str | None):
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        self.where = tracking_uri(folder, where)
        self.client = MlflowClient(self.where)
        if run_id is not None:
            try:
                self.client.update_run(run_id, status="RUNNING")
                self.run_id = run_id
                return
            except MlflowException:
                from sslcli import console

                console.warn(f"mlflow: run {run_id} is not in {self.where} any more; starting a new run")
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(experiment_id, run_name=folder.name,
                                             tags={"sslcli.run_folder": str(folder.resolve())}).info.run_id
        self._params(spec, folder)

    def _params(self, spec: dict[str, Any], folder: Path) -> None:
        import json

        from mlflow.entities import Param

        params = [Param(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in flat(spec).items()]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + BATCH])
        self.client.log_dict(self.run_id, spec, "spec.json")

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def log_images(self, paths: list[Path], step: int) -> None:
        for path in paths:  # the newest figures: each checkpoint's replace the last
            self.client.log_artifact(self.run_id, str(path), "report")

    def log_results(self, results: dict[str, float], artifacts: list[Path], summary: dict[str, Any],
                    step: int) -> None:
        self.log_scalars({f"final/{k}": v for k, v in results.items()}, step)
        self.client.log_dict(self.run_id, summary, "result.json")
        for path in artifacts:
            self.client.log_artifact(self.run_id, str(path), "model")

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, STATUS[status])


def open_run(folder: Path, spec: dict[str, Any], experiment: str, run_id: str | None = None,
             where: str | None = None) -> MlflowRun:
    return MlflowRun(folder, spec, experiment, run_id, where)
