"""The benchmark harness: every scenario against this project and the seed design, side by side.

Run it with ``python -m benchmarks`` (``--quick`` for the small CI-sized run). Each scenario
measures the project and the seed (Letta's stream manager, loaded at run time from
``../shared/seed/redis_stream_manager.py`` or ``--seed PATH``) on the same server: a private
embedded Valkey, or ``REDIS_URL``. Results print as one table per scenario and go to a JSON file.
"""
