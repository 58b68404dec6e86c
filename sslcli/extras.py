"""Optional dependencies (pyproject's extras), imported only by the feature that needs them.

A missing one is one line naming the extra that installs it, not an ImportError traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from sslcli.errors import UsageError


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import `module`, or stop with one line: `feature` needs it, and `pip install 'sslcli[extra]'` adds it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{feature} needs the optional package {module.split('.')[0]}: "
                         f"pip install 'sslcli[{extra}]'") from None
