"""``python -m benchmarks.soak [--seconds N] [--seed S] [--ci]``: the chaos soak.

Starts a private store with an append-only file, prefork Celery workers and the reference app
(each way to the store through a fault proxy), runs ``demo`` runs with readers that drop and
resume through every cursor form, injects faults chosen from the seed, then judges every run
against the stored stream. Exit status: 0 pass, 1 the judge found problems, 2 the soak itself
failed. Every child is killed on the way out, Ctrl-C and errors included.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

import click

from .procs import Fleet
from .proxy import FaultProxy
from .report import render
from .runner import CI, FULL, soak


@click.command()
@click.option("--ci", is_flag=True, help="About a minute: few runs, every kind of fault.")
@click.option("--seconds", type=float, default=None,
              help=f"How long faults are injected [default: {FULL.seconds:g}, --ci "
                   f"{CI.seconds:g}]; the readers' drain comes after.")
@click.option("--seed", type=int, default=1, show_default=True,
              help="Chooses the texts, readers and faults.")
@click.option("--workers", type=int, default=None, help="Prefork workers [default: 2].")
@click.option("--env", "extra", multiple=True, metavar="NAME=VALUE",
              help="A setting for every component (STREAMING_*, WORKER_*); repeatable.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write the figures and every run's verdict here.")
@click.option("--keep", is_flag=True, help="Keep the logs and AOF directory even on a pass.")
def main(ci: bool, seconds: float | None, seed: int, workers: int | None,
         extra: tuple[str, ...], json_path: Path | None, keep: bool) -> None:
    """Chaos soak of the run lifecycle: real workers, store, app, proxies and faults."""
    mode = CI if ci else FULL
    changes: dict[str, Any] = {}
    if seconds is not None:
        changes["seconds"] = seconds
    if workers is not None:
        changes["workers"] = workers
    mode = dataclasses.replace(mode, **changes)
    env = dict(_pair(item) for item in extra)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # also when started with SIGINT ignored
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    fleet, proxies = Fleet(), list[FaultProxy]()
    summary: dict[str, Any] | None = None
    try:
        summary = asyncio.run(soak(mode, seed, env, workdir, fleet, proxies, _say))
    except KeyboardInterrupt:
        _say("interrupted")
        sys.exit(130)
    except Exception as exc:  # boundary: the soak itself failed; say so, keep the logs
        _say(f"soak failed: {type(exc).__name__}: {exc}")
        raise SystemExit(2) from exc
    finally:
        for proxy in proxies:
            proxy.close()
        fleet.close()
        if summary is None or summary["verdict"] != "pass" or keep:
            _say(f"logs and AOF kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    click.echo(render(summary))
    if json_path is not None:
        json_path.write_text(json.dumps(summary, indent=1, default=str))
    sys.exit(0 if summary["verdict"] == "pass" else 1)


def _pair(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--env")
    return name, value


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _say(text: str) -> None:
    click.echo(f"[{time.strftime('%H:%M:%S')}] {text}", err=True)


if __name__ == "__main__":
    main()
