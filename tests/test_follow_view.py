"""The demo's terminal display follows the client rule for ``restarted``."""

import json

from httpx_sse import ServerSentEvent

from examples.follow import RunView


def feed(view: RunView, event: str, data: object, id: str) -> None:
    text = data if isinstance(data, str) else json.dumps(data)
    view.feed(ServerSentEvent(event=event, data=text, id=id))


def test_an_attempt_that_starts_over_replaces_the_text():
    view = RunView("run-1")
    feed(view, "message", {"text": "Hel"}, "1")
    feed(view, "restarted", {"attempt": 2, "resume": False, "chunks": 0, "last_seq": 1}, "2")
    feed(view, "message", {"text": "Hello"}, "3")
    assert (view.text, view.chunks) == ("Hello", 1)


def test_an_attempt_that_resumes_continues_the_text():
    view = RunView("run-1")
    feed(view, "message", {"text": "Hel"}, "1")
    feed(view, "restarted", {"attempt": 2, "resume": True, "chunks": 1, "last_seq": 1}, "2")
    feed(view, "message", {"text": "lo"}, "3")
    assert (view.text, view.chunks) == ("Hello", 2)
