"""The worker's configuration, the Celery settings it implies, and the pieces tasks are built of."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streaming.errors import ConfigurationError
from tasks.api import new_run_id, redact
from tasks.errors import InvalidParams, UnknownGenerator, UnsupportedChunk
from tasks.framing import Event, frame
from tasks.registry import Params, Registry
from worker.config import WorkerConfig, celery_settings

ROOT = Path(__file__).resolve().parents[2]


def test_redis_url_is_required_and_named():
    with pytest.raises(ConfigurationError, match="REDIS_URL"):
        WorkerConfig.from_env({})


def test_broker_and_result_backend_default_to_redis_url():
    config = WorkerConfig.from_env({"REDIS_URL": "redis://store:6379/0"})
    assert config.broker_url == config.result_backend == "redis://store:6379/0"
    assert config.streaming.redis_url == "redis://store:6379/0"


def test_environment_overrides_are_parsed():
    config = WorkerConfig.from_env({
        "REDIS_URL": "redis://store/0", "CELERY_BROKER_URL": "amqp://guest@rabbit//",
        "CELERY_RESULT_BACKEND": "redis://results/1", "WORKER_SOFT_TIME_LIMIT": "60",
        "WORKER_TIME_LIMIT": "90", "WORKER_REJECT_ON_WORKER_LOST": "false",
        "WORKER_GENERATOR_MODULES": "a.gens, b.gens", "STREAMING_LEASE_TTL": "3",
        "OPENAI_API_KEY": "sk-test",
    })
    assert config.broker_url == "amqp://guest@rabbit//"
    assert config.result_backend == "redis://results/1"
    assert (config.soft_time_limit, config.time_limit) == (60.0, 90.0)
    assert config.reject_on_worker_lost is False
    assert config.generator_modules == ("a.gens", "b.gens")
    assert config.streaming.lease_ttl == 3.0
    assert "sk-test" not in repr(config)


@pytest.mark.parametrize(("env", "message"), [
    ({"WORKER_TIME_LIMIT": "soon"}, "WORKER_TIME_LIMIT='soon' is not a valid float"),
    ({"WORKER_SOFT_TIME_LIMIT": "100", "WORKER_TIME_LIMIT": "50"}, "must be greater"),
    ({"WORKER_REJECT_ON_WORKER_LOST": "maybe"}, "not a valid bool"),
])
def test_unusable_values_are_refused_with_their_variable(env, message):
    with pytest.raises(ConfigurationError, match=message):
        WorkerConfig.from_env({"REDIS_URL": "redis://store/0", **env})


def test_celery_settings_for_long_tasks():
    config = WorkerConfig.from_env({"REDIS_URL": "redis://store/0"})
    conf = celery_settings(config)
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["broker_transport_options"]["visibility_timeout"] > conf["task_time_limit"]
    assert conf["task_soft_time_limit"] < conf["task_time_limit"]
    assert conf["worker_send_task_events"] and conf["task_send_sent_event"]
    assert conf["task_track_started"]


def test_celery_cli_without_redis_url_fails_naming_it():
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")}
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool", "solo"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "REDIS_URL is not set" in done.stderr + done.stdout


def test_the_celery_command_loads_the_app_from_a_checkout():
    celery = Path(sys.executable).with_name("celery")
    if not celery.exists():
        pytest.skip("no celery console script beside this interpreter")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["REDIS_URL"] = "redis://127.0.0.1:1/0"  # `report` connects to nothing
    done = subprocess.run([str(celery), "-A", "worker", "report"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "task_acks_late: True" in done.stdout


def test_the_runs_api_imports_no_task_or_generator_code():
    code = ("import sys, tasks.api;"
            "loaded = [m for m in ('tasks.execute', 'tasks.generate', 'tasks.generators',"
            " 'openai', 'pydantic') if m in sys.modules];"
            "assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_importing_the_packages_reads_and_starts_nothing():
    code = ("import os, threading, worker, tasks, tasks.api, tasks.generate, tasks.generators;"
            "assert threading.active_count() == 1, threading.enumerate();"
            "assert 'app' not in vars(worker)")
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=60)


def test_frames_text_json_and_named_events():
    assert frame("hi") == ("hi", None)
    assert frame({"text": "é"}) == ('{"text": "é"}', None)
    assert frame([1, "a"]) == ('[1, "a"]', None)
    assert frame(Event("usage", {"tokens": 2})) == ('{"tokens": 2}', "usage")
    assert frame(Event("status", "thinking")) == ("thinking", "status")
    assert frame(Event("count", 3)) == ("3", "count")


@pytest.mark.parametrize("item", [3, None, b"bytes", {"x": {1, 2}}, {"nan": float("nan")}])
def test_values_without_framing_are_refused(item):
    with pytest.raises(UnsupportedChunk):
        frame(item)


class EchoParams(Params):
    text: str
    times: int = 1


def test_registry_is_an_allow_list_with_typed_params():
    registry = Registry()

    @registry.register("echo", EchoParams)
    def echo(params, context):
        yield params.text

    spec = registry.get("echo")
    assert spec.parse({"text": "a"}) == EchoParams(text="a", times=1)
    with pytest.raises(UnknownGenerator, match="registered: echo"):
        registry.get("builtins.eval")
    with pytest.raises(UnknownGenerator):
        registry.get(["echo"])
    with pytest.raises(InvalidParams, match="times: Input should be a valid integer"):
        spec.parse({"text": "a", "times": 1.5})
    with pytest.raises(InvalidParams, match="text: Field required"):
        spec.parse({})
    with pytest.raises(ValueError, match="already registered"):
        registry.register("echo", EchoParams)(lambda params, context: iter(()))


def test_redact_hides_secret_looking_keys_at_any_depth():
    shown = redact({"prompt": "hi", "api_key": "sk", "auth": {"Authorization": "Bearer t"},
                    "headers": {"Authorization": "Bearer t", "accept": "json"},
                    "items": [{"password": "p", "n": 1}]})
    assert shown == {"prompt": "hi", "api_key": "***", "auth": "***",  # the whole value
                     "headers": {"Authorization": "***", "accept": "json"},
                     "items": [{"password": "***", "n": 1}]}


def test_run_ids_carry_128_random_bits():
    ids = {new_run_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(run_id) == len("run-") + 32 for run_id in ids)


def test_process_init_starts_the_writer_at_once_with_redis_down_and_shutdown_stops_it():
    code = """if True:
        import time
        from types import SimpleNamespace
        from celery import signals
        from streaming.celery.lifecycle import WorkerStep
        from streaming.embedded import free_port
        from worker.config import WorkerConfig
        from worker.factory import create_app

        app = create_app(WorkerConfig.from_env({"REDIS_URL": f"redis://127.0.0.1:{free_port()}"}))
        # What a prefork worker named "w@test" does with the app's bootstep, then in a child.
        WorkerStep(SimpleNamespace(app=app, hostname="w@test", pool_cls="prefork",
                                   consumer_cls="celery.worker.consumer:Consumer"))
        signals.worker_process_init.send(sender="other@test")  # another worker's: not ours
        assert app.streaming._writer is None
        started = time.monotonic()
        signals.worker_process_init.send(sender="w@test")
        took = time.monotonic() - started
        writer = app.stream_writer()
        assert writer.running and took < 1.0, took
        signals.worker_process_shutdown.send(sender="w@test", pid=0, exitcode=0)
        assert not writer.running
    """
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=60)


def test_the_sweep_is_a_step_of_this_apps_workers_only():
    """The sweep joins the worker blueprint of the app built by create_app, not Celery's
    global one: another app in the same process starts no sweep."""
    from celery import Celery

    from streaming.celery.sweep import SweepStep
    from worker.factory import create_app

    ours = create_app(WorkerConfig.from_env({"REDIS_URL": "redis://store/0"}))
    other = Celery("other", set_as_current=False)
    assert SweepStep in ours.steps["worker"]
    assert SweepStep not in other.steps["worker"]


def test_celery_store_calls_are_bounded():
    """Finding 6: Celery's defaults (120 s socket reads, 20 retries of a result write) let a
    store outage hold a task far past unavailable_timeout."""
    config = WorkerConfig.from_env({"REDIS_URL": "redis://store/0",
                                    "STREAMING_SOCKET_TIMEOUT": "2"})
    conf = celery_settings(config)
    assert conf["redis_socket_timeout"] == conf["redis_socket_connect_timeout"] == 2.0
    assert conf["redis_retry_on_timeout"] is False
    assert conf["result_backend_transport_options"]["retry_policy"]["max_retries"] == 1
    assert conf["broker_transport_options"]["socket_timeout"] == 2.0
    amqp = celery_settings(WorkerConfig.from_env({"REDIS_URL": "redis://store/0",
                                                  "CELERY_BROKER_URL": "amqp://guest@rabbit//"}))
    assert "socket_timeout" not in amqp["broker_transport_options"]
