"""The built-in generators; importing this package registers them."""

from . import demo, openai_chat

__all__ = ["demo", "openai_chat"]
