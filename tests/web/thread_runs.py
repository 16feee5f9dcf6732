"""Runs produced by a writer thread in the test process: the app's launcher without Celery.

It has the shape of ``tasks.api.Runs`` (``astart``/``acancel``) and writes what the ``demo``
generator writes (``{"text", "index"}`` chunks), so app tests can run where no worker does.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import redis

from streaming.control import request_cancel
from streaming.settings import Settings
from streaming.wire import Terminal
from streaming.writer import RunWriter, StreamWriter


class ThreadRuns:
    def __init__(self, writer: StreamWriter, client: redis.Redis, settings: Settings) -> None:
        self.writer = writer
        self.client = client
        self.settings = settings
        self.threads: list[threading.Thread] = []

    def start(self, generator: str, params: Mapping[str, Any] | None = None) -> str:
        params = dict(params or {})
        run_id = f"run-{uuid.uuid4().hex}"
        handle = self.writer.open(run_id)
        thread = threading.Thread(target=self._produce, args=(handle, params), daemon=True)
        thread.start()
        self.threads.append(thread)
        return run_id

    def _produce(self, handle: RunWriter, params: dict[str, Any]) -> None:
        text, size = params["text"], params.get("chunk_size", 8)
        for index, start in enumerate(range(0, len(text), size)):
            if handle.cancel_requested:
                handle.finish(Terminal.CANCELLED, handle.cancel_requested)
                return
            handle.send(json.dumps({"text": text[start:start + size], "index": index}))
            time.sleep(1 / params.get("rate", 20.0))
        handle.finish()

    async def astart(self, generator: str, params: Mapping[str, Any] | None = None) -> str:
        return await asyncio.to_thread(self.start, generator, params)

    async def acancel(self, run_id: str, reason: str = "cancelled") -> bool:
        return await asyncio.to_thread(request_cancel, self.client, run_id, self.settings, reason)

    def join(self, timeout: float = 10.0) -> None:
        for thread in self.threads:
            thread.join(timeout)
