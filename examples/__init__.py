"""The reference web app (``examples.app``) and the demo command (``python -m examples.demo``)."""
