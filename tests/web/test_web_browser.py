"""A real browser follows a run through connection drops: EventSource resumes by itself.

Headless Chromium (Debian's, driven by the playwright package) loads the reference page, whose
run a real Celery worker produces, through a proxy that cuts every event stream after a few
events. The page's final text must equal the run's full output, every seq exactly once.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from examples.app import DEMO_TEXT, create_app
from streaming.client import sync_client
from streaming.reader import read_events
from streaming.settings import Settings
from streaming.web import StreamEndpoints
from streaming.writer import StreamWriter
from tasks.api import Runs
from tests.conftest import require
from tests.web.http_server import ServerThread
from tests.web.sse_proxy import CuttingProxy

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture
def browser() -> Iterator[object]:
    require(shutil.which(CHROMIUM) is not None or os.access(CHROMIUM, os.X_OK),
            f"no chromium at {CHROMIUM} (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "the playwright package is not installed (pip install playwright)")
        raise
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def full_text(settings: Settings, run_id: str) -> tuple[str, list[int]]:
    """The run's text and seqs as stored, read straight from Redis."""
    client = sync_client(settings, reader=True)
    texts, seqs = [], []
    for event in read_events(client, run_id, settings):
        if event.seq is not None and event.terminal is None:  # the chunks, not the ending
            texts.append(json.loads(event.data)["text"])
            seqs.append(event.seq)
    client.close()
    return "".join(texts), seqs


@contextmanager
def page_behind_a_cutting_proxy(browser: object, settings: Settings,
                                launcher: Runs) -> Iterator[tuple[Any, CuttingProxy]]:
    """The reference page, loaded through a proxy that cuts every stream after 7 events."""
    app = create_app(settings, launcher=launcher, retry_ms=200)
    with ServerThread(app) as server:
        proxy = CuttingProxy(server.port, cut_after=7)
        try:
            page = browser.new_page()  # type: ignore[attr-defined]
            page.goto(proxy.url + "/")
            yield page, proxy
            page.close()  # its timers and EventSource stop before the proxy and the server
        finally:
            proxy.close()


@pytest.mark.slow
def test_page_survives_dropped_connections(browser: object, settings: Settings,
                                           celery_runs: Runs):
    settings = settings.replace(token_secret="browser-test-" + "s" * 32)
    with page_behind_a_cutting_proxy(browser, settings, celery_runs) as (page, proxy):
        page.click("#start")
        page.wait_for_selector("body[data-finished]", timeout=30_000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser-reconnect.png"), full_page=True)
        run_id = page.text_content("#run-id")
        shown = page.text_content("#output")
        seqs = page.get_attribute("#output", "data-seqs")
        state = page.get_attribute("body", "data-finished")
        reconnects = int(page.text_content("#reconnects") or 0)
        closed = page.evaluate("source.readyState === EventSource.CLOSED")
    text, stored = full_text(settings, run_id or "")
    assert state == "done" and closed  # the page closed its EventSource: no reconnect loop
    assert proxy.cuts >= 2 and reconnects >= 2
    assert shown == text
    assert [int(s) for s in (seqs or "").split(",")] == stored


@pytest.mark.slow
def test_cancel_button_ends_the_page_cleanly(browser: object, settings: Settings,
                                             celery_runs: Runs):
    settings = settings.replace(token_secret="browser-test-" + "s" * 32)
    with ServerThread(create_app(settings, launcher=celery_runs)) as server:
        page = browser.new_page()  # type: ignore[attr-defined]
        page.goto(server.url + "/")
        page.click("#start")
        page.wait_for_selector("#output[data-seqs]", timeout=30_000)  # the first chunk is in
        page.click("#cancel")
        page.wait_for_selector("body[data-finished]", timeout=30_000)
        state = page.get_attribute("body", "data-finished")
        closed = page.evaluate("source.readyState === EventSource.CLOSED")
        shown = page.text_content("#output") or ""
    assert state == "cancelled" and closed
    assert 0 < len(shown) < len(DEMO_TEXT)


@pytest.mark.slow
def test_page_outlives_its_tokens(browser: object, settings: Settings, celery_runs: Runs):
    """Tokens that live 4 s, a run of 10 s through a proxy that cuts every stream: the page
    gets a fresh page session when its first expired, renews the run's tokens at half their
    lifetime, opens the stream again with the fresh one when EventSource's own reconnect (with
    the token it was opened with) is refused, and cancels with a renewed cancel token."""
    settings = settings.replace(token_secret="browser-test-" + "s" * 32, token_ttl=4)
    with page_behind_a_cutting_proxy(browser, settings, celery_runs) as (page, proxy):
        page.wait_for_timeout(4_500)  # the page session's cookie expires
        page.select_option("#rate", "5")
        page.click("#start")
        page.wait_for_function("run !== null", timeout=30_000)
        first = page.evaluate("[run.token, run.cancel_token]")
        page.wait_for_function(seqs_at_least(35), timeout=30_000)  # 7 s: both expired
        page.click("#cancel")
        page.wait_for_selector("body[data-finished]", timeout=30_000)
        run_id = page.text_content("#run-id") or ""
        state = page.get_attribute("body", "data-finished")
        shown = page.text_content("#output")
        seqs = page.get_attribute("#output", "data-seqs")
        last = page.evaluate("[run.token, run.cancel_token]")
        reconnects = int(page.text_content("#reconnects") or 0)
    text, stored = full_text(settings, run_id)
    assert state == "cancelled"
    assert first[0] != last[0] and first[1] != last[1]
    assert proxy.cuts >= 4 and reconnects >= 4
    assert shown == text and len(text) < len(DEMO_TEXT)
    assert [int(s) for s in (seqs or "").split(",")] == stored


def seqs_at_least(count: int) -> str:
    return ("(document.querySelector('#output').dataset.seqs || '')"
            f".split(',').filter(Boolean).length >= {count}")


@pytest.mark.slow
def test_page_survives_a_reload_mid_run(browser: object, settings: Settings, celery_runs: Runs):
    """Reload mid-run: the page finds its run in the URL and its text and cursor in session
    storage, resumes after its last event id, and ends with the run's output exactly."""
    settings = settings.replace(token_secret="browser-test-" + "s" * 32)
    app = create_app(settings, launcher=celery_runs, flower_url="http://flower.test:5555/")
    with ServerThread(app) as server:
        page = browser.new_page(viewport={"width": 1100, "height": 900})  # type: ignore[attr-defined]
        page.goto(server.url + "/")
        page.select_option("#rate", "10")
        page.click("#start")
        page.wait_for_function(seqs_at_least(5), timeout=30_000)
        url = page.url
        page.reload()
        page.wait_for_function(seqs_at_least(12), timeout=30_000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "page-resumed-after-reload.png"))
        page.wait_for_selector("body[data-finished]", timeout=60_000)
        run_id = page.text_content("#run-id") or ""
        shown = page.text_content("#output")
        seqs = page.get_attribute("#output", "data-seqs")
        state = page.get_attribute("body", "data-finished")
        reconnects = int(page.text_content("#reconnects") or 0)
        flower = page.get_attribute("#flower-link", "href")
        page.wait_for_function(
            f"document.querySelector('#runs tbody').textContent.includes('{run_id[:12]}')",
            timeout=10_000)
        listed = page.text_content("#runs tbody") or ""
        page.reload()  # after the end: the saved view, no new connection
        page.wait_for_selector("body[data-finished]", timeout=10_000)
        again = page.text_content("#output")
        reconnected = page.evaluate("source === null")
    text, stored = full_text(settings, run_id)
    assert url.endswith(f"?run={run_id}")
    assert state == "done" and reconnects == 1
    assert shown == text == again
    assert [int(s) for s in (seqs or "").split(",")] == stored  # every chunk once
    assert flower == f"http://flower.test:5555/task/{run_id}"
    assert "done" in listed
    assert reconnected


@pytest.mark.slow
def test_drop_button_shows_the_resume(browser: object, settings: Settings, celery_runs: Runs):
    settings = settings.replace(token_secret="browser-test-" + "s" * 32)
    with ServerThread(create_app(settings, launcher=celery_runs)) as server:
        page = browser.new_page()  # type: ignore[attr-defined]
        page.goto(server.url + "/")
        page.select_option("#rate", "10")
        page.click("#start")
        page.wait_for_function(seqs_at_least(3), timeout=30_000)
        page.click("#drop")
        page.wait_for_selector("body[data-finished]", timeout=60_000)
        run_id = page.text_content("#run-id") or ""
        shown = page.text_content("#output")
        seqs = page.get_attribute("#output", "data-seqs")
        log = page.text_content("#events") or ""
        reconnects = int(page.text_content("#reconnects") or 0)
    text, stored = full_text(settings, run_id)
    assert reconnects == 1 and "connection dropped after #" in log and "resumed after #" in log
    assert shown == text
    assert [int(s) for s in (seqs or "").split(",")] == stored


def readme_snippet() -> str:
    """The README's plain EventSource client, as printed there."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("#### A plain `EventSource` that resumes across reloads", 1)[1]
    return section.split("```js\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_readme_eventsource_snippet_resumes_across_a_reload(browser: object, settings: Settings,
                                                             writer: StreamWriter):
    """The README's snippet, verbatim in a page: reload mid-run, the text ends exact."""
    settings = settings.replace(token_secret="browser-test-" + "s" * 32)
    streams = StreamEndpoints(settings)
    run_id = f"run-{uuid.uuid4().hex}"
    url = f"/runs/{run_id}/stream?token={streams.issue_token(run_id)}"
    setup = ("if (!sessionStorage.getItem('run')) sessionStorage.setItem('run', "
             f"JSON.stringify({{url: '{url}', last: '', text: ''}}));")
    html = (f"<!doctype html><div id='output'></div><script>{setup}</script>"
            f"<script>{readme_snippet()}</script>")

    async def page_route(request: object) -> HTMLResponse:
        return HTMLResponse(html)

    app = Starlette(routes=[Route("/", page_route), *streams.routes], lifespan=streams.lifespan)
    texts = [f"part {i}, " for i in range(40)]

    def produce() -> None:
        handle = writer.open(run_id)
        for text in texts:
            handle.send(json.dumps({"text": text}))
            handle.flush()
            time.sleep(0.05)
        handle.finish()

    producer = threading.Thread(target=produce)
    with ServerThread(app) as server:
        page = browser.new_page()  # type: ignore[attr-defined]
        producer.start()
        page.goto(server.url + "/")
        page.wait_for_function("document.querySelector('#output').textContent.length > 30",
                               timeout=30_000)
        page.reload()
        page.wait_for_function("JSON.parse(sessionStorage.getItem('run')).last === '41'",
                               timeout=30_000)
        shown = page.text_content("#output")
        producer.join(10)
    assert shown == "".join(texts)


@pytest.mark.slow
def test_page_drops_the_output_of_an_attempt_that_started_over(
        browser: object, settings: Settings, writer: StreamWriter):
    """The client rule: ``restarted`` without ``"resume": true`` drops what came before."""
    settings = settings.replace(token_secret="browser-test-" + "s" * 32)
    run_id = f"run-{uuid.uuid4().hex}"
    first = writer.open(run_id)
    first.send(json.dumps({"text": "abandoned "}))
    first.release()
    second = writer.open(run_id)  # stores `restarted` first
    for text in ("kept ", "text"):
        second.send(json.dumps({"text": text}))
    second.finish()
    app = create_app(settings, launcher=object())  # type: ignore[arg-type]
    token = app.state.streams.issue_token(run_id)
    known = {run_id: {"run_id": run_id, "stream_url": f"/runs/{run_id}/stream?token={token}",
                      "cancel_url": "", "started": 1}}
    with ServerThread(app) as server:
        page = browser.new_page()  # type: ignore[attr-defined]
        page.goto(server.url + "/")
        page.evaluate(f"localStorage.setItem('celery-streaming:runs', '{json.dumps(known)}')")
        page.goto(f"{server.url}/?run={run_id}")
        page.wait_for_selector("body[data-finished]", timeout=30_000)
        shown = page.text_content("#output")
        notices = page.text_content("#notices") or ""
        attempt = page.text_content("#attempt")
    assert shown == "kept text"
    assert "attempt 2 started over" in notices and attempt == "2"
