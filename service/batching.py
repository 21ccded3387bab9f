"""Micro-batching: requests that arrive while the scorer is busy are scored together.

Scoring one row through the scikit-learn pipeline costs about as much as scoring a few hundred
(most of it is per-call overhead: column selection, validation, the calibrator), and the
write-ahead log pays one fsync per append. One worker thread therefore takes every request
waiting in its queue, scores them as one frame, logs them with one append and hands each caller
its slice. Under light load a batch is one request; under heavy load batches grow by themselves,
so throughput rises with load instead of latency.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

import polars as pl

Work = Callable[[str, pl.DataFrame], pl.DataFrame]


class MicroBatcher:
    def __init__(self, work: Work, max_rows: int = 20_000) -> None:
        self._work, self._max_rows = work, max_rows
        self._queue: queue.SimpleQueue[tuple[str, pl.DataFrame, Future] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()

    def submit(self, model: str, frame: pl.DataFrame) -> Future:
        """Queue rows for ``work(model, rows)``; the future gets the result rows of exactly these rows."""
        future: Future = Future()
        self._queue.put((model, frame, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)

    def _take(self) -> tuple[list[tuple[str, pl.DataFrame, Future]], bool]:
        first = self._queue.get()
        if first is None:
            return [], True
        taken, rows = [first], first[1].height
        while rows < self._max_rows:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)        # finish this batch, then stop
                break
            taken.append(item)
            rows += item[1].height
        return taken, False

    def _run(self) -> None:
        while True:
            taken, stop = self._take()
            if stop:
                return
            for model in dict.fromkeys(m for m, _, _ in taken):
                requests = [(frame, future) for m, frame, future in taken if m == model]
                try:
                    result = self._work(model, pl.concat([frame for frame, _ in requests], how="vertical"))
                except Exception as exc:  # noqa: BLE001 - each caller gets the error, the worker lives on
                    for _, future in requests:
                        future.set_exception(exc)
                    continue
                offset = 0
                for frame, future in requests:
                    future.set_result(result.slice(offset, frame.height))
                    offset += frame.height
