"""Start-up of the scoring service's flusher process (kept free of heavy imports on purpose)."""

import os


def lower_priority() -> None:
    """The flusher yields the CPU to request handling: a lower priority and one polars thread.

    Runs first in the fresh flusher process, before anything imports polars (which reads
    POLARS_MAX_THREADS once). A flush may take longer; answers must not.
    """
    os.environ["POLARS_MAX_THREADS"] = "1"
    os.nice(10)
