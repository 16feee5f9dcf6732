"""The seed design (Letta's stream manager), imported at run time from outside the repository.

Never copied here: the harness loads ``redis_stream_manager.py`` from ``--seed PATH`` or from
``../shared/seed/`` beside the repository root, and reports "n/a (seed not found)" without it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["default_path", "load"]

MODULE_NAME = "seed_redis_stream_manager"
REPO_ROOT = Path(__file__).resolve().parent.parent


def default_path() -> Path:
    return REPO_ROOT.parent / "shared" / "seed" / "redis_stream_manager.py"


def load(path: str | Path | None) -> ModuleType | None:
    """The seed module at ``path`` (default: ``default_path()``), or ``None`` if absent."""
    file = Path(path) if path else default_path()
    if not file.is_file():
        return None
    if MODULE_NAME in sys.modules:
        return sys.modules[MODULE_NAME]
    spec = importlib.util.spec_from_file_location(MODULE_NAME, file)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    spec.loader.exec_module(module)
    return module
