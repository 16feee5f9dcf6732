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
    assert token.startswith("run-a.b_c-1.r.0.1800000060.")
    signer.check(token, "run-a.b_c-1", now=NOW + 59)
    with pytest.raises(Unauthenticated, match="expired"):
        signer.check(token, "run-a.b_c-1", now=NOW + 60)


def test_a_token_for_another_run_is_forbidden_not_unauthenticated():
    signer = TokenSigner(SECRET)
    with pytest.raises(AccessDenied) as caught:
        signer.check(signer.issue("run-1", 60, now=NOW), "run-2", now=NOW)
    assert type(caught.value) is AccessDenied


@pytest.mark.parametrize("change", ["run id", "expiry", "scope", "generation", "signature",
                                    "secret"])
def test_any_change_breaks_the_signature(change: str):
    signer = TokenSigner(SECRET)
    _, scopes, generation, expiry, signature = signer.issue("run-1", 60, now=NOW).rsplit(".", 4)
    if change == "run id":
        token = f"run-2.{scopes}.{generation}.{expiry}.{signature}"
    elif change == "expiry":
        token = f"run-1.{scopes}.{generation}.{int(expiry) + 3600}.{signature}"
    elif change == "scope":
        token = f"run-1.c.{generation}.{expiry}.{signature}"
    elif change == "generation":
        token = f"run-1.{scopes}.{int(generation) + 1}.{expiry}.{signature}"
    elif change == "signature":
        token = (f"run-1.{scopes}.{generation}.{expiry}."
                 f"{signature[:-1]}{'A' if signature[-1] != 'A' else 'B'}")
    else:
        token = TokenSigner("z" * 32).issue("run-1", 60, now=NOW)
    with pytest.raises(Unauthenticated, match="bad signature"):
        signer.check(token, "run-1" if change != "run id" else "run-2", now=NOW)


@pytest.mark.parametrize("token", ["", "abc", "run-1..sig", "run-1.12x.sig", ".1800000060.sig",
                                   "run-1.1800000060", "r.1" + "0" * 13 + ".sig", "x" * 400,
                                   "run-1.\uff11\uff18.sig", "run-1.r.0.1800000060",
                                   "run-1.x.0.1800000060.sig", "run-1.rr.0.1800000060.sig",
                                   "run-1.r.0.18x.sig", "run-1..0.1800000060.sig",
                                   ".r.0.1800000060.sig", "run-1.r.0.1800000060.",
                                   "run-1.r." + "1" * 11 + ".1800000060.sig"])
def test_malformed_tokens_are_unauthenticated(token: str):
    with pytest.raises(Unauthenticated, match="malformed"):
        TokenSigner(SECRET).check(token, "run-1", now=NOW)


def test_scopes_are_separate_capabilities():
    signer = TokenSigner(SECRET)
    read = signer.issue("run-1", 60, now=NOW)
    cancel = signer.issue("run-1", 60, scopes=("cancel",), now=NOW)
    both = signer.issue("run-1", 60, scopes=("read", "cancel"), now=NOW)
    assert signer.check(read, "run-1", "read", now=NOW).scopes == {"read"}
    with pytest.raises(AccessDenied, match="does not allow cancel"):
        signer.check(read, "run-1", "cancel", now=NOW)
    with pytest.raises(AccessDenied, match="does not allow read"):
        signer.check(cancel, "run-1", "read", now=NOW)
    assert signer.check(both, "run-1", "cancel", now=NOW).scopes == {"read", "cancel"}
    session = signer.issue("session-1", 60, scopes=("create",), now=NOW)
    assert signer.check(session, None, "create", now=NOW).subject == "session-1"
    with pytest.raises(AccessDenied, match="does not allow create"):
        signer.check(read, None, "create", now=NOW)
    with pytest.raises(ConfigurationError, match="scopes"):
        signer.issue("run-1", 60, scopes=("admin",))


def test_revoking_a_runs_tokens_raises_its_generation(redis_client, settings, run_id):
    from streaming.control import mark_pending
    from streaming.tokens import revoke_tokens, token_generation

    assert revoke_tokens(redis_client, run_id, settings) is None  # no such run: nothing stored
    assert not redis_client.exists(f"sse:run:{run_id}:meta")
    mark_pending(redis_client, run_id, settings)
    assert token_generation(redis_client, run_id, settings) == 0
    assert revoke_tokens(redis_client, run_id, settings) == 1
    assert revoke_tokens(redis_client, run_id, settings) == 2
    assert token_generation(redis_client, run_id, settings) == 2
    redis_client.delete(f"sse:run:{run_id}:meta")
    redis_client.set(f"sse:run:{run_id}:meta", "foreign")
    assert token_generation(redis_client, run_id, settings) == 0  # not a run: reading says so
    redis_client.delete(f"sse:run:{run_id}:meta")


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
