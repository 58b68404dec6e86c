"""TensorBoard: event files in RUN/tensorboard (scalars, the report's figures, the spec as hparams and text).

TensorBoard has no artifacts: the encoder stays in the run folder; the result is a text summary and scalars
under final/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sslcli.trackers import flat

FOLDER = "tensorboard"


class TensorBoardRun:
    def __init__(self, folder: Path, spec: dict[str, Any], resumed: bool):
        from torch.utils.tensorboard import SummaryWriter

        self.where = str(folder / FOLDER)
        self.run_id = FOLDER  # TensorBoard's run is its log folder; a resumed run writes beside its events
        self.writer = SummaryWriter(log_dir=self.where)
        if not resumed:
            self._hparams(spec)

    def _hparams(self, spec: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        values = {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in flat(spec).items()}
        # Written into this run's own events (SummaryWriter.add_hparams would start a run folder of its own).
        for summary in hparams(values, {}):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("spec", f"```\n{json.dumps(spec, indent=2, sort_keys=True)}\n```", 0)
        self.writer.flush()

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # a stopped run's events are on disk at the stop

    def log_images(self, paths: list[Path], step: int) -> None:
        import numpy as np
        from PIL import Image

        for path in paths:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            self.writer.add_image(f"report/{path.stem}", pixels, step, dataformats="HWC")
        self.writer.flush()

    def log_results(self, results: dict[str, float], artifacts: list[Path], summary: dict[str, Any],
                    step: int) -> None:
        for key, value in results.items():
            self.writer.add_scalar(f"final/{key}", value, step)
        self.writer.add_text("result", f"```\n{json.dumps(summary, indent=2, sort_keys=True)}\n```", step)
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


def open_run(folder: Path, spec: dict[str, Any], experiment: str, run_id: str | None = None,
             where: str | None = None) -> TensorBoardRun:
    return TensorBoardRun(folder, spec, resumed=run_id is not None)
