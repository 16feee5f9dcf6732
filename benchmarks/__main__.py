"""``python -m benchmarks``: see ``benchmarks.cli``."""

from benchmarks.cli import main

if __name__ == "__main__":  # spawned child processes import this module as __mp_main__
    main()
