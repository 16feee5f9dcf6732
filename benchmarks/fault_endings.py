"""How long each fault takes to a stored ending: the figures of the README's fault table.

    python -m benchmarks.fault_endings                 # every fault once, short deadlines
    python -m benchmarks.fault_endings --only whole_worker_sigkill stranded --json out.json

Each scenario starts real ``celery -A worker worker -P prefork`` processes on a private
Valkey server with an append-only file (``fsync always``), breaks one thing for real, and
measures, by the wall clock of this process, the time from the fault to the run's ending being
stored (a seq id in the stream), and which ending it is. Deadlines are short (``SHORT``) so a
round takes a couple of minutes; the README gives each bound as a formula of the settings, and
these figures check the formula at these values. Every wait is bounded; every process started
is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "celery_side"))  # worker_procs, worker_helpers

from worker_procs import WorkerProcess  # noqa: E402

from streaming.client import sync_client  # noqa: E402
from streaming.embedded import free_port, server_binary  # noqa: E402
from streaming.reader import read_events  # noqa: E402
from streaming.settings import Settings  # noqa: E402
from streaming.wire import Terminal  # noqa: E402
from tests.proxy import Proxy, port_of  # noqa: E402

#: Deadlines of every worker and reader in these scenarios (seconds).
SHORT = {
    "STREAMING_PRODUCER_TIMEOUT": "3",  # and STREAMING_LEASE_TTL=1 (worker_procs)
    "STREAMING_QUEUE_TIMEOUT": "3", "STREAMING_UNAVAILABLE_TIMEOUT": "3",
    "STREAMING_SOCKET_TIMEOUT": "1", "WORKER_SWEEP_INTERVAL": "0.5",
}
#: Longest wait for any one ending before a scenario is reported as a hang.
GIVE_UP = 60.0
OUTAGE = 6.0  # seconds a long cut or a store restart lasts (longer than unavailable_timeout)


@dataclass
class Figure:
    fault: str
    ending: str
    seconds: float
    note: str = ""


def settings(url: str) -> Settings:
    return Settings(redis_url=url, lease_ttl=1.0, producer_timeout=3.0, queue_timeout=3.0,
                    unavailable_timeout=3.0, socket_timeout=1.0, liveness_interval=0.5,
                    block_timeout=1.0)


class Store:
    """A private Valkey server with an append-only file that can be killed and restarted."""

    def __init__(self) -> None:
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix="fault-endings-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Store:
        self.process = subprocess.Popen(
            [server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             self.directory, "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             "--logfile", "server.log"], stdin=subprocess.DEVNULL)
        client = sync_client(settings(self.url))
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(Exception):
                if client.ping():
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the store did not start")
            time.sleep(0.05)
        client.close()
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        self.kill()
        subprocess.run(["rm", "-rf", self.directory], check=False)


@contextlib.contextmanager
def workers(url: str, count: int = 1, **env: str) -> Iterator[list[WorkerProcess]]:
    started = [WorkerProcess(url, **(SHORT | env)) for _ in range(count)]
    try:
        for worker in started:
            worker.start()
        yield started
    finally:
        for worker in started:
            with contextlib.suppress(Exception):
                worker.stop()


def stored_ending(client: Any, run_id: str, timeout: float = GIVE_UP) -> tuple[str, float]:
    """Wait until the run's ending is stored; (its kind, when, by time.monotonic())."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            ending = client.hget(f"sse:run:{run_id}:meta", "end")
            if ending:
                return str(ending), time.monotonic()
        time.sleep(0.05)
    return "none (hang)", time.monotonic()


def restarted_at(client: Any, run_id: str, timeout: float = GIVE_UP) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = client.xrange(f"sse:run:{run_id}", count=100_000)
        if any("event: restarted" in fields.get("data", "") for _, fields in entries):
            return time.monotonic()
        time.sleep(0.05)
    return float("nan")


def long_run(worker: WorkerProcess) -> str:
    run_id = worker.runs.start("demo", {"text": "x" * 600, "chunk_size": 1, "rate": 10})
    worker.wait_progress(run_id, chunks=3, timeout=30)
    return run_id


def kill_group(worker: WorkerProcess) -> None:
    assert worker.process is not None
    os.killpg(worker.process.pid, signal.SIGKILL)
    worker.process.wait(10)


# -- scenarios -------------------------------------------------------------------------------


def child_sigkill(store: Store) -> list[Figure]:
    # The default requeue grace: a requeued attempt may take seconds to start on a busy
    # machine, and one that starts after lease_ttl + producer_timeout finds the run lost.
    with workers(store.url, STREAMING_PRODUCER_TIMEOUT="30") as [worker]:
        run_id = long_run(worker)
        pid = worker.runs.task_state(run_id)[1]["worker_pid"]
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        restarted = restarted_at(worker.runs.client, run_id)
        worker.runs.cancel(run_id, "measured")
        kind, _ = stored_ending(worker.runs.client, run_id)
    return [Figure("child SIGKILL, requeue on", "continues (restarted)", restarted - killed,
                   f"producer_timeout 30 s; {kind} when cancelled after")]


def child_sigkill_no_requeue(store: Store) -> list[Figure]:
    with workers(store.url, WORKER_REJECT_ON_WORKER_LOST="false") as [worker]:
        run_id = long_run(worker)
        os.kill(worker.runs.task_state(run_id)[1]["worker_pid"], signal.SIGKILL)
        killed = time.monotonic()
        kind, at = stored_ending(worker.runs.client, run_id)
        last = worker.runs.client.xrevrange(f"sse:run:{run_id}", count=1)
    by = "the main process" if last and "process running the run was lost" in str(last) \
        else "a sweep or reader"
    return [Figure("child SIGKILL, requeue off", kind, at - killed, f"written by {by}")]


def whole_worker_sigkill(store: Store) -> list[Figure]:
    figures = []
    with workers(store.url, count=2) as [watcher, victim]:
        run_id = long_run(victim)
        kill_group(victim)
        killed = time.monotonic()
        kind, at = stored_ending(watcher.runs.client, run_id)
        figures.append(Figure("whole worker SIGKILL", kind, at - killed,
                              "written by another worker's sweep"))
    with workers(store.url) as [victim]:
        run_id = long_run(victim)
        kill_group(victim)  # no worker left: a reader writes the ending
        killed = time.monotonic()
        reader = sync_client(settings(store.url), reader=True)
        events = list(read_events(reader, run_id, settings(store.url)))
        figures.append(Figure("whole worker SIGKILL, no worker left", _kind(events),
                              time.monotonic() - killed, "written by the reader"))
        reader.close()
    return figures


def store_restart(store: Store) -> list[Figure]:
    with workers(store.url) as [worker]:
        run_id = long_run(worker)
        store.kill()
        down = time.monotonic()
        time.sleep(OUTAGE)
        store.start()
        back = time.monotonic()
        worker.runs.cancel(run_id, "measured")
        kind, at = stored_ending(worker.runs.client, run_id)
    return [Figure("store SIGKILL + restart (AOF), down 6 s", kind, at - down,
                   f"{at - back:.1f} s after it was back")]


def worker_store_cut(store: Store) -> list[Figure]:
    proxy = Proxy(port_of(store.url))
    try:
        with workers(proxy.url, CELERY_BROKER_URL=store.url,
                     CELERY_RESULT_BACKEND=store.url) as [worker]:
            direct = sync_client(settings(store.url))
            run_id = long_run(worker)
            proxy.set_refuse(True)
            cut = time.monotonic()
            time.sleep(OUTAGE)
            proxy.set_refuse(False)
            back = time.monotonic()
            kind, at = stored_ending(direct, run_id)
            direct.close()
    finally:
        proxy.close()
    return [Figure("worker-store cut 6 s", kind, at - cut, f"{at - back:.1f} s after it ended")]


def app_store_cut(store: Store) -> list[Figure]:
    """A reader cut off from the store while the run ends: it resumes from its cursor."""
    proxy = Proxy(port_of(store.url))
    try:
        with workers(store.url) as [worker]:
            run_id = worker.runs.start("demo", {"text": "y" * 60, "chunk_size": 1, "rate": 10})
            worker.wait_progress(run_id, chunks=2, timeout=30)
            proxy.set_refuse(True)
            time.sleep(OUTAGE)  # the run ends meanwhile
            proxy.set_refuse(False)
            back = time.monotonic()
            events = _resuming_read(proxy.url, run_id)
    finally:
        proxy.close()
    return [Figure("app-store cut 6 s", _kind(events), time.monotonic() - back,
                   "after the cut ended (stored by the worker meanwhile)")]


def _resuming_read(url: str, run_id: str) -> list[Any]:
    events: list[Any] = []
    deadline = time.monotonic() + GIVE_UP
    while time.monotonic() < deadline:
        client = sync_client(settings(url), reader=True)
        after = events[-1].seq if events and events[-1].seq else 0
        try:
            for event in read_events(client, run_id, settings(url), starting_after=after):
                events.append(event)
            return events
        except Exception:  # the cut: resume from the cursor, as a client does
            time.sleep(0.2)
        finally:
            client.close()
    return events


def stranded(store: Store) -> list[Figure]:
    with workers(store.url) as [watcher]:
        other = WorkerProcess(store.url, **SHORT)  # its queue has no consumer yet
        run_id = other.runs.start("demo", {"text": "never"})
        queued = time.monotonic()
        kind, at = stored_ending(watcher.runs.client, run_id)
        late = WorkerProcess(store.url, queue=other.queue, **SHORT).start()
        try:
            late.wait_for_log(f"run {run_id} has already ended", 30)
            last = watcher.runs.status(run_id).last_seq
        finally:
            late.stop()
            other.stop()
    return [Figure("queued, never started (a stranded message)", kind, at - queued,
                   f"late delivery wrote nothing (last seq {last})")]


def time_limits(store: Store) -> list[Figure]:
    with workers(store.url) as [worker]:
        soft = worker.runs.start("demo", {"text": "z" * 600, "chunk_size": 1, "rate": 10},
                                 soft_time_limit=2, time_limit=10)
        started = time.monotonic()
        kind, at = stored_ending(worker.runs.client, soft)
        figures = [Figure("soft time limit 2 s", kind, at - started, "from the start")]
        hard = worker.runs.start("test.stubborn", {"seconds": 30}, soft_time_limit=1,
                                 time_limit=2)
        started = time.monotonic()
        kind, at = stored_ending(worker.runs.client, hard)
        figures.append(Figure("hard time limit 2 s (soft 1 s ignored)", kind, at - started,
                              "from the start"))
    return figures


def cancel(store: Store) -> list[Figure]:
    with workers(store.url) as [worker]:
        run_id = long_run(worker)
        asked = time.monotonic()
        worker.runs.cancel(run_id, "measured")
        kind, at = stored_ending(worker.runs.client, run_id)
    return [Figure("cancel", kind, at - asked, "from the request")]


def _kind(events: list[Any]) -> str:
    if not events or events[-1].terminal is None:
        return "none (hang)"
    stored = "stored" if events[-1].seq is not None else "NOT stored"
    return f"{Terminal(events[-1].terminal).value} ({stored})"


SCENARIOS: dict[str, Callable[[Store], list[Figure]]] = {
    "child_sigkill": child_sigkill, "child_sigkill_no_requeue": child_sigkill_no_requeue,
    "whole_worker_sigkill": whole_worker_sigkill,
    "store_restart": store_restart, "worker_store_cut": worker_store_cut,
    "app_store_cut": app_store_cut, "stranded": stranded, "time_limits": time_limits,
    "cancel": cancel,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fault_endings",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), default=None)
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the worst is kept")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    worst: dict[str, Figure] = {}
    store = Store().start()
    try:
        for round in range(args.repeat):
            for name in args.only or SCENARIOS:
                for figure in _run(name, store):
                    _show(figure, round)
                    known = worst.get(figure.fault)
                    if known is None or not figure.seconds <= known.seconds:
                        worst[figure.fault] = figure
    finally:
        store.stop()
    print(f"worst of {args.repeat} round(s); settings: " + " ".join(
        f"{k}={v}" for k, v in (SHORT | {"STREAMING_LEASE_TTL": "1"}).items()))
    figures = list(worst.values())
    for figure in figures:
        _show(figure, None)
    if args.json:
        args.json.write_text(json.dumps([asdict(f) for f in figures], indent=2))
    return 0 if all("hang" not in f.ending for f in figures) else 1


def _show(figure: Figure, round: int | None) -> None:
    label = "worst" if round is None else f"#{round + 1}"
    print(f"{label:<6}{figure.fault:<45} {figure.ending:<24} {figure.seconds:6.1f} s  "
          f"{figure.note}", flush=True)


def _run(name: str, store: Store) -> list[Figure]:
    try:
        return SCENARIOS[name](store)
    except Exception as exc:  # report the scenario as failed and go on with the others
        return [Figure(name, f"failed: {type(exc).__name__}", float("nan"), str(exc)[:200])]


if __name__ == "__main__":
    sys.exit(main())
