"""``python -m streaming``: follow a run from a terminal, and operate the store.

``tail`` prints a run's events as they arrive and exits at its terminal entry with a status
that tells the ending apart (see ``EXIT_CODES``).

It follows the client rule for ``restarted``: an attempt that starts over (``"resume": false``)
replaces everything printed before it, so ``tail`` prints a rule saying so and the output to
keep is what follows it; an attempt that resumes (``"resume": true``) continues the text above.

The operator's commands (``runs``, ``inspect``, ``end``, ``summary``) print for people, or
JSON with ``--json`` (``streaming.admin`` gathers what they show).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from redis.exceptions import RedisError

from . import admin
from .client import SyncClient, sync_client
from .control import When, end_run, run_status
from .errors import InvalidInput, StreamingError
from .reader import read_events
from .settings import Settings
from .wire import Event, Terminal

__all__ = ["EXIT_CODES", "main"]

#: Exit status of ``tail`` by ending; 2 stays click's usage error.
EXIT_CODES = {
    Terminal.DONE: 0,
    Terminal.ERROR: 1,
    Terminal.CANCELLED: 3,
    Terminal.TIMEOUT: 4,
    Terminal.LOST: 5,
    Terminal.NOT_FOUND: 6,
}
EXIT_GAP = 7  # the run ended, but the reader was told of a gap in its history


@click.group()
def main() -> None:
    """Resumable run streams on Redis."""


@main.command()
@click.argument("run_id")
@click.option("--starting-after", default="0", show_default=True,
              help="Print only events with a seq id above this one.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event.")
@click.option("--redis-url", envvar="REDIS_URL", required=True,
              help="The stream store [env: REDIS_URL].")
def tail(run_id: str, starting_after: str, as_json: bool, redis_url: str) -> None:
    """Print RUN_ID's events as they arrive; exit at its ending.

    Exit status: 0 done, 1 error, 3 cancelled, 4 timeout, 5 producer lost, 6 not found,
    7 done or ended after a gap in the stored history.
    """
    settings = Settings.from_env(redis_url=redis_url)
    gap = False
    try:
        reader = read_events(sync_client(settings, reader=True), run_id, settings,
                             starting_after=starting_after)
        for event in reader:
            gap = gap or event.event == "gap"
            click.echo(_render(event, as_json))
    except InvalidInput as exc:
        raise click.BadParameter(str(exc)) from exc
    except (StreamingError, RedisError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    terminal = reader.terminal or Terminal.DONE
    sys.exit(EXIT_GAP if gap and terminal is Terminal.DONE else EXIT_CODES[terminal])


def _render(event: Event, as_json: bool) -> str:
    if as_json:
        return json.dumps({"seq": event.seq, "event": event.event, "data": event.data,
                           "terminal": event.terminal.value if event.terminal else None})
    if event.event == "message":
        return event.data
    if event.event == "restarted":
        return _restarted(event.data)
    return f"[{event.event}] {event.data}"


def _restarted(data: str) -> str:
    """The line that tells a reader what a ``restarted`` event means for the output above."""
    try:
        info = json.loads(data)
    except ValueError:
        info = None
    if not isinstance(info, dict):
        return f"[restarted] {data}"
    attempt = info.get("attempt", "?")
    if info.get("resume"):
        return (f"[restarted] attempt {attempt} continues after chunk {info.get('chunks', 0)}; "
                "the output above stands")
    return (f"[restarted] attempt {attempt} starts over: the output above is void, "
            "what follows replaces it")


# -- the operator's commands ----------------------------------------------------------------

_REDIS_URL = click.option("--redis-url", envvar="REDIS_URL", required=True,
                          help="The stream store [env: REDIS_URL].")
_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
#: ``--state`` names (what an operator calls them) and the stored states they mean.
_STATES = {"queued": "pending", "pending": "pending", "live": "live", "idle": "idle",
           "ended": "ended"}


def _client(redis_url: str) -> tuple[SyncClient, Settings]:
    settings = Settings.from_env(redis_url=redis_url)
    return sync_client(settings), settings


@main.command("runs")
@click.option("--state", "states", multiple=True, type=click.Choice(sorted(_STATES)),
              help="Only runs in this state (repeat for more); all by default.")
@_JSON
@_REDIS_URL
def runs_command(states: tuple[str, ...], as_json: bool, redis_url: str) -> None:
    """List runs with their state, age, attempt, last seq and lag (seconds since their last
    stored entry)."""
    client, settings = _client(redis_url)
    rows = _store_call(lambda: admin.list_runs(client, settings, [_STATES[s] for s in states]))
    if as_json:
        click.echo(json.dumps([_named(row.as_dict()) for row in rows]))
        return
    click.echo(f"{'RUN':<40} {'STATE':<8} {'AGE':>9} {'ATTEMPT':>7} {'LAST SEQ':>9} "
               f"{'LAG':>9}  ENDING")
    for row in rows:
        click.echo(f"{row.run_id:<40} {admin.STATE_NAMES[row.state]:<8} {_age(row.age):>9} "
                   f"{row.attempt:>7} {row.last_seq:>9} {_age(row.lag):>9}  {row.ending}")


@main.command("inspect")
@click.argument("run_id")
@_JSON
@_REDIS_URL
def inspect_command(run_id: str, as_json: bool, redis_url: str) -> None:
    """Show everything stored about RUN_ID: meta, lease, ending, stream length and memory.

    Exit status 6 when the store has nothing of the run.
    """
    client, settings = _client(redis_url)
    detail = _store_call(lambda: admin.inspect_run(client, run_id, settings))
    if as_json:
        click.echo(json.dumps(_named(detail.as_dict())))
    else:
        _print_detail(detail)
    if detail.row.state == "missing" and not detail.stream_length:
        sys.exit(EXIT_CODES[Terminal.NOT_FOUND])


def _print_detail(detail: admin.RunDetail) -> None:
    row = detail.row
    lines = [
        ("run", row.run_id), ("state", admin.STATE_NAMES[row.state]),
        ("attempt", row.attempt), ("last seq", row.last_seq), ("age", _age(row.age)),
        ("lag", _age(row.lag)), ("ending", row.ending or "-"),
        ("lease", f"{detail.lease} ({detail.lease_ttl_ms} ms left)" if detail.lease else "-"),
        ("stream", f"{detail.stream_length} entries, {detail.stream_bytes} bytes"),
        ("meta", f"{detail.meta_bytes} bytes: "
                 + ", ".join(f"{k}={v}" for k, v in sorted(detail.meta.items()))),
        ("ttl", f"{detail.ttl} s" if detail.ttl >= 0 else "-"),
        ("ending entry", detail.ending_entry["data"].strip() if detail.ending_entry else "-"),
    ]
    for name, value in lines:
        click.echo(f"{name + ':':<14}{value}")


@main.command("end")
@click.argument("run_id")
@click.option("--reason", required=True, help="Why: the message readers get with the ending.")
@click.option("--kind", type=click.Choice(["cancelled", "error", "timeout", "lost"]),
              default="cancelled", show_default=True, help="The ending to store.")
@click.option("--force", is_flag=True,
              help="End it even over a live writer (which is fenced off).")
@_JSON
@_REDIS_URL
def end_command(run_id: str, reason: str, kind: str, force: bool, as_json: bool,
                redis_url: str) -> None:
    """End RUN_ID by hand with REASON, through the guarded ending every reader sees.

    A run whose writer is live is left alone unless --force. Exit status: 0 ended (now or
    before), 1 not ended (live), 6 no such run.
    """
    client, settings = _client(redis_url)
    before = _store_call(lambda: run_status(client, run_id, settings))
    when: When = "always" if force else "not_live"
    ending = _store_call(lambda: end_run(client, run_id, settings, kind, reason, when=when))
    now = ending is not None and before.terminal is None
    if as_json:
        click.echo(json.dumps({"run_id": run_id, "ending": ending.value if ending else None,
                               "ended_now": now, "state": admin.STATE_NAMES[before.state]}))
    elif ending is None:
        click.echo(f"run {run_id} not ended: it is {admin.STATE_NAMES[before.state]}"
                   + (" (use --force to end it over its writer)" if before.state == "live"
                      else ""))
    else:
        click.echo(f"run {run_id} {'ended' if now else 'had already ended'}: {ending.value}")
    if ending is None:
        missing = before.state == "missing" and not before.stream
        sys.exit(EXIT_CODES[Terminal.NOT_FOUND] if missing else 1)


@main.command("summary")
@_JSON
@_REDIS_URL
def summary_command(as_json: bool, redis_url: str) -> None:
    """Count runs by state, their streams and entries, and the memory their keys use."""
    client, settings = _client(redis_url)
    found = _store_call(lambda: admin.summary(client, settings))
    if as_json:
        body = found.as_dict()
        body["runs"] = {admin.STATE_NAMES[k]: v for k, v in found.runs.items()}
        click.echo(json.dumps(body))
        return
    counts = ", ".join(f"{v} {admin.STATE_NAMES[k]}" for k, v in found.runs.items())
    click.echo(f"runs:    {sum(found.runs.values())} ({counts})")
    click.echo(f"streams: {found.streams} ({found.entries} entries)")
    click.echo(f"memory:  {found.stream_bytes + found.meta_bytes} bytes in run keys "
               f"({found.stream_bytes} streams, {found.meta_bytes} meta) of "
               f"{found.used_memory} used by the server")


T = TypeVar("T")


def _store_call(call: Callable[[], T]) -> T:
    try:
        return call()
    except InvalidInput as exc:
        raise click.BadParameter(str(exc)) from exc
    except (StreamingError, RedisError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


def _named(body: dict[str, Any]) -> dict[str, Any]:
    """A row as JSON, its state under the name the tools use (queued for pending)."""
    return body | {"state": admin.STATE_NAMES.get(body["state"], body["state"])}


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"
