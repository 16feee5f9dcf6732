"""Follow a run's event stream in the terminal: live text and progress, resuming after drops.

The terminal twin of the browser page: it reconnects with ``Last-Event-ID`` like
``EventSource`` does, so a dropped connection costs nothing. It follows the client rule for
``restarted``: an attempt that starts over (``"resume": false``) replaces the text shown so far;
one that resumes (``"resume": true``) continues it.
"""

from __future__ import annotations

import json
import time

import httpx
from httpx_sse import ServerSentEvent, connect_sse
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

__all__ = ["RunView", "follow"]

ENDINGS = ("done", "error", "cancelled")


class RunView:
    """What the terminal shows of one run; rich re-renders it on every refresh."""

    def __init__(self, run_id: str, total: int | None = None) -> None:
        self.run_id = run_id
        self.total = total
        self.text = ""
        self.chunks = 0
        self.last_id = ""
        self.reconnects = 0
        self.state = "waiting"
        self.message = ""
        self.notices: list[str] = []

    @property
    def ended(self) -> bool:
        return self.state in ENDINGS

    def feed(self, event: ServerSentEvent) -> None:
        """Take one event of the stream."""
        if event.id:
            self.last_id = event.id
        if event.event == "message" and event.data == "[DONE]":
            self.state = "done"
        elif event.event == "message" and event.data:
            self.state = "streaming"
            self.chunks += 1
            self.text += _chunk_text(event.data)
        elif event.event in ("error", "cancelled"):
            self.state, self.message = event.event, _reason(event.data)
        elif event.event == "restarted":
            self.restart(_restart_info(event.data))
        elif event.event == "gap":
            self.notices.append(f"{event.event}: {event.data}")

    def restart(self, info: dict[str, object]) -> None:
        """Apply the client rule: drop the earlier attempts' output unless this one resumes."""
        attempt = info.get("attempt", "?")
        if info.get("resume"):
            self.notices.append(f"restarted: attempt {attempt} continues the text")
            return
        self.text, self.chunks = "", 0
        self.notices.append(f"restarted: attempt {attempt} starts over; earlier text dropped")

    def __rich__(self) -> RenderableType:
        bar = ProgressBar(total=self.total or max(self.chunks, 1), completed=self.chunks,
                          width=30)
        status = Text.assemble(
            (self.state, "bold green" if self.state == "done" else "bold"),
            f"  {self.chunks}" + (f"/{self.total}" if self.total else "") + " chunks",
            f"  event {self.last_id or '-'}  reconnects {self.reconnects}",
            (f"  {self.message}" if self.message else "", "red"),
            no_wrap=True,
        )
        line = Table.grid(padding=(0, 2))
        line.add_row(bar, status)
        panel = Panel(Text(self.text), title=f"run {self.run_id}", title_align="left")
        return Group(panel, line, *(Text(n, style="yellow") for n in self.notices))


def follow(client: httpx.Client, stream_url: str, view: RunView, *,
           max_reconnects: int = 30) -> RunView:
    """Read the stream into ``view`` until the run ends, reconnecting from its last id."""
    while not view.ended:
        try:
            if _read_once(client, stream_url, view):
                return view
        except httpx.TransportError as exc:
            view.notices.append(f"connection lost ({type(exc).__name__}), resuming")
        if view.reconnects >= max_reconnects:
            view.state, view.message = "error", "gave up reconnecting"
            return view
        view.reconnects += 1
        time.sleep(min(0.2 * view.reconnects, 2.0))
    return view


def _read_once(client: httpx.Client, stream_url: str, view: RunView) -> bool:
    """One connection; True when there is nothing more to read."""
    headers = {"Last-Event-ID": view.last_id} if view.last_id else {}
    with connect_sse(client, "GET", stream_url, headers=headers,
                     timeout=httpx.Timeout(10.0, read=None)) as source:
        if source.response.status_code == 204:  # we already had the ending
            return True
        source.response.raise_for_status()
        for event in source.iter_sse():
            view.feed(event)
            if view.ended:
                return True
    return False


def _chunk_text(data: str) -> str:
    try:
        value = json.loads(data)
    except ValueError:
        return data
    return value["text"] if isinstance(value, dict) and isinstance(value.get("text"), str) \
        else data


def _restart_info(data: str) -> dict[str, object]:
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _reason(data: str) -> str:
    try:
        body = json.loads(data)
    except ValueError:
        return data
    inner = body.get("error") or body.get("cancelled") or {}
    return str(inner.get("message") or inner.get("reason") or data)
