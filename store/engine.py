"""The one place that opens ClickHouse: embedded chDB under a cross-process lock, or a server.

chDB allows one OS process per data path, so embedded work happens in short sessions
(open -> work -> close) under an exclusive `flock` on `<path>.lock`, like SQLite. The
trainer, the console and the CLI take turns; a process that waits too long gets an error
naming the holder's pid. A server keeps one long-lived client.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

from lorafleet.errors import BadInput, StoreUnavailable
from lorafleet.store.url import StoreURL, parse_store_url

log = logging.getLogger(__name__)

LOCK_TIMEOUT_ENV = "LORAFLEET_STORE_LOCK_TIMEOUT"
RELOCK_PAUSE_S = 0.012
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def check_identifier(name: str, what: str = "identifier") -> str:
    """Validate a name that becomes an SQL identifier (table, cluster); values are always bound."""
    if not IDENTIFIER.match(name or ""):
        raise BadInput(f"invalid {what} {name!r}: use letters, digits and underscores")
    return name


def _default_lock_timeout() -> float:
    return float(os.environ.get(LOCK_TIMEOUT_ENV, "60"))


class _FileLock:
    """An exclusive flock on a file that also records the holder's pid for error messages."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None
        self._released_at = -1e9

    def acquire(self, timeout: float) -> None:
        self._yield_to_waiters()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise StoreUnavailable(
                        f"embedded store {self.path.with_suffix('')} is busy: its lock is held by "
                        f"pid {self.holder() or 'unknown'} (waited {timeout:.1f}s)"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.005)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
            self._released_at = time.monotonic()

    def _yield_to_waiters(self) -> None:
        # flock has no queue: a process that re-locks right after unlocking would starve the
        # others polling for it, so leave them a short window first.
        pause = self._released_at + RELOCK_PAUSE_S - time.monotonic()
        if pause > 0:
            time.sleep(pause)

    def holder(self) -> str:
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""


class _EmbeddedEngine:
    """Per-process, per-path state: a re-entrant session that owns the chDB client while open."""

    _by_path: dict[Path, _EmbeddedEngine] = {}
    _registry_lock = threading.Lock()

    @classmethod
    def for_path(cls, path: Path) -> _EmbeddedEngine:
        with cls._registry_lock:
            if path not in cls._by_path:
                cls._by_path[path] = cls(path)
            return cls._by_path[path]

    def __init__(self, path: Path):
        self.path = path
        self._mutex = threading.RLock()  # serialises threads of this process on the engine
        self._file_lock = _FileLock(path.with_name(path.name + ".lock"))
        self._client = None
        self._depth = 0

    @contextmanager
    def session(self, timeout: float) -> Iterator[Any]:
        if not self._mutex.acquire(timeout=timeout):
            raise StoreUnavailable(f"embedded store {self.path} is busy in this process (waited {timeout:.1f}s)")
        try:
            if self._depth == 0:
                self._open(timeout)
            self._depth += 1
            try:
                yield self._client
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._close()
        finally:
            self._mutex.release()

    def _open(self, timeout: float) -> None:
        self._file_lock.acquire(timeout)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._client = clickhouse_connect.get_client(dsn=f"chdb://{self.path}")
        except Exception as exc:
            self._file_lock.release()
            raise StoreUnavailable(f"cannot open embedded store {self.path}: {exc}") from exc

    def _close(self) -> None:
        try:
            if self._client is not None:
                self._client.close()
        finally:
            self._client = None
            self._file_lock.release()


class Store:
    """A handle on one store. Every method opens a unit of work unless one is already open."""

    def __init__(self, url: StoreURL, lock_timeout: float | None = None):
        self.url = url
        self.lock_timeout = _default_lock_timeout() if lock_timeout is None else lock_timeout
        self._server_client = None
        self._server_mutex = threading.RLock()
        self._embedded = _EmbeddedEngine.for_path(url.path) if url.embedded else None

    # -- sessions ---------------------------------------------------------------------------
    @contextmanager
    def session(self) -> Iterator[Any]:
        """Hold the engine for a unit of work; nested calls reuse the open client."""
        if self._embedded is not None:
            with self._embedded.session(self.lock_timeout) as client:
                yield client
            return
        with self._server_mutex:  # clickhouse-connect clients are not safe for concurrent queries
            yield self._server()

    def _server(self):
        if self._server_client is None:
            try:
                self._server_client = clickhouse_connect.get_client(
                    host=self.url.host,
                    port=self.url.port,
                    username=self.url.username,
                    password=self.url.password,
                    database=self.url.database,
                    secure=self.url.scheme == "https",
                    autogenerate_session_id=False,
                    connect_timeout=5,
                )
            except Exception as exc:
                # The message names host and port only: the password stays in self.url.
                raise StoreUnavailable(f"cannot reach store {self.url.masked()}: {type(exc).__name__}") from None
        return self._server_client

    def close(self) -> None:
        if self._server_client is not None:
            self._server_client.close()
            self._server_client = None

    # -- queries ----------------------------------------------------------------------------
    def query(self, sql: str, parameters: dict | None = None, settings: dict | None = None):
        with self._errors(), self.session() as client:
            return client.query(sql, parameters=parameters or {}, settings=settings)

    def query_rows(self, sql: str, parameters: dict | None = None) -> list[dict]:
        result = self.query(sql, parameters)
        names = result.column_names
        return [dict(zip(names, row, strict=True)) for row in result.result_rows]

    def query_df(self, sql: str, parameters: dict | None = None):
        with self._errors(), self.session() as client:
            return client.query_df(sql, parameters=parameters or {})

    def command(self, sql: str, parameters: dict | None = None, settings: dict | None = None):
        with self._errors(), self.session() as client:
            return client.command(sql, parameters=parameters, settings=settings)

    # -- writes -----------------------------------------------------------------------------
    def insert(
        self,
        table: str,
        data: Sequence,
        column_names: Sequence[str],
        *,
        column_oriented: bool = False,
        dedup_token: str | None = None,
    ) -> None:
        """Insert rows (or columns). A dedup_token makes a retried batch idempotent."""
        check_identifier(table, "table")
        with self._errors(), self.session() as client:
            client.insert(
                table,
                data,
                column_names=list(column_names),
                column_oriented=column_oriented,
                settings=_dedup_settings(dedup_token),
            )

    def insert_df(self, table: str, df, *, dedup_token: str | None = None) -> None:
        check_identifier(table, "table")
        with self._errors(), self.session() as client:
            client.insert_df(table, df, settings=_dedup_settings(dedup_token))

    def insert_arrow(self, table: str, arrow_table, *, dedup_token: str | None = None) -> None:
        check_identifier(table, "table")
        with self._errors(), self.session() as client:
            client.insert_arrow(table, arrow_table, settings=_dedup_settings(dedup_token))

    def engine_version(self) -> str:
        with self._errors(), self.session() as client:
            return str(client.server_version)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except ClickHouseError as exc:
            if isinstance(exc, OperationalError):  # the transport failed, not the statement
                raise StoreUnavailable(f"store {self.url.masked()} is unreachable: {type(exc).__name__}") from None
            raise


def _dedup_settings(token: str | None) -> dict | None:
    return {"insert_deduplication_token": token} if token else None


def open_store(url: str | None = None, *, migrate: bool = True, lock_timeout: float | None = None) -> Store:
    """Open the store named by `url` (default $LORAFLEET_STORE or the embedded one) and
    bring its schema up to date on first use."""
    store = Store(parse_store_url(url), lock_timeout=lock_timeout)
    if migrate:
        from lorafleet.store.migrations import ensure_schema

        ensure_schema(store)
    return store
