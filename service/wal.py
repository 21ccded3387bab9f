"""A write-ahead log for the scoring service: a decision is on disk before its caller hears of it.

The service appends each request's action (or outcome) rows to the active segment file and
fsyncs before it answers, so an ``action_id`` the caller was given survives a crash. A flusher
later seals the active segment (new requests go to a fresh one) and moves sealed segments into
the Delta store in one ingest each, so the store gets one commit per batch, not per request.

A segment is a sequence of records::

    b"LWAL" | kind (1 byte: b"A" actions, b"O" outcomes) | payload length (u32) | CRC-32 (u32) | payload

with the payload an Arrow IPC stream of the rows. A crash can tear only the last record of the
last segment, and only a record whose request was never answered (the answer waits for fsync):
reading stops there. Replaying a segment twice adds nothing twice (the store drops exact
duplicates), so a crash between "stored" and "segment removed" is harmless.
"""

from __future__ import annotations

import fcntl
import io
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import polars as pl

MAGIC = b"LWAL"
ACTIONS, OUTCOMES = b"A", b"O"
_HEADER = struct.Struct("<4scII")
_SUFFIX = ".wal"


class WalError(RuntimeError):
    """The log cannot be used (another process holds it, or the folder is not writable)."""


@dataclass(frozen=True)
class Segment:
    path: Path
    actions: list[pl.DataFrame]
    outcomes: list[pl.DataFrame]
    torn_bytes: int            # bytes after the last whole record (an unanswered write cut by a crash)

    @property
    def rows(self) -> int:
        return sum(f.height for f in self.actions) + sum(f.height for f in self.outcomes)


def _encode(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_ipc_stream(buffer, compression="uncompressed")
    return buffer.getvalue()


def read_segment(path: Path) -> Segment:
    """Every whole record of a segment; stops at the first torn or corrupt one."""
    data = path.read_bytes()
    actions: list[pl.DataFrame] = []
    outcomes: list[pl.DataFrame] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        magic, kind, length, crc = _HEADER.unpack_from(data, offset)
        start, end = offset + _HEADER.size, offset + _HEADER.size + length
        if magic != MAGIC or end > len(data) or zlib.crc32(data[start:end]) != crc:
            break
        frame = pl.read_ipc_stream(io.BytesIO(data[start:end]))
        (actions if kind == ACTIONS else outcomes).append(frame)
        offset = end
    return Segment(path, actions, outcomes, len(data) - offset)


class WriteAheadLog:
    """Append-only segments in one folder, owned by one process (an OS lock says so)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._lock_handle = open(folder / ".owner.lock", "w")
        try:
            fcntl.flock(self._lock_handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_handle.close()
            raise WalError(f"another process is using the write-ahead log in {folder}: give each scoring "
                           "service its own LOOP_API_WAL folder") from None
        self._mutex = threading.Lock()
        existing = self.segments()
        self._seq = int(existing[-1].stem) + 1 if existing else 1
        self._fd = self._open(self._seq)
        self.pending_rows = 0

    def _open(self, seq: int) -> int:
        fd = os.open(self.folder / f"{seq:012d}{_SUFFIX}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._sync_folder()    # the new file's name must survive a crash too
        return fd

    def _sync_folder(self) -> None:
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @property
    def active(self) -> Path:
        return self.folder / f"{self._seq:012d}{_SUFFIX}"

    def segments(self) -> list[Path]:
        return sorted(self.folder.glob(f"*{_SUFFIX}"))

    def append(self, kind: bytes, frame: pl.DataFrame) -> None:
        """Write one record and fsync; when this returns, the rows survive a crash."""
        payload = _encode(frame)
        record = _HEADER.pack(MAGIC, kind, len(payload), zlib.crc32(payload)) + payload
        with self._mutex:
            os.write(self._fd, record)
            os.fdatasync(self._fd)
            self.pending_rows += frame.height

    def seal(self) -> list[Path]:
        """Close the active segment and start a new one; returns every sealed segment, oldest first."""
        with self._mutex:
            if os.fstat(self._fd).st_size:       # an empty segment stays active: no file per idle flush
                os.close(self._fd)
                self._seq += 1
                self._fd = self._open(self._seq)
            self.pending_rows = 0
        return [p for p in self.segments() if p != self.active]

    def remove(self, segment: Path) -> None:
        segment.unlink()
        self._sync_folder()

    def close(self) -> None:
        with self._mutex:
            os.close(self._fd)
        if self.active.stat().st_size == 0:
            self.active.unlink()
        self._lock_handle.close()
