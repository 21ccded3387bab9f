"""Start-up of the scoring service's flusher process (kept free of heavy imports on purpose)."""

import os
import sys


def lower_priority() -> None:
    """The flusher yields the CPU to request handling: a lower priority and one polars thread.

    Runs first in the fresh flusher process, before anything imports polars (which reads
    POLARS_MAX_THREADS once). A flush may take longer; answers must not.
    """
    os.environ["POLARS_MAX_THREADS"] = "1"
    os.nice(10)
    _die_with_parent()


def _die_with_parent() -> None:
    """A service killed with SIGKILL must not leave its flusher running: on Linux the kernel sends the
    flusher SIGTERM when its parent dies. A flush cut short this way is one the ledger rolls back."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
