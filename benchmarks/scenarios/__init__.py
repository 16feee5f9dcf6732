"""The scenarios, one module each; importing a module registers its scenario (``core.SCENARIOS``).

The order below is the order the harness runs and prints them.
"""

from __future__ import annotations

import importlib

__all__ = ["load_all"]

MODULES = ("latency", "throughput", "write_cost", "idle_readers", "fanout", "shared_run",
           "memory", "storage", "ending_bound", "first_chunk", "end_to_end", "web_clients")


def load_all() -> None:
    """Register every scenario (the worker and web tiers' two last)."""
    for module in MODULES:
        importlib.import_module(f"{__name__}.{module}")
