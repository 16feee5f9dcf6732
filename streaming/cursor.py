"""What every reader does with a run's entries, independent of how they were fetched.

``RunCursor`` turns stream entries into events: it skips what the cursor already has, names gaps
(trimmed history), stops at the terminal entry, and judges from a run's stored times whether a
quiet run is overdue (its reader then stores the ending) and when to look again. The sync
reader and the shared async hub both drive one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InvalidCursor
from .settings import Settings
from .wire import Event, RunKeys, Terminal, entry_event, made_event, parse_frame, terminal_of

__all__ = [
    "NOT_A_RUN", "Entry", "Parsed", "RunCursor", "RunStatus", "id_key", "parse_entries",
    "stream_id_after", "wrong_type", "xread_raw", "xread_reply",
]

Entry = tuple[str, dict[str, str]]
#: An entry parsed once for every reader it is handed to: (id as a sortable pair, id, seq id,
#: its event; None for an entry without a seq id, which no reader yields). A complete entry's
#: event has its ``terminal``.
Parsed = tuple[tuple[int, int], str, int, Event | None]
#: Seconds a reader waits past a run's stored deadline before it checks again: the server's
#: times are in milliseconds and a reader's timers are not exact.
DEADLINE_SLACK = 0.25


@dataclass(frozen=True)
class RunStatus:
    """A run's state in Redis: ``missing``, ``pending`` (queued, not claimed yet), ``live``
    (a writer holds its lease), ``idle`` (claimed, lease lapsed: producer gone or stalled) or
    ``ended``; ``stream`` tells whether its stream key exists (the seed writes no meta).

    The times are the server's, in milliseconds since the epoch (0 when not stored): ``now``
    when the status was read, ``queued`` when the run was queued (``mark_pending``), and
    ``lease_expires`` when its writer's lease expires or expired (set to the moment of a
    ``release()``). ``due_in()`` judges from them alone, so every reader, whenever it
    connected, reaches the same verdict at the same moment.
    """

    state: str
    last_seq: int
    attempt: int
    ending: str
    stream: bool
    now: int = 0
    queued: int = 0
    lease_expires: int = 0

    @classmethod
    def from_reply(cls, reply: Sequence[Any]) -> RunStatus:
        """From the ``STATUS`` script's reply for one run.

        A stream key that holds another type is not a run: reported as ``missing``.
        """
        if reply[4] not in ("none", "stream"):
            return NOT_A_RUN
        state, ending = str(reply[0]), str(reply[3])
        if reply[5]:  # the seed's stream ended: its ending frame tells how
            state, ending = "ended", terminal_of(*parse_frame(reply[5])).value
        times = [int(t) for t in reply[6:9]] if len(reply) >= 9 else [0, 0, 0]
        return cls(state, int(reply[1]), int(reply[2]), ending, reply[4] == "stream", *times)

    @property
    def terminal(self) -> Terminal | None:
        return Terminal(self.ending) if self.ending else None

    def due_in(self, queue_timeout: float, producer_timeout: float) -> float | None:
        """Seconds until the run is overdue by its stored times (<= 0: overdue now).

        Queued runs are due ``queue_timeout`` after they were queued; claimed runs
        ``producer_timeout`` after their lease expires (for a live run: the earliest moment it
        could be overdue, should its writer stop now). ``None``: no deadline applies (ended,
        missing, a seed stream, or a queued run with no stored queued time), or this client
        may not read the server's clock (an ACL without ``TIME``).
        """
        if not self.now:  # the server's clock was not available to this client (its ACL)
            return None
        if self.state == "pending":
            if not self.queued:
                return None
            return (self.queued - self.now) / 1000 + queue_timeout
        if self.state in ("live", "idle"):
            return (self.lease_expires - self.now) / 1000 + producer_timeout
        return None

    def overdue(self, queue_timeout: float, producer_timeout: float) -> bool:
        """Whether the guarded ending (``control.end_run(when="due")``) would end the run."""
        due = self.due_in(queue_timeout, producer_timeout)
        return self.state != "live" and due is not None and due <= 0


#: A run whose stream key holds another kind of value: not a run (any more).
NOT_A_RUN = RunStatus("missing", 0, 0, "", False)


def wrong_type(exc: Exception) -> bool:
    """Whether Redis refused a read because the key holds another kind of value."""
    return str(exc).startswith("WRONGTYPE")


def xread_reply(reply: Any) -> list[tuple[str, list[Entry]]]:
    """``XREAD``'s reply as ``[(key, entries)]``, whichever protocol version answered."""
    if not reply:
        return []
    items = reply.items() if isinstance(reply, dict) else reply
    return [(key, list(entries[0] if isinstance(reply, dict) else entries))
            for key, entries in items]


def xread_raw(reply: Any) -> list[tuple[str, list[Entry]]]:
    """A raw ``XREAD`` reply (no redis-py response callback) as ``[(key, entries)]``, whichever
    protocol version answered."""
    items = reply.items() if isinstance(reply, dict) else reply or []
    return [(key, [(entry_id, dict(zip(fields[::2], fields[1::2], strict=True)))
                   for entry_id, fields in entries])
            for key, entries in items]


def parse_entries(entries: Sequence[Entry]) -> list[Parsed]:
    """``entries`` parsed for ``RunCursor.feed_parsed``."""
    return [(id_key(entry_id), entry_id, int(fields.get("seq_id", 0)),
             entry_event(fields) if "seq_id" in fields else None)
            for entry_id, fields in entries]


def stream_id_after(seq: int) -> str:
    """The stream position just before ``seq + 1`` in our id scheme (``0-<seq>``)."""
    return f"0-{seq}"


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class RunCursor:
    """Position of one reader in one run, and the rules for what it yields next."""

    def __init__(self, keys: RunKeys, after: int, settings: Settings) -> None:
        self.keys = keys
        self.after = after
        self.last_id = stream_id_after(after)
        self.last_key = (0, after)  # ``last_id`` as a sortable pair
        self.terminal: Terminal | None = None
        self.queue_timeout = settings.queue_timeout
        self.producer_timeout = settings.producer_timeout

    @property
    def done(self) -> bool:
        return self.terminal is not None

    def feed(self, entries: Sequence[Entry]) -> Iterable[Event]:
        """Events for ``entries`` (in stream order) that this reader has not seen.

        Lazy: the cursor moves as each event is taken, so a consumer that stops early
        resumes from the last event it took, not the last one fetched.
        """
        return self.feed_parsed(parse_entries(entries))

    def feed_parsed(self, items: Sequence[Parsed]) -> Iterable[Event]:
        """``feed()`` for entries already parsed (``parse_entries``): a hub parses a batch once
        for all the readers of the run.

        A live run's usual batch, its one next entry, takes a path of its own: no generator
        per reader and entry (taking it at once is what taking it lazily would do).
        """
        if len(items) == 1:
            key, entry_id, seq, event = items[0]
            if seq == self.after + 1 and key > self.last_key and self.terminal is None:
                assert event is not None  # an entry with a seq id
                self.last_id, self.last_key, self.after = entry_id, key, seq
                self.terminal = event.terminal
                return (event,)
        return self._feed(items)

    def _feed(self, items: Sequence[Parsed]) -> Iterator[Event]:
        last = self.last_key
        for key, entry_id, seq, event in items:
            if self.terminal is not None or key <= last:
                continue
            self.last_id, self.last_key = entry_id, key
            last = key
            if seq <= self.after:
                # A seed stream's duplicate numbering, or an entry from before the cursor; if it
                # is the ending, the reader already has it.
                if event is not None and event.terminal is not None:
                    self.terminal = event.terminal
                continue
            if seq > self.after + 1:
                gap = self._gap(self.after + 1, seq - 1)
                self.after = seq - 1
                yield gap
            assert event is not None  # its seq id is past the cursor's
            self.after = seq
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

    def overdue(self, status: RunStatus) -> bool:
        """Whether the run is overdue by its stored times: its reader should store its ending
        (``control.end_if_overdue``) and then read it like any entry."""
        return not self.done and status.overdue(self.queue_timeout, self.producer_timeout)

    def next_check(self, status: RunStatus, longest: float) -> float:
        """Seconds until the run's status is worth checking again: when its stored deadline
        comes due (plus a little slack for the clocks' rounding), at most ``longest``."""
        due = status.due_in(self.queue_timeout, self.producer_timeout)
        if due is None:
            return longest
        return min(max(due + DEADLINE_SLACK, DEADLINE_SLACK), longest)

    def check_alive(self, status: RunStatus, *, unwritable: bool = False) -> list[Event]:
        """On a quiet run: the ending event the reader makes up, if it must make one up.

        A run whose data vanished (expired, deleted, or the server restarted empty) ends
        ``lost``: there is nothing left to store an ending in. An overdue run's ending is
        stored (``control.end_if_overdue``) and read like any entry; only a reader that could
        not store it (``unwritable``: an ACL without write permission, a read-only replica, or
        a key of the run holding someone else's value) makes it up here, with the kind and
        message the store would have had.
        """
        if status.state == "missing" and not status.stream:
            return self._end(Terminal.LOST, f"run {self.keys.run_id}'s data vanished "
                             "(expired, deleted, or the server restarted empty)")
        if not unwritable or not self.overdue(status):
            return []
        if status.state == "pending":
            return self._end(Terminal.TIMEOUT, f"no worker started run {self.keys.run_id} "
                             f"within {self.queue_timeout:g} s of its being queued")
        return self._end(Terminal.LOST, f"run {self.keys.run_id}'s producer stopped without "
                         f"an ending (no writer for {self.producer_timeout:g} s after its "
                         "lease lapsed)")

    def _end(self, kind: Terminal, message: str) -> list[Event]:
        self.terminal = kind
        body = {"kind": kind.value, "message": message, "last_seq": self.after}
        return [made_event(kind, {"error": body})]
