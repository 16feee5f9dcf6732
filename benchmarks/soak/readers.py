"""SSE readers of the reference app that drop and resume through the four cursor forms.

A reader records every event it gets (its ``id:`` if any, event name, data, arrival time) and
every connection it makes; it stops at the run's ending or when the soak tells it to give up.
SSE is parsed here, not by a library, because the judge must know whether each event carried
an ``id:`` of its own (an ending the reader's server made up has none).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = ["FORMS", "Behaviour", "ReaderLog", "Received", "follow", "tail", "terminal_kind"]

#: How a reconnecting reader gives its cursor.
FORMS = ("last_event_id_header", "last_event_id_query", "starting_after_query", "post_body")


@dataclass(frozen=True)
class Behaviour:
    """When a reader drops its connection on purpose: never (``holder``), after a short random
    time (``dropper``), or at a fixed cap like an API gateway's (``gateway-20``, ``gateway-29``)."""

    name: str
    low: float | None = None
    high: float | None = None

    def drop_after(self, rng: random.Random) -> float | None:
        if self.low is None or self.high is None:
            return None
        return rng.uniform(self.low, self.high)


BEHAVIOURS = (Behaviour("holder"), Behaviour("dropper", 0.3, 4.0),
              Behaviour("gateway-20", 20.0, 20.0), Behaviour("gateway-29", 29.0, 29.0))


@dataclass
class Received:
    seq: int | None
    event: str
    data: str
    at: float  # wall clock


@dataclass
class ReaderLog:
    run_id: str
    name: str
    behaviour: str
    events: list[Received] = field(default_factory=list)
    forms: Counter[str] = field(default_factory=Counter)
    connections: int = 0
    drops: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    ending: str | None = None
    ending_seq: int | None = None
    ended_at: float | None = None
    gave_up_at: float | None = None
    anomalies: list[str] = field(default_factory=list)

    @property
    def cursor(self) -> int:
        seqs = [e.seq for e in self.events if e.seq is not None]
        return max(seqs, default=0)

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "name": self.name, "behaviour": self.behaviour,
                "connections": self.connections, "drops": self.drops,
                "forms": dict(self.forms), "statuses": dict(self.statuses),
                "errors": dict(self.errors), "ending": self.ending,
                "ending_seq": self.ending_seq, "ended_at": self.ended_at,
                "gave_up_at": self.gave_up_at, "anomalies": self.anomalies,
                "events": [[e.seq, e.event, e.data, round(e.at, 3)] for e in self.events]}


def terminal_kind(event: str, data: str) -> str | None:
    """The ending an SSE event announces, or None for a chunk, gap, ping or ``restarted``."""
    if event == "message":
        return "done" if data == "[DONE]" else None
    if event == "cancelled":
        return "cancelled"
    if event == "error":
        try:
            return str(json.loads(data)["error"].get("kind") or "error")
        except (ValueError, KeyError, TypeError, AttributeError):
            return "error"
    return None


@dataclass
class Connection:
    method: str
    params: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any] | None


def request_for(form: str | None, cursor: int, token: str) -> Connection:
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    if form == "last_event_id_header":
        return Connection("GET", {}, headers | {"Last-Event-ID": str(cursor)}, None)
    if form == "last_event_id_query":
        return Connection("GET", {"last_event_id": str(cursor)}, headers, None)
    if form == "starting_after_query":
        return Connection("GET", {"starting_after": str(cursor)}, headers, None)
    if form == "post_body":
        return Connection("POST", {}, headers, {"starting_after": cursor})
    return Connection("GET", {}, headers, None)  # the first connection: from the start


async def follow(client: httpx.AsyncClient, run_id: str, token: str, log: ReaderLog,
                 behaviour: Behaviour, rng: random.Random, give_up: Callable[[], float],
                 read_timeout: float) -> None:
    """Read ``run_id`` until its ending, or until wall time ``give_up()``."""
    first = True
    while log.ending is None:
        now = time.time()
        if now >= give_up():
            log.gave_up_at = now
            return
        form = None if first else rng.choice(FORMS)
        first = False
        drop = behaviour.drop_after(rng)
        window = give_up() - now if drop is None else min(drop, give_up() - now)
        try:
            async with asyncio.timeout(window):
                await _connect(client, run_id, token, log, form, read_timeout)
        except TimeoutError:
            log.drops += 1
        except httpx.HTTPError as exc:
            log.errors[type(exc).__name__] += 1
        if log.ending is None and len(log.anomalies) > 20:
            log.gave_up_at = time.time()
            return
        if log.ending is None:
            await asyncio.sleep(rng.uniform(0.05, 0.5))


async def _connect(client: httpx.AsyncClient, run_id: str, token: str, log: ReaderLog,
                   form: str | None, read_timeout: float) -> None:
    cursor = log.cursor
    request = request_for(form, cursor, token)
    log.connections += 1
    log.forms[form or "none"] += 1
    timeout = httpx.Timeout(read_timeout, connect=5.0)
    async with client.stream(request.method, f"/runs/{run_id}/stream", params=request.params,
                             headers=request.headers, json=request.body,
                             timeout=timeout) as response:
        log.statuses[response.status_code] += 1
        if response.status_code == 200:
            await _events(response, log)
        elif response.status_code == 204:
            log.anomalies.append(f"204 (ended) at cursor {cursor} before any ending")
        elif response.status_code not in (502, 503):
            body = (await response.aread())[:200].decode(errors="replace")
            log.anomalies.append(f"HTTP {response.status_code} at cursor {cursor}: {body}")


async def _events(response: httpx.Response, log: ReaderLog) -> None:
    fields: dict[str, list[str]] = {}
    async for line in response.aiter_lines():
        line = line.rstrip("\r\n")
        if line.startswith(":"):
            continue
        if line:
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value.removeprefix(" "))
            continue
        if "data" in fields or "event" in fields:
            _take(log, fields)
            if log.ending is not None:
                return
        fields = {}


def _take(log: ReaderLog, fields: dict[str, list[str]]) -> None:
    raw_id = fields.get("id", [None])[-1]
    seq = None
    if raw_id is not None:
        with contextlib.suppress(ValueError):
            seq = int(raw_id)
    event = fields.get("event", ["message"])[-1]
    data = "\n".join(fields.get("data", []))
    now = time.time()
    log.events.append(Received(seq, event, data, now))
    kind = terminal_kind(event, data)
    if kind is not None:
        log.ending, log.ending_seq, log.ended_at = kind, seq, now


async def tail(redis_url: str, env: dict[str, str], run_id: str, log: ReaderLog,
               give_up: Callable[[], float]) -> None:
    """Follow ``run_id`` with ``python -m streaming tail --json`` (the sync reader, straight
    from the store through ``redis_url``) until its ending or wall time ``give_up()``.

    A ``tail`` that exits without the ending (the store was unreachable too long) is run
    again from its cursor, as a user's retry loop would; each such exit is an anomaly.
    """
    while log.ending is None:
        if time.time() >= give_up():
            log.gave_up_at = time.time()
            return
        code, error = await _tail_once(redis_url, env, run_id, log, give_up)
        if log.ending is None and code is not None:
            log.anomalies.append(f"tail exited {code} without an ending: "
                                 f"{error.strip()[-200:]}")
            await asyncio.sleep(1.0)


async def _tail_once(redis_url: str, env: dict[str, str], run_id: str, log: ReaderLog,
                     give_up: Callable[[], float]) -> tuple[int | None, str]:
    log.connections += 1
    log.forms["cli"] += 1
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streaming", "tail", run_id, "--json", "--redis-url", redis_url,
        "--starting-after", str(log.cursor), env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
        start_new_session=True)
    assert process.stdout is not None and process.stderr is not None
    try:
        async with asyncio.timeout(max(give_up() - time.time(), 0.1)):
            async for line in process.stdout:
                _take_json(log, line)
            error = (await process.stderr.read()).decode(errors="replace")
            code = await process.wait()
            log.statuses[code] += 1
            return code, error
    except TimeoutError:
        return None, ""
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 5.0)


def _take_json(log: ReaderLog, line: bytes) -> None:
    try:
        item = json.loads(line)
    except ValueError:
        log.anomalies.append(f"not JSON: {line[:100]!r}")
        return
    now = time.time()
    log.events.append(Received(item.get("seq"), item.get("event", "message"),
                               item.get("data", ""), now))
    if item.get("terminal"):
        log.ending, log.ending_seq, log.ended_at = item["terminal"], item.get("seq"), now
