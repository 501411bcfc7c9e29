"""The child process of ProcessStoreSink (see store_process.py): one StoreSink, requests in order."""

from __future__ import annotations

import json
import logging
import sys
from contextlib import ExitStack

from lorafleet.errors import StoreUnavailable
from lorafleet.telemetry.batch import load
from lorafleet.telemetry.sink import StoreSink
from lorafleet.telemetry.store_process import recv, send

log = logging.getLogger(__name__)


def serve(read_fd: int, write_fd: int) -> None:
    """The child's loop: one StoreSink, requests answered in order until S or a closed pipe."""
    op, payload = recv(read_fd)
    if op != b"I":
        raise SystemExit("telemetry store process: expected an init frame")
    config = json.loads(payload)
    sink = StoreSink(config["url"], lock_timeout=config["lock_timeout"])
    session = ExitStack()
    while True:
        try:
            op, payload = recv(read_fd)
        except EOFError:
            break
        if op == b"S":
            break
        try:
            if op == b"O":
                session.enter_context(sink.session())
            elif op == b"C":
                session.close()
            elif op == b"E":
                sink.export(load(payload))
            else:
                raise ValueError(f"unknown op {op!r}")
        except StoreUnavailable as exc:
            send(write_fd, b"U", str(exc).encode())
        except Exception as exc:  # reported to the parent, which logs it and keeps the batch spooled
            log.exception("telemetry store process")
            send(write_fd, b"X", f"{type(exc).__name__}: {exc}".encode())
        else:
            send(write_fd, b"K")
    session.close()
    sink.shutdown()


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
