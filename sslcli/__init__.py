"""sslcli: self-supervised visual representation learning from the command line and from Python.

    import sslcli
    run = sslcli.pretrain("data/", method="simclr", out="runs/simclr", epochs=10)
    scores = sslcli.probe(run.encoder, "labeled/")
    model = sslcli.load_encoder(run.encoder)

The functions live in sslcli.api, imported on first use, so `import sslcli` (and the CLI) stays light.
"""

from __future__ import annotations

from typing import Any

from sslcli.errors import Interrupted, RunError, SslcliError, UsageError

__version__ = "0.1.0"

API = ("pretrain", "probe", "finetune", "export", "embed", "load_encoder", "Result", "PretrainResult",
       "ProbeResult", "FinetuneResult", "ExportResult", "EmbedResult")
__all__ = [*API, "SslcliError", "UsageError", "RunError", "Interrupted", "__version__"]


def __getattr__(name: str) -> Any:
    if name in API:
        from sslcli import api

        return getattr(api, name)
    raise AttributeError(f"module 'sslcli' has no attribute {name!r}")
