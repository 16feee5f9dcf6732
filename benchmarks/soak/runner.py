"""The soak itself: start the components, run demo runs with readers while faults are
injected, heal everything, wait for every reader (bounded), read the stored streams back and
judge them.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from redis.exceptions import RedisError

from streaming.settings import Settings
from streaming.web import SESSION_COOKIE
from streaming.wire import RunKeys

from .faults import FaultPlan, Injector
from .judge import RUNNING_STATES, Bounds, RunPlan, StoredRun, judge
from .procs import AofStore, App, Fleet, Worker, app_child, worker_child
from .proxy import FaultProxy
from .readers import BEHAVIOURS, ReaderLog, follow, tail

__all__ = ["Mode", "soak"]

ROOT = Path(__file__).resolve().parents[2]
#: Variables of the caller that must not leak into the soak's children.
_OWN_PREFIXES = ("WORKER_", "STREAMING_", "OPENAI_", "CELERY_")
WORDS = ("stream", "chunk", "worker", "redis", "celery", "resume", "cursor", "lease", "store",
         "ending", "reader", "attempt", "fault", "proxy", "seq", "restart", "done", "lost")
READY_TIMEOUT = 120.0
CREATE_TIMEOUT = 20.0
READ_BACK_TIMEOUT = 60.0
#: Share of readers that are ``python -m streaming tail`` processes instead of SSE clients.
CLI_SHARE = 0.15


@dataclass(frozen=True)
class Mode:
    """Sizes and settings of one kind of soak."""

    name: str
    seconds: float
    #: ``STREAMING_*`` settings every component gets.
    settings: dict[str, str]
    #: Range of cut and stall lengths, and of the downtime of a killed worker or store.
    durations: tuple[float, float]
    restart_downtime: tuple[float, float]
    #: Pause between two faults.
    gaps: tuple[float, float]
    #: Chunks per run (demo pieces of ``chunk_size`` characters, ``rate`` a second).
    chunks: tuple[int, int]
    rate: float = 10.0
    chunk_size: int = 12
    workers: int = 2
    concurrency: int = 2
    #: Added to every bound: the reader's liveness checks and the sweep's period.
    slack: float = 20.0
    #: Take every fault kind once before choosing freely.
    cover: bool = False


CI = Mode("ci", 35.0, {"STREAMING_LEASE_TTL": "2", "STREAMING_PRODUCER_TIMEOUT": "6",
                       "STREAMING_QUEUE_TIMEOUT": "20", "STREAMING_LIVENESS_INTERVAL": "1",
                       "STREAMING_UNAVAILABLE_TIMEOUT": "8", "STREAMING_PING_INTERVAL": "5",
                       "STREAMING_BLOCK_TIMEOUT": "5"},
          durations=(2.0, 8.0), restart_downtime=(1.0, 4.0), gaps=(1.0, 3.0), chunks=(25, 60),
          slack=12.0, cover=True)
FULL = Mode("full", 600.0, {"STREAMING_QUEUE_TIMEOUT": "120"},
            durations=(2.0, 40.0), restart_downtime=(1.0, 10.0), gaps=(3.0, 15.0),
            chunks=(50, 200), slack=30.0, cover=True)


@dataclass
class Soak:
    mode: Mode
    seed: int
    bounds: Bounds
    runs: list[RunPlan] = field(default_factory=list)
    readers: dict[str, list[ReaderLog]] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    create_failures: int = 0
    #: Why run creations were refused: HTTP status and body, or the client's error.
    create_errors: Counter[str] = field(default_factory=Counter)
    injector: Injector | None = None
    #: What a ``python -m streaming tail`` reader runs with: the env, and the store's URL
    #: through the app's proxy (it reads from the web side of the system).
    tail_env: dict[str, str] = field(default_factory=dict)
    tail_url: str = ""

    def give_up(self, run: RunPlan) -> float:
        """When a reader of ``run`` stops waiting: past every bound the judge may use."""
        assert self.injector is not None
        latest = max([run.created, *(f.ended for f in self.injector.records)])
        if self.injector.ongoing is not None:
            latest = max(latest, time.time())
        return latest + max(self.bounds.claimed, self.bounds.queued) + run.duration + 10.0

    def refused(self, why: str) -> None:
        self.create_failures += 1
        self.create_errors[why] += 1

    def active(self) -> list[str]:
        return [run.run_id for run in self.runs
                if any(log.ending is None and log.gave_up_at is None
                       for log in self.readers[run.run_id])]


def child_env(mode: Mode, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k != "REDIS_URL" and not k.startswith(_OWN_PREFIXES)}
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return env | {"PYTHONPATH": path, "PYTHONUNBUFFERED": "1"} | mode.settings | extra


def bounds_of(env: dict[str, str], slack: float) -> Bounds:
    """The bounds the judge holds the run to, from the settings the components read."""
    settings = Settings.from_env(env)
    # Before the lifecycle work, producer_timeout "covers a queued run" too.
    queue_timeout = getattr(settings, "queue_timeout", None) or settings.producer_timeout
    # Whoever writes an overdue run's ending comes by within a reader's liveness check or a
    # worker's sweep (WORKER_SWEEP_INTERVAL, 5 s by default, where the worker has one).
    sweep = float(env.get("WORKER_SWEEP_INTERVAL", "5"))
    return Bounds(settings.lease_ttl, settings.producer_timeout, float(queue_timeout),
                  slack + max(settings.liveness_interval, sweep))


async def soak(mode: Mode, seed: int, extra_env: dict[str, str], workdir: Path,
               fleet: Fleet, proxies: list[FaultProxy], say: Any) -> dict[str, Any]:
    env = child_env(mode, extra_env)
    state = Soak(mode, seed, bounds_of(env, mode.slack))
    store = AofStore(workdir / "store")
    fleet.stores.append(store)
    await asyncio.to_thread(store.start)
    ways = {name: FaultProxy(store.port, name).start()
            for name in ["app", *(f"worker-{i}" for i in range(mode.workers))]}
    proxies.extend(ways.values())
    queue = f"soak-{uuid.uuid4().hex[:8]}"
    workers = []
    for i in range(mode.workers):
        name = f"worker-{i}"
        child = worker_child(name, env | {"REDIS_URL": ways[name].url, "WORKER_QUEUE": queue},
                             workdir, mode.concurrency)
        fleet.children.append(child)
        child.start()
        workers.append(Worker(child, name))
    app = app_child(env | {"REDIS_URL": ways["app"].url, "WORKER_QUEUE": queue,
                           "STREAMING_TOKEN_SECRET": uuid.uuid4().hex * 2}, workdir)
    fleet.children.append(app.child)
    app.child.start()
    for worker in workers:
        await asyncio.to_thread(worker.child.wait_for_log, " ready.", READY_TIMEOUT)
    await asyncio.to_thread(app.wait_ready, READY_TIMEOUT)
    say(f"store :{store.port} (AOF in {store.directory}), {mode.workers} prefork workers "
        f"(-c {mode.concurrency}), app {app.url}; settings {mode.settings | extra_env}")
    state.tail_env, state.tail_url = env, ways["app"].url
    state.injector = Injector(store, workers, ways, random.Random(f"{seed}-faults"),
                              state.active)
    began = time.time()
    await _drive(state, app, began + mode.seconds, say)
    stored = await _settled(state, store.port)
    summary = judge(state.runs, stored, state.readers, state.injector.records, state.bounds)
    if not state.runs or not state.injector.records:  # a soak that tested nothing fails
        summary["problems"].append({"run_id": "-", "readers": [], "problems": [
            f"{len(state.runs)} runs and {len(state.injector.records)} faults: nothing judged; "
            f"creations refused: {dict(state.create_errors.most_common(3))}"]})
        summary["verdict"] = "fail"
    summary.update(mode=mode.name, seed=seed, seconds=round(time.time() - began, 1),
                   soak_seconds=mode.seconds, create_failures=state.create_failures,
                   create_errors=dict(state.create_errors.most_common(5)),
                   settings=mode.settings | extra_env,
                   worker_restarts=sum(w.restarts for w in workers),
                   worker_exits={w.child.name: w.exits for w in workers if w.exits},
                   fault_list=[f.as_dict() for f in state.injector.records],
                   reader_logs=_logs_of_failed_runs(summary, state.readers))
    return summary


def _logs_of_failed_runs(summary: dict[str, Any],
                         readers: dict[str, list[ReaderLog]]) -> dict[str, Any]:
    """What every reader of a run with problems got (to see why, from the JSON)."""
    failed = [item["run_id"] for item in summary["problems"]]
    return {run_id: [log.as_dict() for log in readers.get(run_id, [])] for run_id in failed}


async def _settled(state: Soak, port: int) -> dict[str, StoredRun]:
    """The stored runs, read again for up to ``slack`` s while a Celery state lags behind its
    run's ending (the worker's sweep updates it periodically)."""
    deadline = time.monotonic() + state.bounds.slack
    ids = [r.run_id for r in state.runs]
    while True:
        stored = await asyncio.to_thread(read_back, port, ids)
        lagging = [s for s in stored.values()
                   if s.ending is not None and s.celery_state in RUNNING_STATES]
        if not lagging or time.monotonic() > deadline:
            return stored
        await asyncio.sleep(1.0)


async def _drive(state: Soak, app: App, until: float, say: Any) -> None:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx.AsyncClient(base_url=app.url, limits=limits) as client:
        assert state.injector is not None
        supervisor = asyncio.create_task(state.injector.supervise())
        creator = asyncio.create_task(_create_runs(state, client, until))
        faulter = asyncio.create_task(_inject(state, until, say))
        await asyncio.wait({creator, faulter}, timeout=until - time.time() + 300)
        for task in (creator, faulter):
            task.cancel()
        await asyncio.gather(creator, faulter, return_exceptions=True)
        say(f"faults over; {len(state.runs)} runs; healing, then waiting for the readers")
        await state.injector.heal()
        await _drain(state)
        supervisor.cancel()
        await asyncio.gather(supervisor, return_exceptions=True)


async def _drain(state: Soak) -> None:
    pending = [t for t in state.tasks if not t.done()]
    if not pending:
        return
    horizon = max(state.give_up(run) for run in state.runs) - time.time() + 15.0
    await asyncio.wait(pending, timeout=max(horizon, 1.0))
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def _inject(state: Soak, until: float, say: Any) -> None:
    assert state.injector is not None
    rng = random.Random(f"{state.seed}-plan")
    plan = FaultPlan(rng, state.mode.durations, state.mode.restart_downtime, state.mode.cover)
    await asyncio.sleep(rng.uniform(*state.mode.gaps))
    while time.time() < until:
        kind, seconds = plan.next()
        record = await state.injector.do(kind, seconds)
        say(f"fault {len(state.injector.records)}: {kind} on {record.target}: {record.detail}")
        await asyncio.sleep(rng.uniform(*state.mode.gaps))


async def _create_runs(state: Soak, client: httpx.AsyncClient, until: float) -> None:
    rng = random.Random(f"{state.seed}-runs")
    target = state.mode.workers * state.mode.concurrency
    while time.time() < until:
        if len(state.active()) < target:
            await _create_one(state, client, rng)
        await asyncio.sleep(rng.uniform(0.2, 1.0))


async def _create_one(state: Soak, client: httpx.AsyncClient, rng: random.Random) -> None:
    mode = state.mode
    pieces = rng.randint(*mode.chunks)
    text = _text(rng, pieces * mode.chunk_size - rng.randrange(mode.chunk_size))
    created = time.time()
    try:
        headers = await _session(client)
        response = await client.post("/runs", json={"text": text, "rate": mode.rate,
                                                    "chunk_size": mode.chunk_size},
                                     headers=headers, timeout=CREATE_TIMEOUT)
    except httpx.HTTPError as exc:
        state.refused(type(exc).__name__)
        return
    if response.status_code != 201:
        state.refused(f"{response.status_code} {response.text[:120]}")
        return
    body = response.json()
    run = RunPlan(body["run_id"], text, mode.chunk_size, mode.rate, created)
    state.runs.append(run)
    logs = state.readers.setdefault(run.run_id, [])
    for i in range(rng.randint(1, 3)):
        behaviour = rng.choice(BEHAVIOURS)
        cli = rng.random() < CLI_SHARE
        log = ReaderLog(run.run_id, f"{run.run_id}/{i}", "cli" if cli else behaviour.name)
        logs.append(log)
        delay = rng.uniform(0, run.duration / 2) if i else 0.0
        reader_rng = random.Random(rng.random())
        if cli:
            state.tasks.append(asyncio.create_task(_tail(state, run, log, delay)))
            continue
        state.tasks.append(asyncio.create_task(_reader(
            state, client, run, body["token"], log, behaviour, reader_rng, delay)))


async def _session(client: httpx.AsyncClient) -> dict[str, str]:
    """A new page session's ``create`` token, as a user who opens the page gets it (each run
    its own user, so the app's per-session rate limit is not what is measured)."""
    page = await client.get("/", timeout=CREATE_TIMEOUT)
    token = page.cookies.get(SESSION_COOKIE)
    client.cookies.clear()  # the soak sends its tokens itself
    return {"Authorization": f"Bearer {token}"} if token else {}


async def _reader(state: Soak, client: httpx.AsyncClient, run: RunPlan, token: str,
                  log: ReaderLog, behaviour: Any, rng: random.Random, delay: float) -> None:
    await asyncio.sleep(delay)
    read_timeout = float(state.mode.settings.get("STREAMING_PING_INTERVAL", "15")) * 2 + 10
    await follow(client, run.run_id, token, log, behaviour, rng, lambda: state.give_up(run),
                 read_timeout)


async def _tail(state: Soak, run: RunPlan, log: ReaderLog, delay: float) -> None:
    await asyncio.sleep(delay)
    await tail(state.tail_url, state.tail_env, run.run_id, log, lambda: state.give_up(run))


def _text(rng: random.Random, length: int) -> str:
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < length:
        words.append(rng.choice(WORDS))
    return " ".join(words)[:length]


def read_back(port: int, run_ids: list[str]) -> dict[str, StoredRun]:
    """Every run's stored entries and meta, straight from the store (no proxy)."""
    client = redis.Redis(port=port, decode_responses=True, socket_timeout=10)
    deadline = time.monotonic() + READ_BACK_TIMEOUT
    try:
        while True:
            try:
                return {run_id: _stored(client, run_id) for run_id in run_ids}
            except RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        client.close()


def _stored(client: redis.Redis, run_id: str) -> StoredRun:
    keys = RunKeys.for_run(run_id)
    entries = [(int(fields.get("seq_id", 0)), fields)
               for _, fields in client.xrange(keys.stream)  # type: ignore[union-attr]
               if fields]
    meta = client.hgetall(keys.meta) if client.type(keys.meta) == "hash" else {}
    raw = client.get(f"celery-task-meta-{run_id}")
    try:
        celery_state = json.loads(raw)["status"] if raw else None
    except (ValueError, KeyError, TypeError):
        celery_state = "unreadable"
    return StoredRun(run_id, entries, dict(meta), celery_state)  # type: ignore[arg-type]
