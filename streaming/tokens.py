"""Tokens: signed, expiring, scoped capabilities on one run, checked without Redis.

A token is ``<subject>.<scopes>.<generation>.<expiry>.<signature>``:

- ``subject``: the run id in clear (URL-safe already), or a session id for ``create`` tokens;
- ``scopes``: what it allows, one letter each: ``r`` read (stream, status, refresh), ``c``
  cancel, ``n`` create runs. A read token cannot cancel, a cancel token cannot read;
- ``generation``: the run's token generation when it was issued. Revoking a run's tokens
  (``revoke_tokens``) raises the generation stored in the run's meta hash, and every token of
  an older generation is refused from then on, without rotating the secret;
- ``expiry`` in Unix seconds;
- ``signature``: HMAC-SHA256 over all of it under a secret every web process shares
  (``Settings.token_secret``, ``STREAMING_TOKEN_SECRET``), base64url without padding.

All of it is URL-safe, so a token rides in ``?token=`` (``EventSource`` cannot set headers) as
well as in ``Authorization: Bearer`` or a cookie. The signature, expiry, run and scope are checked
without Redis, so a forged, expired or misdirected token costs no command; only the generation
of a genuine token is read from the store (one ``HGET``). Keep run ids unguessable (the tasks
API makes 128-bit ones).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterable
from dataclasses import dataclass

from redis.exceptions import ResponseError

from .client import AsyncClient, SyncClient
from .errors import AccessDenied, ConfigurationError, Unauthenticated
from .settings import Settings
from .wire import RunKeys, validate_run_id

__all__ = [
    "MIN_SECRET_LENGTH",
    "SCOPES",
    "Claims",
    "TokenSigner",
    "arevoke_tokens",
    "atoken_generation",
    "revoke_tokens",
    "token_generation",
]

MIN_SECRET_LENGTH = 32
#: Scope names and their letters in a token.
SCOPES = {"read": "r", "cancel": "c", "create": "n"}
_NAMES = {letter: name for name, letter in SCOPES.items()}
_CONTEXT = b"celery-streaming token v2\n"
# A 128-character run id, scopes, a 10-digit generation, a 12-digit expiry and a 43-character
# signature fit.
_MAX_TOKEN = 320
#: The meta hash field that holds a run's token generation.
GENERATION_FIELD = "tokens"


@dataclass(frozen=True)
class Claims:
    """What a genuine, unexpired token says."""

    subject: str
    scopes: frozenset[str]
    generation: int
    expiry: int


class TokenSigner:
    """Issues and checks tokens under one secret."""

    def __init__(self, secret: str | bytes) -> None:
        key = secret.encode() if isinstance(secret, str) else secret
        if len(key) < MIN_SECRET_LENGTH:
            raise ConfigurationError(
                f"the token secret must be at least {MIN_SECRET_LENGTH} characters "
                "(STREAMING_TOKEN_SECRET); make one with: python -c "
                "'import secrets; print(secrets.token_urlsafe(32))'"
            )
        self._key = key

    def issue(self, subject: str, ttl: float, *, scopes: Iterable[str] = ("read",),
              generation: int = 0, now: float | None = None) -> str:
        """A token that lets its holder do ``scopes`` on run ``subject`` for ``ttl`` seconds."""
        validate_run_id(subject)
        if ttl <= 0:
            raise ConfigurationError(f"token ttl must be positive, got {ttl!r}")
        letters = _letters(scopes)
        if not 0 <= generation < 10**10:
            raise ConfigurationError(f"token generation out of range: {generation!r}")
        expiry = str(int((time.time() if now is None else now) + ttl))
        body = f"{subject}.{letters}.{generation}.{expiry}"
        return f"{body}.{self._sign(body)}"

    def verify(self, token: str, *, now: float | None = None) -> Claims:
        """The claims of a genuine, unexpired ``token``; ``Unauthenticated`` otherwise.

        The signature is checked first, so a forger learns nothing else.
        """
        body, signature = _split(token)
        if not hmac.compare_digest(signature, self._sign(body)):
            raise Unauthenticated("invalid token: bad signature")
        subject, letters, generation, expiry = body.rsplit(".", 3)
        if int(expiry) <= (time.time() if now is None else now):
            raise Unauthenticated("invalid token: expired")
        scopes = frozenset(_NAMES[letter] for letter in letters)
        return Claims(subject, scopes, int(generation), int(expiry))

    def check(self, token: str, run_id: str | None, scope: str | None = "read", *,
              now: float | None = None) -> Claims:
        """The claims of ``token`` if it allows ``scope`` on ``run_id``; raise why not otherwise.

        ``Unauthenticated``: malformed, forged or expired; ``AccessDenied``: a genuine token for
        another run or without ``scope``. ``run_id`` None (the ``create`` scope) takes any
        subject; ``scope`` None any scope.
        """
        claims = self.verify(token, now=now)
        if run_id is not None and not hmac.compare_digest(claims.subject.encode(),
                                                          run_id.encode()):
            raise AccessDenied("the token is for another run")
        if scope is not None and scope not in claims.scopes:
            raise AccessDenied(f"the token does not allow {scope}")
        return claims

    def _sign(self, body: str) -> str:
        digest = hmac.new(self._key, _CONTEXT + body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _letters(scopes: Iterable[str]) -> str:
    names = set(scopes)
    unknown = names - SCOPES.keys()
    if unknown or not names:
        raise ConfigurationError(f"token scopes must be some of {sorted(SCOPES)}, got "
                                 f"{sorted(names)}")
    return "".join(sorted(SCOPES[name] for name in names))


def _split(token: str) -> tuple[str, str]:
    """``(signed body, signature)``; ``Unauthenticated`` unless the token is well formed."""
    if not token or len(token) > _MAX_TOKEN or not token.isascii():
        raise Unauthenticated("invalid token: malformed")
    parts = token.rsplit(".", 4)
    if len(parts) != 5 or not parts[0] or not parts[4]:
        raise Unauthenticated("invalid token: malformed")
    _subject, letters, generation, expiry, signature = parts
    if (not letters or set(letters) - _NAMES.keys() or len(set(letters)) != len(letters)
            or not generation.isdigit() or len(generation) > 10
            or not expiry.isdigit() or len(expiry) > 12):
        raise Unauthenticated("invalid token: malformed")
    return token[: -len(signature) - 1], signature


# -- revocation: one stored number per run -----------------------------------------------------

_REVOKE = """#!lua
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
"""


def _meta(run_id: str, settings: Settings) -> str:
    return RunKeys.for_run(run_id, hash_tag=settings.cluster_hash_tags).meta


def revoke_tokens(client: SyncClient, run_id: str, settings: Settings) -> int | None:
    """Refuse every token issued for ``run_id`` so far; the new generation (None: no such run).

    Tokens issued afterwards (``issue(..., generation=<it>)``) work; the secret stays.
    """
    generation = int(client.eval(_REVOKE, 1, _meta(run_id, settings), GENERATION_FIELD))
    return None if generation < 0 else generation


async def arevoke_tokens(client: AsyncClient, run_id: str, settings: Settings) -> int | None:
    reply = await client.eval(_REVOKE, 1, _meta(run_id, settings), GENERATION_FIELD)
    generation = int(reply)
    return None if generation < 0 else generation


def token_generation(client: SyncClient, run_id: str, settings: Settings) -> int:
    """The run's current token generation (0 until its tokens are first revoked)."""
    try:
        value = client.hget(_meta(run_id, settings), GENERATION_FIELD)
    except ResponseError:  # the meta key holds another kind of value: not a run
        return 0
    return int(value or 0)


async def atoken_generation(client: AsyncClient, run_id: str, settings: Settings) -> int:
    try:
        value = await client.hget(_meta(run_id, settings), GENERATION_FIELD)
    except ResponseError:
        return 0
    return int(value or 0)
