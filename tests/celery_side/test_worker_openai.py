"""The ``openai`` generator against a local server speaking the chat-completions stream."""

from __future__ import annotations

import json

import pytest
from worker_helpers import read_run, texts

from streaming.reader import read_events
from streaming.wire import Terminal
from tasks.errors import InvalidParams
from tasks.registry import registry

pytestmark = pytest.mark.usefixtures("stream_worker")


def test_a_chat_completion_streams_its_text_then_finish(runs, chat_server, reader_client,
                                                        worker_config):
    run_id = runs.start("openai", {"prompt": "hello there"})
    events = read_run(reader_client, run_id, worker_config.streaming)
    assert texts(events) == "hello there!"
    assert [(e.event, e.data) for e in events[-2:]] == [
        ("finish", '{"reason": "stop"}'), ("message", "[DONE]")]
    request = next(r for r in chat_server.requests
                   if r["body"]["messages"][-1]["content"] == "hello there")
    assert request["path"] == "/v1/chat/completions"
    assert request["authorization"] == "Bearer sk-test-key"
    assert request["body"]["model"] == "test-model" and request["body"]["stream"] is True


def test_params_choose_messages_model_and_sampling(runs, chat_server, reader_client,
                                                   worker_config):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "abcdef"}]
    run_id = runs.start("openai", {"messages": messages, "model": "other-model",
                                   "temperature": 0.5, "max_tokens": 20})
    assert texts(read_run(reader_client, run_id, worker_config.streaming)) == "abcdef!"
    body = next(r["body"] for r in chat_server.requests if r["body"]["messages"] == messages)
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("other-model", 0.5, 20)


def test_cancel_closes_the_upstream_stream(runs, chat_server, reader_client, worker_config):
    chat_server.disconnected.clear()
    run_id = runs.start("openai", {"prompt": "slow"})
    events = iter(read_events(reader_client, run_id, worker_config.streaming))
    next(events)
    assert runs.cancel(run_id, "enough")
    assert [e.terminal for e in events][-1] is Terminal.CANCELLED
    assert chat_server.disconnected.wait(5), "the server kept streaming to a cancelled run"


def test_a_server_error_ends_the_run_with_its_type(runs, reader_client, worker_config):
    events = read_run(reader_client, runs.start("openai", {"prompt": "bad"}),
                      worker_config.streaming)
    error = json.loads(events[-1].data)["error"]
    assert error["type"] == "BadRequestError" and "does not exist" in error["message"]


@pytest.mark.parametrize("params", [{}, {"prompt": "a", "messages": []},
                                    {"prompt": "a", "api_key": "sk-mine"},
                                    {"messages": [{"role": "robot", "content": "x"}]}])
def test_chat_params_are_checked(params):
    with pytest.raises(InvalidParams):
        registry.get("openai").parse(params)
