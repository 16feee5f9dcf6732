"""The faults the soak injects, chosen from a seeded random generator, and how each is done.

Kinds: a pool process killed (``child_kill``); a whole worker killed, then restarted
(``worker_kill``); the store stopped with SIGTERM or SIGKILL and started again on its
append-only file (``store_term``, ``store_kill``); the way between a worker and the store, or
between the app and the store, cut (connections closed, new ones refused) or stalled (bytes
held) for a while (``worker_cut``, ``worker_stall``, ``app_cut``, ``app_stall``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .judge import FaultRecord
from .procs import AofStore, Worker
from .proxy import FaultProxy

__all__ = ["KINDS", "FaultPlan", "Injector"]

KINDS = ("child_kill", "worker_kill", "store_term", "store_kill", "worker_cut", "worker_stall",
         "app_cut", "app_stall")
#: Kinds a short (CI) soak puts first, so that even a few faults cover processes and store.
FIRST = ("child_kill", "worker_kill", "store_kill")
WORKER_READY_TIMEOUT = 120.0
STORE_START_TIMEOUT = 30.0


@dataclass
class FaultPlan:
    """Which fault comes next and for how long: random from ``rng``; ``cover`` first takes
    every kind once (the important ones first) before choosing freely."""

    rng: random.Random
    durations: tuple[float, float]
    restart_downtime: tuple[float, float]
    cover: bool = False

    def __post_init__(self) -> None:
        first, rest = list(FIRST), [k for k in KINDS if k not in FIRST]
        self.rng.shuffle(first)
        self.rng.shuffle(rest)
        self._queue = first + rest if self.cover else []

    def next(self) -> tuple[str, float]:
        kind = self._queue.pop(0) if self._queue else self.rng.choice(KINDS)
        span = self.restart_downtime if kind.endswith(("kill", "term")) else self.durations
        return kind, 0.0 if kind == "child_kill" else round(self.rng.uniform(*span), 1)


class Injector:
    """Does the faults on the soak's components and records each one."""

    def __init__(self, store: AofStore, workers: list[Worker], proxies: dict[str, FaultProxy],
                 rng: random.Random, active_runs: Callable[[], Iterable[str]]) -> None:
        self.store = store
        self.workers = workers
        self.proxies = proxies
        self.rng = rng
        self.active_runs = active_runs
        self.records: list[FaultRecord] = []
        #: Wall time the current fault started at (None between faults).
        self.ongoing: float | None = None

    async def do(self, kind: str, seconds: float) -> FaultRecord:
        started = self.ongoing = time.time()
        try:
            record: FaultRecord = await getattr(self, "_" + kind)(kind, seconds, started)
        finally:
            self.ongoing = None
        self.records.append(record)
        return record

    async def _child_kill(self, kind: str, seconds: float, started: float) -> FaultRecord:
        alive = [w for w in self.workers if w.children()]
        if not alive:
            return FaultRecord(kind, "-", started, time.time(), "no pool process alive")
        busy = await self._busy_children()
        worker = self.rng.choice(alive)
        pids = worker.children()
        chosen = [p for p in pids if p in busy] or pids
        pid = self.rng.choice(chosen)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        run_id = busy.get(pid)
        detail = f"pid {pid}" + (f" running {run_id}" if run_id else " (idle)")
        return FaultRecord(kind, worker.child.name, started, time.time(), detail, run_id)

    async def _worker_kill(self, kind: str, seconds: float, started: float) -> FaultRecord:
        alive = [w for w in self.workers if w.child.alive]
        if not alive:
            return FaultRecord(kind, "-", started, time.time(), "no worker alive")
        worker = self.rng.choice(alive)
        worker.down_on_purpose = True
        await asyncio.to_thread(worker.child.kill)
        await asyncio.sleep(seconds)
        detail = await self.restart_worker(worker)
        return FaultRecord(kind, worker.child.name, started, time.time(),
                           f"down {seconds:g} s, {detail}")

    async def restart_worker(self, worker: Worker) -> str:
        worker.down_on_purpose = False
        worker.child.start()
        worker.restarts += 1
        began = time.monotonic()
        try:
            await asyncio.to_thread(worker.child.wait_for_log, " ready.", WORKER_READY_TIMEOUT)
        except RuntimeError as exc:
            return f"restart failed: {str(exc)[:300]}"
        return f"ready {time.monotonic() - began:.1f} s after its restart"

    async def _store_term(self, kind: str, seconds: float, started: float) -> FaultRecord:
        return await self._store_restart(kind, signal.SIGTERM, seconds, started)

    async def _store_kill(self, kind: str, seconds: float, started: float) -> FaultRecord:
        return await self._store_restart(kind, signal.SIGKILL, seconds, started)

    async def _store_restart(self, kind: str, how: signal.Signals, seconds: float,
                             started: float) -> FaultRecord:
        await asyncio.to_thread(self.store.down, how)
        await asyncio.sleep(seconds)
        await self.start_store()
        return FaultRecord(kind, "store", started, time.time(), f"down {seconds:g} s")

    async def start_store(self) -> None:
        await asyncio.to_thread(self.store.start, STORE_START_TIMEOUT)

    async def _worker_cut(self, kind: str, seconds: float, started: float) -> FaultRecord:
        return await self._proxy(kind, self.rng.choice(sorted(self.proxies.keys() - {"app"})),
                                 seconds, started)

    async def _worker_stall(self, kind: str, seconds: float, started: float) -> FaultRecord:
        return await self._worker_cut(kind, seconds, started)

    async def _app_cut(self, kind: str, seconds: float, started: float) -> FaultRecord:
        return await self._proxy(kind, "app", seconds, started)

    async def _app_stall(self, kind: str, seconds: float, started: float) -> FaultRecord:
        return await self._proxy(kind, "app", seconds, started)

    async def _proxy(self, kind: str, name: str, seconds: float,
                     started: float) -> FaultRecord:
        proxy = self.proxies[name]
        if kind.endswith("cut"):
            proxy.cut(seconds)
        else:
            proxy.stall(seconds)
        await asyncio.sleep(seconds)
        proxy.heal()
        return FaultRecord(kind, name, started, time.time(), f"{seconds:g} s")

    async def _busy_children(self) -> dict[int, str]:
        """Pool process -> the run it streams, from the tasks' STREAMING progress."""
        client = aioredis.Redis(port=self.store.port, decode_responses=True, socket_timeout=3,
                                socket_connect_timeout=2)
        busy: dict[int, str] = {}
        try:
            for run_id in list(self.active_runs()):
                raw = await client.get(f"celery-task-meta-{run_id}")
                meta = json.loads(raw) if raw else {}
                result = meta.get("result") if isinstance(meta, dict) else None
                if meta.get("status") == "STREAMING" and isinstance(result, dict):
                    busy[int(result.get("worker_pid", 0))] = run_id
        except (RedisError, OSError, ValueError):
            pass
        finally:
            await client.aclose()
        return busy

    async def supervise(self, period: float = 1.0) -> None:
        """Restart a worker that exited on its own, as a process supervisor would (systemd's
        ``Restart=always``), and record why it exited."""
        while True:
            await asyncio.sleep(period)
            for worker in self.workers:
                if worker.child.alive or worker.down_on_purpose:
                    continue
                worker.exits.append(f"{time.strftime('%H:%M:%S')} {worker.last_error()}")
                await self.restart_worker(worker)

    async def heal(self) -> None:
        """End every fault: ways open, store up, every worker running."""
        for proxy in self.proxies.values():
            proxy.heal()
        if self.store.pid is None:
            await self.start_store()
        for worker in self.workers:
            if not worker.child.alive:
                await self.restart_worker(worker)
