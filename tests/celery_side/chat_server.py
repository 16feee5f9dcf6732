"""A local HTTP server that speaks the chat-completions streaming protocol (for the tests).

``POST /v1/chat/completions`` with ``stream: true`` answers ``text/event-stream``: one
``data: {chat.completion.chunk}`` line per piece, then ``data: [DONE]``. The last user message
picks the behaviour: ``slow`` streams a piece every 0.2 s for 60 s; ``bad`` answers 400;
anything else is echoed back in three pieces.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ChatServer:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.disconnected = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "body": body,
                                        "authorization": self.headers.get("Authorization")})
                server.answer(self, body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"

    def start(self) -> ChatServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def answer(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        prompt = body["messages"][-1]["content"]
        if prompt == "bad":
            return self._error(handler, 400, "this model does not exist")
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-cache")
        handler.end_headers()
        try:
            if prompt == "slow":
                for index in range(300):
                    self._chunk(handler, body, {"content": f"{index} "})
                    time.sleep(0.2)
            else:
                for piece in (prompt[:3], prompt[3:], "!"):
                    self._chunk(handler, body, {"content": piece})
                self._chunk(handler, body, {}, finish="stop")
            handler.wfile.write(b"data: [DONE]\n\n")
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.disconnected.set()

    def _chunk(self, handler: BaseHTTPRequestHandler, body: dict[str, Any],
               delta: dict[str, str], finish: str | None = None) -> None:
        chunk = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1,
                 "model": body["model"],
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        handler.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        handler.wfile.flush()

    def _error(self, handler: BaseHTTPRequestHandler, status: int, message: str) -> None:
        payload = json.dumps({"error": {"message": message, "type": "invalid_request_error"}})
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload.encode())
