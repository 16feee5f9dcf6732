"""What every reader does with a run's entries, independent of how they were fetched.

``RunCursor`` turns stream entries into events: it skips what the cursor already has, names gaps
(trimmed history), stops at the terminal entry, and decides from a run's status whether a quiet
run has lost its producer. The sync reader and the shared async hub both drive one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InvalidCursor
from .wire import Event, RunKeys, Terminal, entry_event, made_event, parse_frame, terminal_of

__all__ = ["Entry", "RunCursor", "RunStatus", "id_key", "stream_id_after", "xread_reply"]

Entry = tuple[str, dict[str, str]]


@dataclass(frozen=True)
class RunStatus:
    """A run's state in Redis: ``missing``, ``pending`` (queued, not claimed yet), ``live``
    (a writer holds its lease), ``idle`` (claimed, lease lapsed: producer gone or stalled) or
    ``ended``; ``stream`` tells whether its stream key exists (the seed writes no meta)."""

    state: str
    last_seq: int
    attempt: int
    ending: str
    stream: bool

    @classmethod
    def from_reply(cls, reply: Sequence[Any]) -> RunStatus:
        """From the ``STATUS`` script's reply for one run.

        A stream key that holds another type is not a run: reported as ``missing``.
        """
        if reply[4] not in ("none", "stream"):
            return cls("missing", 0, 0, "", False)
        state, ending = str(reply[0]), str(reply[3])
        if reply[5]:  # the seed's stream ended: its ending frame tells how
            state, ending = "ended", terminal_of(*parse_frame(reply[5])).value
        return cls(state, int(reply[1]), int(reply[2]), ending, reply[4] == "stream")

    @property
    def terminal(self) -> Terminal | None:
        return Terminal(self.ending) if self.ending else None


def xread_reply(reply: Any) -> list[tuple[str, list[Entry]]]:
    """``XREAD``'s reply as ``[(key, entries)]``, whichever protocol version answered."""
    if not reply:
        return []
    items = reply.items() if isinstance(reply, dict) else reply
    return [(key, list(entries[0] if isinstance(reply, dict) else entries))
            for key, entries in items]


def stream_id_after(seq: int) -> str:
    """The stream position just before ``seq + 1`` in our id scheme (``0-<seq>``)."""
    return f"0-{seq}"


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class RunCursor:
    """Position of one reader in one run, and the rules for what it yields next."""

    def __init__(self, keys: RunKeys, after: int, producer_timeout: float) -> None:
        self.keys = keys
        self.after = after
        self.last_id = stream_id_after(after)
        self.terminal: Terminal | None = None
        self.producer_timeout = producer_timeout
        self._idle_since: float | None = None

    @property
    def done(self) -> bool:
        return self.terminal is not None

    def is_newer(self, entry_id: str) -> bool:
        return id_key(entry_id) > id_key(self.last_id)

    def feed(self, entries: Sequence[Entry]) -> Iterator[Event]:
        """Events for ``entries`` (in stream order) that this reader has not seen.

        Lazy: the cursor moves as each event is taken, so a consumer that stops early
        resumes from the last event it took, not the last one fetched.
        """
        for entry_id, fields in entries:
            if self.done or not self.is_newer(entry_id):
                continue
            self.last_id = entry_id
            seq = int(fields.get("seq_id", 0))
            if seq <= self.after:
                # A seed stream's duplicate numbering, or an entry from before the cursor; if it
                # is the ending, the reader already has it.
                if fields.get("complete") == "true":
                    self.terminal = entry_event(fields).terminal
                continue
            if seq > self.after + 1:
                gap = self._gap(self.after + 1, seq - 1)
                self.after = seq - 1
                yield gap
            event = entry_event(fields)
            self.after = seq
            self._idle_since = None
            self.terminal = event.terminal
            yield event

    def _gap(self, first: int, last: int) -> Event:
        payload = {"gap": {"first": first, "last": last,
                           "message": f"chunks {first}..{last} are no longer stored"}}
        return made_event("gap", payload, terminal=False)

    def check_start(self, status: RunStatus) -> list[Event]:
        """Before reading: end at once for a missing run, or one the cursor is already past."""
        if status.state == "missing" and not status.stream:
            return self._end(Terminal.NOT_FOUND, f"run {self.keys.run_id} does not exist")
        if self.after > status.last_seq:
            raise InvalidCursor(
                f"cursor {self.after} is past run {self.keys.run_id}'s last seq {status.last_seq}"
            )
        if status.terminal is not None and self.after >= status.last_seq:
            self.terminal = status.terminal  # the reader already has the ending
        return []

    def check_alive(self, status: RunStatus, now: float | None = None) -> list[Event]:
        """On a quiet run: the ending event if its producer is gone, else nothing."""
        now = time.monotonic() if now is None else now
        if status.state == "missing" and not status.stream:
            return self._end(Terminal.LOST, f"run {self.keys.run_id}'s data vanished "
                             "(expired, deleted, or the server restarted empty)")
        if status.state != "idle":
            self._idle_since = None
            return []
        if self._idle_since is None:
            self._idle_since = now
        if now - self._idle_since < self.producer_timeout:
            return []
        return self._end(Terminal.LOST, f"run {self.keys.run_id}'s producer stopped without "
                         f"an ending (no writer for {self.producer_timeout:g} s)")

    def _end(self, kind: Terminal, message: str) -> list[Event]:
        self.terminal = kind
        body = {"kind": kind.value, "message": message, "last_seq": self.after}
        return [made_event(kind, {"error": body})]
