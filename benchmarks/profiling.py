"""``python -m benchmarks.profiling``: a scenario's busiest process under py-spy, and its figures.

    python -m benchmarks.profiling web --clients 2000 --out web.txt [--native]
    python -m benchmarks.profiling writer --out writer.txt
    python -m benchmarks.profiling gc-modes --clients 2000 --rounds 2

``web``: one step of ``web-clients`` (a fresh app, N clients, one run each at 1 chunk/s) with
``py-spy record`` attached to the app for the streaming window. ``writer``: the throughput
scenario's writer (runs x chunks interleaved) in this process under ``py-spy record``.
The profile is written as py-spy's ``raw`` (collapsed stacks) and summarised by ``top``: the
functions with the most samples, self and total. Needs ``pip install py-spy`` (not a
dependency of the project).
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from streaming.embedded import EmbeddedServer
from streaming.gcpolicy import MODES

from .core import Context
from .scenarios.tiers import uvicorn_args
from .scenarios.web_clients import step
from .stats import percentile

RATE_HZ = 200


@click.group()
def main() -> None:
    """Profile a scenario's busiest process with py-spy."""


@main.command()
@click.option("--clients", default=2000, show_default=True)
@click.option("--seconds", default=10.0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--native", is_flag=True, help="Also sample C frames (py-spy --native).")
def web(clients: int, seconds: float, out: Path, native: bool) -> None:
    """The app process of one web-clients step."""
    with EmbeddedServer() as server:
        ctx = Context(server.url, False, None, None, server)
        found = step(ctx, clients, seconds, uvicorn_args(),
                     watch=lambda pid: _recording(pid, out, seconds, native))
    click.echo({k: v for k, v in found.items() if k != "delays_ns"})
    click.echo(top(out))


@contextlib.contextmanager
def _recording(pid: int, out: Path, seconds: float, native: bool) -> Iterator[None]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    args = [spy, "record", "-p", str(pid), "-r", str(RATE_HZ), "-d", str(int(seconds)),
            "-f", "raw", "-o", str(out)]
    # --nonblocking (no pauses of the app) cannot unwind C frames: --native pauses it.
    process = subprocess.Popen([*args, "--native"] if native else [*args, "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        process.wait(timeout=seconds + 60)


@main.command("gc-modes")
@click.option("--clients", default=2000, show_default=True)
@click.option("--seconds", default=10.0, show_default=True)
@click.option("--rounds", default=2, show_default=True)
@click.option("--modes", default=",".join(MODES), show_default=True)
def gc_modes(clients: int, seconds: float, rounds: int, modes: str) -> None:
    """web-clients at one N under each ``STREAMING_GC_MODE``, the modes taking turns."""
    found: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes.split(",")}
    with EmbeddedServer() as server:
        ctx = Context(server.url, False, None, None, server)
        for _ in range(rounds):
            for mode, runs in found.items():
                os.environ["STREAMING_GC_MODE"] = mode
                one = step(ctx, clients, seconds, uvicorn_args())
                runs.append(one)
                click.echo(f"{mode:10} p50 {one['p50_ms']:8.1f} ms  p99 {one['p99_ms']:8.1f} ms  "
                           f"max {one['max_ms']:8.1f} ms  app CPU {one['app_cpu_percent']:5.1f}%  "
                           f"RSS/client {one['rss_per_client_kib']:5.1f} KiB  "
                           f"lost+repeated {one['lost'] + one['repeated']}  "
                           f"load {os.getloadavg()[0]:.2f}")
    for mode, runs in found.items():
        every = [d for one in runs for d in one["delays_ns"]]
        click.echo(f"{mode:10} all rounds: p50 {percentile(every, 50) / 1e6:8.1f} ms  "
                   f"p99 {percentile(every, 99) / 1e6:8.1f} ms")


@main.command()
@click.option("--runs", default=100, show_default=True)
@click.option("--chunks", default=1000, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--native", is_flag=True)
def writer(runs: int, chunks: int, out: Path, native: bool) -> None:
    """The throughput scenario's writer, run under py-spy in a child process."""
    with EmbeddedServer() as server, tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "write.py"
        script.write_text(_WRITER.format(url=server.url, runs=runs, chunks=chunks))
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        args = [spy, "record", "-r", str(RATE_HZ), "-f", "raw", "-o", str(out),
                *(["--native"] if native else []), "--", sys.executable, str(script)]
        done = subprocess.run(args, capture_output=True, text=True, timeout=600, check=True)
        click.echo(done.stdout.strip().splitlines()[-1:])
    click.echo(top(out))


_WRITER = """
import time
from streaming.settings import Settings
from streaming.writer import StreamWriter
writer = StreamWriter(Settings(redis_url={url!r})).start()
handles = [writer.open(f"profile-{{i}}") for i in range({runs})]
data = '{{"t":0,"text":"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod"}}'
started = time.perf_counter()
for _ in range({chunks}):
    for handle in handles:
        handle.send(data)
writer.flush(120)
print(f"{{{runs} * {chunks} / (time.perf_counter() - started):,.0f}} chunks/s")
writer.stop()
"""


def top(path: Path, count: int = 25) -> str:
    """The functions with the most samples in py-spy's raw output: self and total."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = [_short(frame) for frame in stack.split(";")]
        samples += int(n)
        own[frames[-1]] += int(n)
        for frame in set(frames):
            total[frame] += int(n)
    lines = [f"{samples} samples; top by self time:"]
    lines += [f"  {100 * n / samples:5.1f}%  {frame}" for frame, n in own.most_common(count)]
    lines.append("top by total time (the frame or its callees):")
    lines += [f"  {100 * n / samples:5.1f}%  {frame}" for frame, n in total.most_common(count)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit("/", 2)[-2:] if "/" in where else [where]
    return f"{name} ({'/'.join(file)})"




if __name__ == "__main__":
    main()
