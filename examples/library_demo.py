"""The library alone: a producer thread writes a run while this terminal tails it.

    python -m examples.library_demo [--chunks 40] [--rate 20]

Uses ``REDIS_URL`` if set, else starts a private embedded server for the run's duration.
Halfway through, the reader drops its connection and resumes from its cursor.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid

import click

from streaming import Settings, StreamWriter, mark_pending, read_events
from streaming.client import sync_client
from streaming.embedded import EmbeddedServer


def produce(writer: StreamWriter, run_id: str, chunks: int, rate: float) -> None:
    run = writer.open(run_id)
    for i in range(chunks):
        run.send(json.dumps({"text": f"chunk {i + 1} of {chunks} "}))
        time.sleep(1 / rate)
    run.finish()


@click.command()
@click.option("--chunks", default=40, show_default=True)
@click.option("--rate", default=20.0, show_default=True, help="Chunks per second.")
def main(chunks: int, rate: float) -> None:
    with contextlib.ExitStack() as stack:
        settings = Settings.from_env()
        if not settings.redis_url:
            server = stack.enter_context(EmbeddedServer())
            settings = settings.replace(redis_url=server.url)
            click.echo(f"embedded server at {server.url} (pid {os.getpid()})")
        writer = StreamWriter(settings).start()
        stack.callback(writer.stop)
        client = sync_client(settings, reader=True)
        run_id = f"run-{uuid.uuid4().hex}"
        mark_pending(client, run_id, settings)
        threading.Thread(target=produce, args=(writer, run_id, chunks, rate), daemon=True).start()
        cursor = 0
        for event in read_events(client, run_id, settings):
            click.echo(f"{event.seq:>4} {event.event:<9} {event.data}")
            cursor = event.seq or cursor
            if cursor == chunks // 2:
                break
        click.echo(f"---- disconnected at seq {cursor}; resuming with starting_after={cursor}")
        reader = read_events(client, run_id, settings, starting_after=cursor)
        for event in reader:
            click.echo(f"{event.seq:>4} {event.event:<9} {event.data}")
        click.echo(f"run {run_id} ended: {reader.terminal}")


if __name__ == "__main__":
    main()
