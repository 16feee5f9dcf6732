"""Read tokens: scoped to one run, expiring, unforgeable without the secret; no Redis needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streaming.errors import AccessDenied, ConfigurationError, InvalidRunId, Unauthenticated
from streaming.tokens import TokenSigner

SECRET = "k" * 32
NOW = 1_800_000_000.0


def test_a_token_reads_its_run_until_it_expires():
    signer = TokenSigner(SECRET)
    token = signer.issue("run-a.b_c-1", 60, now=NOW)
    assert token.startswith("run-a.b_c-1.1800000060.")
    signer.check(token, "run-a.b_c-1", now=NOW + 59)
    with pytest.raises(Unauthenticated, match="expired"):
        signer.check(token, "run-a.b_c-1", now=NOW + 60)


def test_a_token_for_another_run_is_forbidden_not_unauthenticated():
    signer = TokenSigner(SECRET)
    with pytest.raises(AccessDenied) as caught:
        signer.check(signer.issue("run-1", 60, now=NOW), "run-2", now=NOW)
    assert type(caught.value) is AccessDenied


@pytest.mark.parametrize("change", ["run id", "expiry", "signature", "secret"])
def test_any_change_breaks_the_signature(change: str):
    signer = TokenSigner(SECRET)
    _, expiry, signature = signer.issue("run-1", 60, now=NOW).rsplit(".", 2)
    if change == "run id":
        token = f"run-2.{expiry}.{signature}"
    elif change == "expiry":
        token = f"run-1.{int(expiry) + 3600}.{signature}"
    elif change == "signature":
        token = f"run-1.{expiry}.{signature[:-1]}{'A' if signature[-1] != 'A' else 'B'}"
    else:
        token = TokenSigner("z" * 32).issue("run-1", 60, now=NOW)
    with pytest.raises(Unauthenticated, match="bad signature"):
        signer.check(token, "run-1" if change != "run id" else "run-2", now=NOW)


@pytest.mark.parametrize("token", ["", "abc", "run-1..sig", "run-1.12x.sig", ".1800000060.sig",
                                   "run-1.1800000060", "r.1" + "0" * 13 + ".sig", "x" * 400,
                                   "run-1.\uff11\uff18.sig"])
def test_malformed_tokens_are_unauthenticated(token: str):
    with pytest.raises(Unauthenticated, match="malformed"):
        TokenSigner(SECRET).check(token, "run-1", now=NOW)


def test_weak_secrets_and_bad_input_are_refused():
    with pytest.raises(ConfigurationError, match="at least 32"):
        TokenSigner("short")
    with pytest.raises(InvalidRunId):
        TokenSigner(SECRET).issue("bad id", 60)
    with pytest.raises(ConfigurationError):
        TokenSigner(SECRET).issue("run-1", 0)


def test_streaming_imports_without_the_web_extra():
    """``import streaming`` needs no Starlette; ``streaming.web`` says which extra it needs."""
    code = ("import sys\n"
            "sys.modules['starlette'] = sys.modules['sse_starlette'] = None\n"
            "import streaming\n"
            "try:\n"
            "    import streaming.web\n"
            "except ImportError as exc:\n"
            "    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, check=True, cwd=Path(__file__).resolve().parents[2])
    assert "pip install 'celery-streaming[web]'" in done.stdout
