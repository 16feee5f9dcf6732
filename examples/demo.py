"""The demo: the whole system on one machine, with one command.

    python -m examples.demo            # start everything, follow one run; Ctrl-C stops it all
    python -m examples.demo --once     # follow one run, stop everything, exit 0 if it ended done

It starts a private Redis-compatible server (``streaming.embedded``) unless ``REDIS_URL`` is
set, a prefork Celery worker (``celery -A worker worker -P prefork -c 2``), Flower and the
reference web app (``examples.app`` under uvicorn), prints their URLs, then starts a run
through the app's HTTP API and follows its event stream in the terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import secrets
import shlex
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from rich.console import Console
from rich.live import Live

from examples.app import DEMO_TEXT
from examples.follow import RunView, follow
from examples.services import ServiceError, Services
from streaming.embedded import EmbeddedServer, free_port
from worker.config import FLOWER_TASKS_COLUMNS

ROOT = Path(__file__).resolve().parent.parent
CHUNK_SIZE = 8


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--once", action="store_true",
                        help="exit after one run: 0 if it ended done, 1 otherwise")
    parser.add_argument("--port", type=int, default=8000,
                        help="web app port (default 8000; 0: any free port)")
    parser.add_argument("--flower-port", type=int, default=5555, help="Flower port")
    parser.add_argument("--no-flower", action="store_true", help="do not start Flower")
    parser.add_argument("--rate", type=float, default=20.0, help="chunks per second of the run")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: it may arrive ignored
        signal.signal(signum, _interrupt)
    try:
        with _system(args, console) as (app_url, redis_url, services):
            code = _demo_run(console, app_url, redis_url, args.rate)
            if args.once:
                return code
            console.print(f"\nOpen [bold]{app_url}/[/] to start more runs. Ctrl-C stops it all.")
            _supervise(services)
    except KeyboardInterrupt:
        console.print("\nstopped")
        return 0
    except ServiceError as exc:
        console.print(f"[red]{exc}[/]")
        return 1
    return 0


@contextlib.contextmanager
def _system(args: argparse.Namespace,
            console: Console) -> Iterator[tuple[str, str, Services]]:
    """Start the store, worker, Flower and app; yield the app's and store's URLs; stop them."""
    with contextlib.ExitStack() as stack:
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            console.print("starting the embedded Redis-compatible server (no REDIS_URL given)")
            redis_url = stack.enter_context(EmbeddedServer()).url
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="streaming-demo-")))
        services = stack.enter_context(Services(ROOT, _child_env(redis_url), logs, console))
        urls = _start_services(services, args)
        _print_urls(console, redis_url, urls, logs)
        yield urls["app"], redis_url, services


def _child_env(redis_url: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return os.environ | {
        "REDIS_URL": redis_url,
        "STREAMING_TOKEN_SECRET": os.environ.get("STREAMING_TOKEN_SECRET")
        or secrets.token_urlsafe(32),
        "PYTHONPATH": path,
        "PYTHONUNBUFFERED": "1",
    }


def _start_services(services: Services, args: argparse.Namespace) -> dict[str, str]:
    python = [sys.executable, "-m"]
    app_port = _port(args.port)
    services.start("worker", [*python, "celery", "-A", "worker", "worker", "-P", "prefork",
                              "-c", str(args.concurrency), "-l", "info",
                              "-n", f"demo-{os.getpid()}@%h"])
    urls = {"app": f"http://127.0.0.1:{app_port}"}
    if not args.no_flower:
        flower_port = _port(args.flower_port)
        services.start("flower", [*python, "celery", "-A", "worker", "flower",
                                  "--address=127.0.0.1", f"--port={flower_port}",
                                  f"--tasks_columns={FLOWER_TASKS_COLUMNS}"])
        urls["flower"] = f"http://127.0.0.1:{flower_port}"
    services.start("app", [*python, "uvicorn", "--factory", "examples.app:create_app",
                           "--host", "127.0.0.1", "--port", str(app_port),
                           "--log-level", "warning"],
                   env={"FLOWER_URL": urls.get("flower", "")})  # the page links runs to it
    services.wait_for_http("app", urls["app"] + "/", timeout=30)
    services.wait_for_log("worker", " ready.", timeout=60)
    if "flower" in urls:
        services.wait_for_http("flower", urls["flower"] + "/healthcheck", timeout=30,
                               required=False)
    return urls


def _print_urls(console: Console, redis_url: str, urls: dict[str, str], logs: Path) -> None:
    console.print(f"  [bold]web app[/]  {urls['app']}/   (open it to start runs in a browser)")
    if "flower" in urls:
        console.print(f"  [bold]Flower[/]   {urls['flower']}/")
    console.print(f"  [bold]Redis[/]    {redis_url}")
    console.print(f"  [bold]logs[/]     {logs}/")


def _demo_run(console: Console, app_url: str, redis_url: str, rate: float) -> int:
    """Start one run through the app's API and follow it; 0 if it ended done."""
    with httpx.Client(base_url=app_url, timeout=30) as client:
        client.get("/").raise_for_status()  # the page session: it may start runs
        response = client.post("/runs", json={"rate": rate, "chunk_size": CHUNK_SIZE})
        response.raise_for_status()
        run = response.json()
        view = RunView(run["run_id"], total=math.ceil(len(DEMO_TEXT) / CHUNK_SIZE))
        console.print(f"\nstarted run {run['run_id']}; following {app_url}{run['stream_url']}")
        console.print(tail_hint(run["run_id"], redis_url), soft_wrap=True, highlight=False,
                      markup=False)
        with Live(view, console=console, refresh_per_second=12):
            follow(client, run["stream_url"], view)
    if not console.is_terminal:
        console.print()  # a non-interactive Live leaves its last line open
    console.print(f"run ended: [bold]{view.state}[/] {view.message}")
    return 0 if view.state == "done" else 1


def tail_hint(run_id: str, redis_url: str) -> str:
    """The command that follows the run from another terminal, ready to copy."""
    return (f"follow it from another terminal:\n"
            f"  REDIS_URL={shlex.quote(redis_url)} python -m streaming tail {run_id}")


def _port(preferred: int) -> int:
    """``preferred`` if it is free on 127.0.0.1, else (or for 0) any free port."""
    if preferred == 0:
        return free_port()
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


def _supervise(services: Services) -> None:
    """Until Ctrl-C (or SIGTERM): raise ``ServiceError`` as soon as a child dies."""
    while True:
        services.check()
        time.sleep(1.0)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
