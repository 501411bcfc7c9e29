"""Store URLs: `chdb:///absolute/path` (embedded ClickHouse) or `http(s)://user:pw@host:port/db`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from lorafleet import lorafleet_home
from lorafleet.errors import BadInput

STORE_ENV = "LORAFLEET_STORE"


@dataclass(frozen=True)
class StoreURL:
    scheme: str  # "chdb", "http" or "https"
    path: Path | None = None  # embedded data directory
    host: str = ""
    port: int = 0
    username: str = "default"
    password: str = field(default="", repr=False)
    database: str = "default"

    @property
    def embedded(self) -> bool:
        return self.scheme == "chdb"

    def masked(self) -> str:
        """The URL for display: the password never leaves this object."""
        if self.embedded:
            return f"chdb://{self.path}"
        secret = ":***" if self.password else ""
        return f"{self.scheme}://{self.username}{secret}@{self.host}:{self.port}/{self.database}"

    def __str__(self) -> str:
        return self.masked()


def default_store_url() -> str:
    return os.environ.get(STORE_ENV) or f"chdb://{lorafleet_home() / 'clickhouse'}"


def parse_store_url(url: str | None = None) -> StoreURL:
    """Parse a store URL (default: $LORAFLEET_STORE, else the embedded store under LORAFLEET_HOME)."""
    raw = url or default_store_url()
    parts = urlsplit(raw)
    if parts.scheme == "chdb":
        return _parse_embedded(raw, parts.netloc, parts.path)
    if parts.scheme in ("http", "https"):
        return _parse_server(parts)
    raise BadInput(f"store URL: unsupported scheme {parts.scheme!r}; use chdb:///path or http(s)://host:port/db")


def _parse_embedded(raw: str, netloc: str, path: str) -> StoreURL:
    if netloc or not path.startswith("/"):
        raise BadInput("store URL: embedded stores need an absolute path, e.g. chdb:///home/me/.lorafleet/clickhouse")
    return StoreURL(scheme="chdb", path=Path(unquote(path)))


def _parse_server(parts) -> StoreURL:
    if not parts.hostname:
        raise BadInput("store URL: missing host")
    try:
        port = parts.port or (8443 if parts.scheme == "https" else 8123)
    except ValueError as exc:
        raise BadInput("store URL: the port is not a number") from exc
    database = parts.path.strip("/") or "default"
    if not database.replace("_", "").isalnum():
        raise BadInput(f"store URL: invalid database name {database!r}")
    return StoreURL(
        scheme=parts.scheme,
        host=parts.hostname,
        port=port,
        username=unquote(parts.username or "default"),
        password=unquote(parts.password or ""),
        database=database,
    )
