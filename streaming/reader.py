"""The blocking reader: one run's events from a cursor, for threads and command-line tools.

Each reader uses its own blocking ``XREAD`` on a client it is given. Web processes serving many
readers use the shared ``streaming.hub.ReaderHub`` instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from redis.exceptions import ResponseError

from .client import TRANSIENT, SyncClient
from .control import end_if_overdue, ending_refused, run_status
from .cursor import (
    DEADLINE_SLACK,
    NOT_A_RUN,
    Entry,
    RunCursor,
    RunStatus,
    wrong_type,
    xread_reply,
)
from .errors import ReaderError, StreamGoneError
from .settings import Settings
from .wire import Event, RunKeys, Terminal, parse_cursor

__all__ = ["RunReader", "read_events"]

_BATCH = 500
_BACKOFF_MIN, _BACKOFF_MAX = 0.05, 2.0
T = TypeVar("T")


class RunReader:
    """Iterates over one run's events after ``starting_after``, ending after the terminal one.

    ``terminal`` tells how the run ended once iteration stops (also when the cursor was
    already past the ending and nothing was yielded).

    A quiet run's status is checked when its stored deadline comes due and at least every
    ``liveness_interval``; an overdue run's ending is stored (``control.end_if_overdue``) and
    then read like any entry, so it has its ``id:`` and equals what every other reader and any
    later attempt sees. Only if the server refuses that write (a client without write
    permission) does the reader make the ending up, with the same kind and message.

    A store that goes away (restarted, a cut connection) is retried with backoff, and the read
    resumes from the reader's position: nothing is skipped or repeated. Past
    ``unavailable_timeout`` s without an answer the iteration raises ``ReaderError``.
    """

    def __init__(self, client: SyncClient, run_id: str, settings: Settings, *,
                 starting_after: object = None) -> None:
        self.client = client
        self.settings = settings
        keys = RunKeys.for_run(run_id, hash_tag=settings.cluster_hash_tags)
        self.cursor = RunCursor(keys, parse_cursor(starting_after), settings)
        self._check_at = 0.0

    @property
    def terminal(self) -> Terminal | None:
        return self.cursor.terminal

    def __iter__(self) -> Iterator[Event]:
        cursor = self.cursor
        status = self._status()
        yield from cursor.check_start(status)
        yield from self._end_if_overdue(status)
        while not cursor.done:
            try:
                reply = self._retrying(self._read)
            except ResponseError as exc:
                if not wrong_type(exc):
                    raise
                yield from cursor.check_alive(NOT_A_RUN)  # its stream key was replaced
                return
            if reply:
                yield from cursor.feed(reply[0][1])
            elif time.monotonic() >= self._check_at:
                status = self._status()
                yield from cursor.check_alive(status)
                yield from self._end_if_overdue(status)

    def _read(self) -> list[tuple[str, list[Entry]]]:
        block = max(self._check_at - time.monotonic(), 0.01)
        cursor = self.cursor
        return xread_reply(self.client.xread(
            {cursor.keys.stream: cursor.last_id}, count=_BATCH, block=int(block * 1000)))

    def _retrying(self, call: Callable[[], T]) -> T:
        """``call()``, again after transient failures, for up to ``unavailable_timeout`` s."""
        give_up = time.monotonic() + self.settings.unavailable_timeout
        delay = _BACKOFF_MIN
        while True:
            try:
                return call()
            except TRANSIENT as exc:
                left = give_up - time.monotonic()
                if left <= 0:
                    raise ReaderError(
                        f"run {self.cursor.keys.run_id}: Redis unreachable for "
                        f"{self.settings.unavailable_timeout:g} s ({exc})") from exc
                time.sleep(min(delay, left))
                delay = min(delay * 2, _BACKOFF_MAX)

    def _status(self) -> RunStatus:
        status = self._retrying(
            lambda: run_status(self.client, self.cursor.keys.run_id, self.settings))
        longest = min(self.settings.liveness_interval, self.settings.block_timeout)
        self._check_at = time.monotonic() + self.cursor.next_check(status, longest)
        return status

    def _end_if_overdue(self, status: RunStatus) -> list[Event]:
        if not self.cursor.overdue(status):
            return []
        try:
            ended = self._retrying(
                lambda: end_if_overdue(self.client, self.cursor.keys.run_id, self.settings))
        except StreamGoneError:  # a key of the run holds someone else's value
            return self.cursor.check_alive(status, unwritable=True)
        except ResponseError as exc:
            if not ending_refused(exc):
                raise
            return self.cursor.check_alive(status, unwritable=True)
        # read the stored ending at once; if the run did not end (claimed meanwhile), look
        # again shortly
        self._check_at = time.monotonic() + (0 if ended else DEADLINE_SLACK)
        return []


def read_events(client: SyncClient, run_id: str, settings: Settings, *,
                starting_after: object = None) -> RunReader:
    """The events of ``run_id`` after ``starting_after`` (a seq id; default: from the start).

    ``client`` needs a socket timeout longer than its longest blocking read (the shorter of
    ``liveness_interval`` and ``block_timeout``): ``streaming.client.sync_client(settings,
    reader=True)`` makes one. Raises ``InvalidRunId``/``InvalidCursor`` at once for bad input.
    """
    return RunReader(client, run_id, settings, starting_after=starting_after)
