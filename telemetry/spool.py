"""Batches the store could not take, on local disk, in order, until they are written.

Layout: `$LORAFLEET_HOME/spool/<name>/<seq:012d>.batch` (see batch.dump for the file format),
written to a temporary name and renamed, so a reader never sees half a file. The directory
holds an flock while a live writer owns it; `orphans()` lists directories left by processes
that died or shut down with the store away, so the next writer can replay them.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from lorafleet import lorafleet_home
from lorafleet.telemetry.batch import Batch, dump, load

SUFFIX = ".batch"


def spool_root() -> Path:
    return lorafleet_home() / "spool"


class Spool:
    """A FIFO of batches in one directory. Thread-safe; `take`s the oldest, `remove`s it once written."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._mutex = threading.Lock()
        self._lock_fd: int | None = None
        self._rows = 0
        self._files: list[Path] | None = None  # oldest first, loaded lazily
        self._next = 0

    def retarget(self, directory: Path) -> bool:
        """Move to another directory while nothing has been spooled yet (e.g. once the run id is known)."""
        with self._mutex:
            if self._lock_fd is not None or self._files:
                return False
            previous, self.directory, self._files = self.directory, directory, None
            if self.claim():
                return True
            self.directory = previous  # a live writer owns that directory
            return False

    # -- ownership ------------------------------------------------------------------------------
    def claim(self, blocking: bool = False) -> bool:
        """Take the directory's lock (held until close); False if another live process holds it."""
        if self._lock_fd is not None:
            return True
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def close(self) -> None:
        with self._mutex:
            if self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
                self._lock_fd = None
            if self.directory.exists() and not any(self.directory.glob("*" + SUFFIX)):
                for leftover in self.directory.iterdir():
                    leftover.unlink(missing_ok=True)
                self.directory.rmdir()

    # -- FIFO -------------------------------------------------------------------------------------
    def append(self, batch: Batch) -> Path:
        data = dump(batch)
        with self._mutex:
            self._load_index()
            self.claim()
            path = self.directory / f"{self._next:012d}{SUFFIX}"
            self._next += 1
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.rename(path)
            self._files.append(path)
            self._rows += batch.rows
        return path

    def take(self) -> tuple[Path, Batch] | None:
        """The oldest spooled batch (still on disk until `remove`)."""
        with self._mutex:
            self._load_index()
            if not self._files:
                return None
            path = self._files[0]
        return path, load(path.read_bytes())

    def remove(self, path: Path, rows: int) -> None:
        with self._mutex:
            path.unlink(missing_ok=True)
            if self._files and self._files[0] == path:
                self._files.pop(0)
            self._rows = max(0, self._rows - rows)

    def __len__(self) -> int:
        with self._mutex:
            self._load_index()
            return len(self._files)

    @property
    def rows(self) -> int:
        """Rows waiting on disk (counted for batches this process spooled or has read)."""
        return self._rows

    def _load_index(self) -> None:
        if self._files is not None:
            return
        self._files = sorted(self.directory.glob("*" + SUFFIX)) if self.directory.exists() else []
        for path in self._files:
            self._rows += _rows_hint(path)
        self._next = int(self._files[-1].stem) + 1 if self._files else 0


def _rows_hint(path: Path) -> int:
    try:
        return load(path.read_bytes()).rows
    except (OSError, ValueError):
        return 0


def has_orphans(exclude: Path | None = None) -> bool:
    """Whether any other spool directory holds batches (cheap: no locks, no reads)."""
    root = spool_root()
    return root.exists() and any(p.parent != exclude for p in root.glob("*/*" + SUFFIX))


def orphans(exclude: Path | None = None) -> Iterator[Spool]:
    """Spool directories no live writer holds, each claimed for the caller (close() when done)."""
    root = spool_root()
    if not root.exists():
        return
    for directory in sorted(p for p in root.iterdir() if p.is_dir() and p != exclude):
        spool = Spool(directory)
        if spool.claim():
            yield spool
