"""Read tokens: signed, expiring capabilities to read one run, checked without Redis.

A token is ``<run_id>.<expiry>.<signature>``: the run id in clear (URL-safe already), the
expiry in Unix seconds, and HMAC-SHA256 over both under a secret every web process shares
(``Settings.token_secret``, ``STREAMING_TOKEN_SECRET``), base64url without padding. All of it
is URL-safe, so a token rides in ``?token=`` (``EventSource`` cannot set headers) as well as
in ``Authorization: Bearer``. Holding the token is the permission: give it only to whoever
may read the run, and keep run ids unguessable (the tasks API makes 128-bit ones).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from .errors import AccessDenied, ConfigurationError, Unauthenticated
from .wire import validate_run_id

__all__ = ["MIN_SECRET_LENGTH", "TokenSigner"]

MIN_SECRET_LENGTH = 32
_CONTEXT = b"celery-streaming read token v1\n"
_MAX_TOKEN = 300  # a 128-character run id, a 12-digit expiry and a 43-character signature fit


class TokenSigner:
    """Issues and checks read tokens under one secret."""

    def __init__(self, secret: str | bytes) -> None:
        key = secret.encode() if isinstance(secret, str) else secret
        if len(key) < MIN_SECRET_LENGTH:
            raise ConfigurationError(
                f"the token secret must be at least {MIN_SECRET_LENGTH} characters "
                "(STREAMING_TOKEN_SECRET); make one with: python -c "
                "'import secrets; print(secrets.token_urlsafe(32))'"
            )
        self._key = key

    def issue(self, run_id: str, ttl: float, *, now: float | None = None) -> str:
        """A token that lets its holder read ``run_id`` for ``ttl`` seconds."""
        validate_run_id(run_id)
        if ttl <= 0:
            raise ConfigurationError(f"token ttl must be positive, got {ttl!r}")
        expiry = str(int((time.time() if now is None else now) + ttl))
        return f"{run_id}.{expiry}.{self._sign(run_id, expiry)}"

    def check(self, token: str, run_id: str, *, now: float | None = None) -> None:
        """Return if ``token`` lets its holder read ``run_id``; raise why not otherwise.

        ``Unauthenticated``: malformed, forged or expired; ``AccessDenied``: a genuine token
        for another run. The signature is checked first, so a forger learns nothing else.
        """
        token_run, expiry, signature = _split(token)
        if not hmac.compare_digest(signature, self._sign(token_run, expiry)):
            raise Unauthenticated("invalid token: bad signature")
        if int(expiry) <= (time.time() if now is None else now):
            raise Unauthenticated("invalid token: expired")
        if not hmac.compare_digest(token_run.encode(), run_id.encode()):
            raise AccessDenied("the token is for another run")

    def _sign(self, run_id: str, expiry: str) -> str:
        message = _CONTEXT + f"{run_id}\n{expiry}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _split(token: str) -> tuple[str, str, str]:
    if not token or len(token) > _MAX_TOKEN or not token.isascii():
        raise Unauthenticated("invalid token: malformed")
    parts = token.rsplit(".", 2)
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit() or len(parts[1]) > 12:
        raise Unauthenticated("invalid token: malformed")
    return parts[0], parts[1], parts[2]
