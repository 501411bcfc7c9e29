"""The store sink in a child process, so the store's work never holds the trainer's GIL.

chDB (and clickhouse-connect around it) keeps the GIL for tens of milliseconds while a session
opens and a block is inserted; in the training process that stalls the step loop. Here the
writer thread hands encoded batches (batch.dump bytes) over a pipe to a child process that owns
the store. The protocol is framed: one op byte, an 8-byte length, the payload.

    parent -> child   I init (JSON: url, lock_timeout)   O open a session   C close it
                      E export (a dumped batch)           S stop
    child -> parent   K ok   U store unavailable (message)   X other error (message)

The child runs `python -m lorafleet.telemetry._store_child <read fd> <write fd>` (not
multiprocessing: spawn would re-run an unguarded __main__). It exits when the pipe closes.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from lorafleet.errors import StoreUnavailable
from lorafleet.telemetry.batch import Batch, dump

log = logging.getLogger(__name__)
HEADER = struct.Struct("!cQ")


def send(fd: int, op: bytes, payload: bytes = b"") -> None:
    data = memoryview(HEADER.pack(op, len(payload)) + payload)
    while data:
        data = data[os.write(fd, data) :]


def recv(fd: int) -> tuple[bytes, bytes]:
    op, size = HEADER.unpack(_read(fd, HEADER.size))
    return op, _read(fd, size)


def _read(fd: int, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("pipe closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class ProcessStoreSink:
    """export(batch) / session() like StoreSink, carried out by a child process."""

    def __init__(self, store_url: str | None = None, *, lock_timeout: float = 2.0):
        from lorafleet.store.url import default_store_url, parse_store_url

        resolved = store_url or default_store_url()  # resolved here: the child must not guess from its env
        self.url = parse_store_url(resolved)  # a bad URL fails here, in the caller's process
        self._init = json.dumps({"url": resolved, "lock_timeout": lock_timeout}).encode()
        self._mutex = threading.Lock()  # one request at a time on the pipe
        self._proc: subprocess.Popen | None = None
        self._to_child = self._from_child = -1  # the child starts on first use

    def _start(self) -> None:
        child_in, self._to_child = os.pipe()
        self._from_child, child_out = os.pipe()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "lorafleet.telemetry._store_child", str(child_in), str(child_out)],
            pass_fds=(child_in, child_out),
            stdin=subprocess.DEVNULL,
        )
        os.close(child_in)
        os.close(child_out)
        send(self._to_child, b"I", self._init)

    def _call(self, op: bytes, payload: bytes = b"") -> None:
        with self._mutex:
            if self._proc is None or self._proc.poll() is not None:
                self._close_pipes()
                self._start()  # the child died (or was stopped): a fresh one
            try:
                send(self._to_child, op, payload)
                status, detail = recv(self._from_child)
            except (EOFError, OSError) as exc:
                self._kill()
                raise StoreUnavailable(f"telemetry store process exited: {exc}") from None
        if status == b"U":
            raise StoreUnavailable(detail.decode())
        if status != b"K":
            raise RuntimeError(f"telemetry store process: {detail.decode()}")

    def export(self, batch: Batch) -> None:
        self._call(b"E", dump(batch))

    @contextmanager
    def session(self) -> Iterator[None]:
        self._call(b"O")
        try:
            yield
        finally:
            with suppress(StoreUnavailable):  # the child is gone, and with it its session
                self._call(b"C")

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        return True

    def shutdown(self, timeout_s: float = 5.0) -> None:
        # A request still in flight (a writer thread abandoned at its time limit) means kill, not talk.
        if self._mutex.acquire(timeout=0.5):
            try:
                if self._proc is not None and self._proc.poll() is None:
                    try:
                        send(self._to_child, b"S")
                        self._proc.wait(timeout_s)
                    except (OSError, subprocess.TimeoutExpired):
                        pass
                self._kill()
            finally:
                self._mutex.release()
        else:
            self._kill()

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        self._close_pipes()

    def _close_pipes(self) -> None:
        for fd in (self._to_child, self._from_child):
            if fd >= 0:
                with suppress(OSError):
                    os.close(fd)
        self._to_child = self._from_child = -1
