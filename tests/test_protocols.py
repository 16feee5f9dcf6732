"""The Letta and AI SDK encoders on their own: what each kind of event becomes.

The real clients read these protocols in tests/web/test_letta_sdk.py and tests/web/test_aisdk.py;
these cases pin the mapping rules the README states, one event kind at a time.
"""

from __future__ import annotations

import json

import pytest

from streaming.aisdk import OutputAbandoned, UIMessageEncoder
from streaming.letta import LettaEncoder
from streaming.wire import Event, Terminal, encode_frame, parse_frame, terminal_frame


def event(seq: int | None, data: str, name: str | None = None,
          terminal: Terminal | None = None) -> Event:
    frame = encode_frame(data, name)
    parsed_name, parsed_data = parse_frame(frame)
    return Event(seq, parsed_name, parsed_data, frame, terminal)


def ending(seq: int, kind: Terminal, message: str = "") -> Event:
    name, data = parse_frame(terminal_frame(kind, message))
    return Event(seq, name, data, terminal_frame(kind, message), kind)


def sse_datas(text: str) -> list[tuple[str | None, str]]:
    """(event name, data) of every frame in ``text``."""
    frames = []
    for block in text.split("\n\n"):
        if block:
            name = next((line[7:] for line in block.splitlines() if line.startswith("event: ")),
                        None)
            data = "\n".join(line[6:] for line in block.splitlines() if line.startswith("data: "))
            frames.append((name, data))
    return frames


# -- Letta -------------------------------------------------------------------------------------


def test_letta_placeholders_are_filled_and_other_fields_kept():
    stored = {"message_type": "assistant_message", "id": "m1", "content": "hi",
              "seq_id": None, "run_id": None, "otid": "o"}
    [(name, data)] = sse_datas(LettaEncoder("r1")(event(7, json.dumps(stored))))
    assert name is None and json.loads(data) == stored | {"seq_id": 7, "run_id": "r1"}


@pytest.mark.parametrize(("data", "content"), [("plain text", "plain text"),
                                               ('{"text": "t", "index": 3}', "t"),
                                               ("[1, 2]", "[1, 2]")])
def test_letta_other_chunks_become_assistant_messages(data: str, content: str):
    [(_, out)] = sse_datas(LettaEncoder("r1")(event(2, data)))
    message = json.loads(out)
    assert (message["message_type"], message["content"], message["seq_id"]) == \
        ("assistant_message", content, 2)


def test_letta_named_events_become_messages_of_that_type():
    encoder = LettaEncoder("r1")
    [(name, data)] = sse_datas(encoder(event(4, '{"attempt": 2, "resume": false}', "restarted")))
    assert name is None
    assert json.loads(data) == {"message_type": "restarted", "attempt": 2, "resume": False,
                                "seq_id": 4, "run_id": "r1"}
    [(_, data)] = sse_datas(encoder(event(5, "not json", "note")))
    assert json.loads(data)["data"] == "not json"


@pytest.mark.parametrize(("kind", "frames"), [
    (Terminal.DONE, [(None, "stop_reason"), (None, "[DONE]")]),
    (Terminal.CANCELLED, [(None, "stop_reason"), (None, "[DONE]")]),
    (Terminal.TIMEOUT, [(None, "stop_reason"), ("error", "error_message"), (None, "[DONE]")]),
])
def test_letta_endings(kind: Terminal, frames: list[tuple[str | None, str]]):
    out = sse_datas(LettaEncoder("r1")(ending(9, kind, "why")))
    shown = [(name, data if data == "[DONE]" else json.loads(data)["message_type"])
             for name, data in out]
    assert shown == frames
    if kind is Terminal.TIMEOUT:
        assert json.loads(out[1][1])["error_type"] == "timeout"


def test_letta_a_stored_stop_reason_is_not_repeated():
    encoder = LettaEncoder("r1")
    encoder(event(3, '{"message_type": "stop_reason", "stop_reason": "end_turn"}'))
    assert sse_datas(encoder(ending(4, Terminal.DONE))) == [(None, "[DONE]")]
    resumed = LettaEncoder("r1", previous='{"message_type": "stop_reason"}')
    assert sse_datas(resumed(ending(4, Terminal.DONE))) == [(None, "[DONE]")]


def test_letta_pings_are_ping_messages():
    [(name, data)] = sse_datas(LettaEncoder("r1").ping())
    assert name is None and json.loads(data)["message_type"] == "ping"


# -- the AI SDK's UI message stream ------------------------------------------------------------


def parts(text: str) -> list[dict]:
    return [json.loads(data) for _, data in sse_datas(text) if data != "[DONE]"]


def test_ui_text_data_and_finish():
    encoder = UIMessageEncoder("r1")
    out = encoder.opening() + encoder(event(1, '{"text": "a"}')) + encoder(event(2, "b")) \
        + encoder(event(3, '{"tool": 1}')) + encoder(event(4, '{"x": 1}', "usage")) \
        + encoder(ending(5, Terminal.DONE))
    assert parts(out) == [
        {"type": "start", "messageId": "r1"},
        {"type": "text-start", "id": "text-1"},
        {"type": "text-delta", "id": "text-1", "delta": "a"},
        {"type": "text-delta", "id": "text-1", "delta": "b"},
        {"type": "data-chunk", "data": {"tool": 1}, "id": "3"},
        {"type": "data-usage", "data": {"x": 1}, "id": "4"},
        {"type": "text-end", "id": "text-1"},
        {"type": "finish", "finishReason": "stop"},
    ]
    assert out.endswith("data: [DONE]\n\n")


def test_ui_history_drops_what_an_attempt_that_started_over_wrote():
    encoder = UIMessageEncoder("r1", history=4)
    held = [encoder(event(1, "old ")), encoder(event(2, '{"attempt": 2}', "restarted")),
            encoder(event(3, "new "))]
    assert held == ["", "", ""]  # held back until the history is read
    out = parts(encoder(event(4, "text")))
    assert [p.get("delta") for p in out if p["type"] == "text-delta"] == ["new ", "text"]
    assert out[0]["type"] == "data-restarted"


def test_ui_a_restart_that_resumes_keeps_the_text():
    encoder = UIMessageEncoder("r1")
    encoder(event(1, "kept "))
    out = parts(encoder(event(2, '{"attempt": 2, "resume": true}', "restarted")))
    assert [p["type"] for p in out] == ["data-restarted"]


def test_ui_a_live_restart_that_starts_over_abandons_the_response():
    encoder = UIMessageEncoder("r1")
    encoder(event(1, "old "))
    with pytest.raises(OutputAbandoned):
        encoder(event(2, '{"attempt": 2, "resume": false}', "restarted"))


@pytest.mark.parametrize(("kind", "part"), [
    (Terminal.CANCELLED, {"type": "abort", "reason": "stop pressed"}),
    (Terminal.ERROR, {"type": "error", "errorText": "error: stop pressed"}),
    (Terminal.LOST, {"type": "error", "errorText": "lost: stop pressed"}),
])
def test_ui_endings(kind: Terminal, part: dict):
    assert parts(UIMessageEncoder("r1")(ending(3, kind, "stop pressed"))) == [part]
