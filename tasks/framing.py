"""How what a generator yields becomes one SSE event (``streaming.celery.framing``)."""

from streaming.celery.framing import Event, frame

__all__ = ["Event", "frame"]
