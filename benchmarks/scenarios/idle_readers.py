"""Idle readers: what N readers waiting on silent runs cost the server.

The runs are marked queued (``mark_pending``) and nothing writes to them, so every command the
server processes in the window is a reader's. Counted from ``INFO commandstats`` before and
after a window, once the readers are all waiting. The project's readers share one
``ReaderHub``, whose commands come in cycles (one blocking read and one liveness check per
``liveness_interval``): its window is exactly one cycle, from the end of one liveness check to
the end of the next. The seed's readers each poll ``XRANGE`` every 0.1 s: a fixed window.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis

from streaming.control import mark_pending

from ..core import Context, Figure, Result, Target, scenario
from ..procs import Child
from ..server import CommandMeter, calls_since, command_calls
from .common import cleanup, run_ids
from .sides import HUB_CLIENT_NOTE, hub_readers, seed_readers

NAME = "idle-readers"
SETTLE = 0.5


@scenario(NAME, "Idle readers: server commands/s while N readers wait on silent runs")
def run(ctx: Context) -> Result:
    sizes = ctx.size((100, 1000), (100, 10_000))
    seed_sizes = ctx.size((100, 200), (100, 1000))
    window = ctx.size(1.5, 10.0)
    # Quick mode shortens the hub's intervals so its periodic commands fall in the window.
    overrides = ctx.size({"liveness_interval": 0.5, "block_timeout": 0.5}, {})
    result = Result(NAME, params={"readers": sizes, "seed_readers": seed_sizes,
                                  "project_window": "one liveness cycle",
                                  "seed_window_seconds": window,
                                  "settings": overrides or "defaults"})
    cycle = ctx.settings(**overrides).liveness_interval
    for n, seed_n in zip(sizes, seed_sizes, strict=True):
        project = _measure(ctx, -cycle, lambda ids: Child(
            hub_readers, ctx.redis_url, ids, overrides, 1, 1.0, name="idle-project"), n, "p")
        seed = None
        if ctx.seed:
            seed = _measure(ctx, window, lambda ids: Child(
                seed_readers, ctx.redis_url, ctx.seed_path, ids, 1.0, name="idle-seed"),
                seed_n, "s")
        _add(result, ctx, n, seed_n, project, seed)
        cleanup(ctx.redis_url, NAME)
    result.notes.append(HUB_CLIENT_NOTE)
    return result


def _add(result: Result, ctx: Context, n: int, seed_n: int, project: dict[str, Any],
         seed: dict[str, Any] | None) -> None:
    label = f"N={n:,}" + (f" (seed: N={seed_n:,})" if seed and seed_n != n else "")
    for key, name, unit, target in (
            ("sent_per_reader", "commands sent per reader", "cmd/s", Target(limit=0.05)),
            ("per_reader", "server commands per reader (script calls included)", "cmd/s",
             Target(limit=0.05)),
            ("server_cpu_percent", "server CPU", "% of a core", None),
            ("cpu_percent", "reader process CPU", "% of a core", None)):
        result.add(Figure(f"{name}, {label}", unit, "lower", project[key],
                          seed[key] if seed else ctx.seed_missing, target=target))
    result.params[f"N={n}"] = {"project": project, "seed": seed}
    if seed and seed["per_reader"] < 9.5:
        result.notes.append(
            f"seed at N={seed_n:,}: its readers poll every {1 / seed['per_reader']:.2f} s "
            "instead of 0.1 s: one process cannot keep up with the polling")


def _measure(ctx: Context, window: float, make: Any, n: int, side: str) -> dict[str, Any]:
    """Readers' commands over ``window`` s, or over one liveness cycle of ``-window`` s."""
    ids = run_ids(NAME, n, side)
    _mark_pending(ctx, ids)
    client = redis.Redis.from_url(ctx.redis_url)
    meter = CommandMeter(client)
    with make(ids) as readers:
        joined = readers.channel.expect("ready", 300)
        time.sleep(SETTLE)
        if window < 0:
            _after_liveness_check(client, -window * 2 + 10)
        cpu_before = _cpu_seconds(readers.pid)
        meter.start()
        if window < 0:
            _after_liveness_check(client, -window * 2 + 10)
        else:
            time.sleep(window)
        counted = meter.stop()
        cpu = _cpu_seconds(readers.pid) - cpu_before
        readers.channel.send("stop", {})
        readers.channel.expect("result", 120)
    client.close()
    return {"readers": n, "per_reader": counted["per_second"] / n,
            "sent_per_reader": counted["sent_per_second"] / n,
            "commands_per_second": counted["per_second"], "by_command": counted["by_command"],
            "server_cpu_percent": counted["server_cpu_percent"],
            "cpu_percent": 100 * cpu / counted["seconds"], **(joined or {})}


def _after_liveness_check(client: redis.Redis, timeout: float) -> None:
    """Return once the hub ran its next liveness check (``EVALSHA`` of ``STATUS``, one call
    per 300 runs) and it has been over for 0.3 s."""
    deadline = time.monotonic() + timeout
    before = command_calls(client)
    while not calls_since(client, before).get("evalsha"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no liveness check within {timeout} s")
        time.sleep(0.02)
    last, quiet_since = calls_since(client, before), time.monotonic()
    while time.monotonic() - quiet_since < 0.3:
        time.sleep(0.02)
        now = calls_since(client, before)
        if now != last:
            last, quiet_since = now, time.monotonic()


def _mark_pending(ctx: Context, ids: list[str]) -> None:
    client = redis.Redis.from_url(ctx.redis_url, decode_responses=True)
    settings = ctx.settings(queue_timeout=600)  # the readers wait; no run times out
    for run_id in ids:
        mark_pending(client, run_id, settings)
    client.close()


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of process ``pid`` (Linux ``/proc``); NaN elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")
