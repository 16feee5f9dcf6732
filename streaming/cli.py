"""``python -m streaming``: follow a run from a terminal.

``tail`` prints a run's events as they arrive and exits at its terminal entry with a status
that tells the ending apart (see ``EXIT_CODES``).

It follows the client rule for ``restarted``: an attempt that starts over (``"resume": false``)
replaces everything printed before it, so ``tail`` prints a rule saying so and the output to
keep is what follows it; an attempt that resumes (``"resume": true``) continues the text above.
"""

from __future__ import annotations

import json
import sys

import click
from redis.exceptions import RedisError

from .client import sync_client
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
