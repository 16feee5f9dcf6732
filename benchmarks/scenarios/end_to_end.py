"""End to end over HTTP with many SSE clients (pending)."""

from __future__ import annotations

from ..core import pending

pending("end-to-end", "End to end over HTTP with 1,000 SSE clients",
        "pending (needs worker/web tier)")
