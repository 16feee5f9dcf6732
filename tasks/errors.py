"""Why a run is refused before its generator starts, under one root.

    RunRefused
    ├── UnknownGenerator: the message names no registered generator
    ├── InvalidParams: params that are not a JSON object or do not fit the generator
    └── GeneratorUnavailable: this worker lacks what the generator needs (e.g. an API key)

Each ends the run with an ``error`` entry whose ``type`` is the class name, as does
``UnsupportedChunk`` (``streaming.errors``): a yield that is not text, JSON or an Event.
"""

from __future__ import annotations

from streaming.errors import UnsupportedChunk

__all__ = [
    "GeneratorUnavailable", "InvalidParams", "RunRefused", "UnknownGenerator", "UnsupportedChunk",
]


class RunRefused(Exception):
    """The run cannot go on; its message is safe to show to clients."""


class UnknownGenerator(RunRefused):
    """No generator is registered under the requested name."""


class InvalidParams(RunRefused):
    """The run's params do not fit its generator."""


class GeneratorUnavailable(RunRefused):
    """The generator cannot run on this worker: its configuration is missing."""
