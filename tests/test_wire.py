"""The wire format: keys, validation of run ids and cursors, SSE frames."""

import pytest

from streaming import InvalidChunk, InvalidCursor, InvalidRunId, Terminal
from streaming.wire import (
    MAX_SEQ,
    RunKeys,
    check_frame_size,
    encode_frame,
    entry_event,
    parse_cursor,
    parse_frame,
    terminal_frame,
)


def test_keys_match_the_seed_format():
    keys = RunKeys.for_run("run-1")
    assert (keys.stream, keys.meta, keys.lease) == (
        "sse:run:run-1", "sse:run:run-1:meta", "sse:run:run-1:lease")
    tagged = RunKeys.for_run("run-1", hash_tag=True)
    assert tagged.stream == "sse:run:{run-1}" and tagged.lease == "sse:run:{run-1}:lease"


@pytest.mark.parametrize("run_id", ["", "a" * 129, "a:b", "a*", "a b", "{x}", "a\nb", "é",
                                    "sse:run:x", "a\x00", 5, None, b"bytes"])
def test_bad_run_ids_are_refused(run_id):
    with pytest.raises(InvalidRunId):
        RunKeys.for_run(run_id)


@pytest.mark.parametrize("cursor", ["text", "-1", -1, str(MAX_SEQ + 1), MAX_SEQ + 1, "$", "1.5",
                                    1.5, "", " 1", "1e3", "0x10", True, "９"])
def test_bad_cursors_are_refused(cursor):
    with pytest.raises(InvalidCursor):
        parse_cursor(cursor)


@pytest.mark.parametrize(("cursor", "seq"), [(None, 0), (0, 0), ("0", 0), ("42", 42), (7, 7),
                                            (MAX_SEQ, MAX_SEQ)])
def test_good_cursors(cursor, seq):
    assert parse_cursor(cursor) == seq


def test_frames_round_trip_multiline_data_and_event_names():
    frame = encode_frame("one\ntwo\r\nthree", "delta")
    assert frame == "event: delta\ndata: one\ndata: two\ndata: three\n\n"
    assert parse_frame(frame) == ("delta", "one\ntwo\nthree")
    assert parse_frame("data: [DONE]\n\n") == ("message", "[DONE]")


def test_frame_size_limit_and_text_checks():
    with pytest.raises(InvalidChunk, match="exceeds"):
        encode_frame("x" * 100, limit=50)
    with pytest.raises(InvalidChunk, match="UTF-8"):
        check_frame_size("data: \udcff\n\n", 1000)
    with pytest.raises(InvalidChunk, match="must be str"):
        encode_frame(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(InvalidChunk, match="event name"):
        encode_frame("x", "bad\nname")
    assert check_frame_size("data: é\n\n", 10) is None


@pytest.mark.parametrize("kind", list(Terminal))
def test_terminal_frames_read_back_as_their_kind(kind):
    if kind is Terminal.NOT_FOUND:
        return
    event = entry_event({"seq_id": "3", "data": terminal_frame(kind, "why", type="ValueError"),
                         "complete": "true"})
    assert event.terminal is kind and event.seq == 3


def test_seed_terminal_frames_are_understood():
    error = 'event: error\ndata: {"error": {"message": "boom"}}\n\n'
    failed = {"seq_id": "1", "data": error, "complete": "true"}
    assert entry_event(failed).terminal is Terminal.ERROR
    done = {"seq_id": "2", "data": "data: [DONE]\n\n", "complete": "true"}
    assert entry_event(done).terminal is Terminal.DONE
    assert entry_event({"seq_id": "2", "data": "data: x\n\n"}).terminal is None
