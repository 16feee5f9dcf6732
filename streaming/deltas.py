"""Text deltas that wait in a writer's buffer together are stored as one entry.

A model streams its answer token by token: tens of thousands of ``{"text": "..."}`` events of a
few characters each. Stored one per entry, a 4-byte token costs about 50 bytes of stream (its
SSE framing and the entry's fields); stored together, ten of them cost about 90. The writer
(``RunWriter.send_text``) keeps a run's latest text delta open while it waits to be flushed and
appends the next ones to it; the open delta is sealed into one frame, ``data: {"text":
"<joined>"}``, when the flush loop takes it, or when the run sends anything else. An idle writer
flushes at once, so a lone delta is never held back: merging happens only to deltas that would
have waited anyway (a flush in flight, a busy writer). ``Settings.delta_linger`` (opt-in) holds
a delta that follows the run's previous one closely for that long, so fast runs merge more; a
delta after a quiet spell still goes at once.

One merged entry holds ``weight`` output chunks: the writer passes the weights of merged
entries to ``APPEND`` (``weights_arg``), which counts output chunks exactly for resumed runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["MERGE_LIMIT", "Delta", "weights_arg"]

#: Largest merged text, in characters: bounds one entry and the cost of sealing it.
MERGE_LIMIT = 16 * 1024


@dataclass(eq=False)
class Delta:
    """An open text delta of one run: its local index, texts so far, and when it began."""

    index: int
    stamp_ms: int
    texts: list[str] = field(default_factory=list)
    size: int = 0
    began: float = field(default_factory=time.monotonic)
    #: It followed the run's previous delta closely: the run is streaming fast (linger applies).
    close: bool = False

    def add(self, text: str) -> None:
        self.texts.append(text)
        self.size += len(text)

    @property
    def weight(self) -> int:
        return len(self.texts)

    def fits(self, text: str) -> bool:
        return self.size + len(text) <= MERGE_LIMIT

    def frame(self) -> str:
        """The SSE frame of the merged delta (the one a single delta would have had)."""
        data = json.dumps({"text": "".join(self.texts)}, ensure_ascii=False)
        return f"data: {data}\n\n"

    def due(self, linger: float) -> float:
        """When the flush loop must seal it (monotonic): now, unless it lingers."""
        return self.began + linger if self.close and linger > 0 else self.began


def weights_arg(indices: Iterable[int], weights: dict[int, int]) -> str:
    """``APPEND``'s weights argument: ``"index:weight,..."`` for the merged entries only."""
    return ",".join(f"{i}:{weights[i]}" for i in indices if i in weights)
