"""Child processes for the sides of a measurement (readers, writers), with bounded handshakes.

Children are spawned, never forked: the harness process runs writer threads and event loops
that a fork would copy half-alive. A child runs ``target(channel, *args)``; the two sides talk
with tagged messages (``("ready", None)``, ``("result", {...})``) and every wait has a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import traceback
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["Channel", "Child", "ChildFailed", "answer_async"]

_CONTEXT = multiprocessing.get_context("spawn")


class ChildFailed(RuntimeError):
    """A child process raised, died, or did not answer in time."""


class Channel:
    """One end of the pipe between the harness and a child."""

    def __init__(self, conn: multiprocessing.connection.Connection, who: str) -> None:
        self._conn = conn
        self._who = who

    def send(self, tag: str, payload: Any = None) -> None:
        self._conn.send((tag, payload))

    def expect(self, tag: str, timeout: float) -> Any:
        """The payload of the next message, which must be ``tag``; waits at most ``timeout``."""
        if not self._conn.poll(timeout):
            raise ChildFailed(f"{self._who}: no {tag!r} within {timeout} s")
        try:
            got, payload = self._conn.recv()
        except EOFError as exc:
            raise ChildFailed(f"{self._who} closed the pipe before {tag!r}") from exc
        if got == "error":
            raise ChildFailed(f"{self._who} failed:\n{payload}")
        if got != tag:
            raise ChildFailed(f"{self._who}: expected {tag!r}, got {got!r}")
        return payload

    def poll(self) -> bool:
        return self._conn.poll()


class Child:
    """A spawned process running ``target(channel, *args)``; use it as a context manager."""

    def __init__(self, target: Callable[..., None], *args: Any, name: str) -> None:
        ours, theirs = _CONTEXT.Pipe()
        self.name = name
        self.channel = Channel(ours, name)
        self.process = _CONTEXT.Process(target=_child_main, args=(target, theirs, name, args),
                                        name=name, daemon=True)

    def __enter__(self) -> Child:
        self.process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def stop(self, timeout: float = 10.0) -> None:
        """Wait for the child to end by itself, then terminate it (then kill it)."""
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


def _child_main(target: Callable[..., None], conn: multiprocessing.connection.Connection,
                name: str, args: tuple[Any, ...]) -> None:
    channel = Channel(conn, "harness")
    try:
        target(channel, *args)
    except BaseException:  # boundary: any failure goes back to the harness as text
        channel.send("error", traceback.format_exc())
        raise
    finally:
        conn.close()


def use_uvloop() -> None:
    """Event loops of this process run on uvloop when it is installed (the ``web`` extra), as
    a production web process's do."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def answer_async(channel: Channel, coro: Coroutine[Any, Any, Any], teardown: float = 2.0) -> None:
    """Run ``coro`` on a new event loop and send its value as the ``result``, then close the
    loop, giving leftover tasks at most ``teardown`` s (``asyncio.run`` would wait for ever on
    a redis-py read that a cancellation left pending)."""
    loop = asyncio.new_event_loop()
    try:
        channel.send("result", loop.run_until_complete(coro))
    finally:
        leftover = asyncio.all_tasks(loop)
        for task in leftover:
            task.cancel()
        if leftover:
            loop.run_until_complete(asyncio.wait(leftover, timeout=teardown))
        # Tasks still pending now are abandoned on purpose: no "destroyed but pending" noise.
        loop.set_exception_handler(lambda loop, context: None)
        loop.close()
