"""Micro-batching: requests that arrive while the scorer is busy are scored together.

Scoring one row through the scikit-learn pipeline costs about as much as scoring a few hundred
(most of it is per-call overhead: column selection, validation, the calibrator), and the
write-ahead log pays one fsync per append. So the scorer takes every request waiting, scores
them as one frame, logs them with one append and hands each caller its slice. Under light load a
batch is one request; under heavy load batches grow by themselves, so throughput rises with load
instead of latency.

The scorer runs on the event loop itself, not in a thread: the work is Python-heavy and holds the
GIL either way, and a thread would only add hand-offs (up to a 5 ms switch interval each) between
the loop that parses requests and the scorer. While it scores, new requests wait in the socket
buffers; the loop then parses all of them and the next batch takes them together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import polars as pl

Work = Callable[[str, pl.DataFrame], pl.DataFrame]


class MicroBatcher:
    def __init__(self, work: Work, max_rows: int = 20_000) -> None:
        self._work, self._max_rows = work, max_rows
        self._pending: list[tuple[str, pl.DataFrame, asyncio.Future]] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start the scorer on the running event loop."""
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def submit(self, model: str, frame: pl.DataFrame) -> pl.DataFrame:
        """``work(model, rows)`` for these rows, scored together with whatever else is waiting."""
        if self._wakeup is None:
            raise RuntimeError("the micro-batcher is not started")
        future = asyncio.get_running_loop().create_future()
        self._pending.append((model, frame, future))
        self._wakeup.set()
        return await future

    def _take(self) -> list[tuple[str, pl.DataFrame, asyncio.Future]]:
        taken, rows = [], 0
        while self._pending and rows < self._max_rows:
            item = self._pending.pop(0)
            taken.append(item)
            rows += item[1].height
        return taken

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await asyncio.sleep(0)              # requests parsed in this loop iteration join the batch
            while taken := self._take():
                self._score(taken)
                await asyncio.sleep(0)          # let the loop answer and parse before the next batch

    def _score(self, taken: list[tuple[str, pl.DataFrame, asyncio.Future]]) -> None:
        for model in dict.fromkeys(m for m, _, _ in taken):
            requests = [(frame, future) for m, frame, future in taken if m == model and not future.cancelled()]
            if not requests:
                continue
            try:
                result = self._work(model, pl.concat([frame for frame, _ in requests], how="vertical"))
            except Exception as exc:  # noqa: BLE001 - each caller gets the error, the scorer lives on
                for _, future in requests:
                    future.set_exception(exc)
                continue
            offset = 0
            for frame, future in requests:
                future.set_result(result.slice(offset, frame.height))
                offset += frame.height
