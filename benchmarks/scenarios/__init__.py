"""The scenarios, one module each; importing a module registers its scenario (``core.SCENARIOS``).

The order below is the order the harness runs and prints them.
"""

from __future__ import annotations

import importlib

from ..core import pending

__all__ = ["load_all"]

MODULES = ("latency", "throughput", "write_cost", "idle_readers", "fanout", "memory")


def load_all() -> None:
    """Register every scenario, the pending ones (they need the worker and web tiers) last."""
    for module in MODULES:
        importlib.import_module(f"{__name__}.{module}")
    pending("first-chunk", "Time to first chunk through a prefork Celery worker",
            "pending (needs worker/web tier)")
    pending("end-to-end", "End to end over HTTP with 1,000 SSE clients",
            "pending (needs worker/web tier)")
