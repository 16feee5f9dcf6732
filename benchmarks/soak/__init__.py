"""The chaos soak of the run lifecycle: ``python -m benchmarks.soak --help``.

Modules: ``proxy`` (TCP proxy with cuts and stalls), ``procs`` (store with an append-only file,
workers, app), ``readers`` (SSE readers that resume through every cursor form), ``faults``
(what is injected, from the seed), ``judge`` (the verdict against the stored streams),
``runner`` (the soak), ``report`` (the figures as text).
"""
