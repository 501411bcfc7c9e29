"""The ClickHouse store: the only package that holds SQL.

`open_store(url)` returns a `Store` for `chdb:///path` (embedded, the default) or
`http(s)://user:pw@host:port/db`; the modules below are named query functions over it.
"""

from lorafleet.store import evals, metrics, registry, runs, traces
from lorafleet.store.engine import Store, check_identifier, open_store
from lorafleet.store.migrations import MIGRATIONS, migrate, render
from lorafleet.store.url import StoreURL, lorafleet_home, parse_store_url

__all__ = [
    "MIGRATIONS",
    "Store",
    "StoreURL",
    "check_identifier",
    "evals",
    "lorafleet_home",
    "metrics",
    "migrate",
    "open_store",
    "parse_store_url",
    "registry",
    "render",
    "runs",
    "traces",
]
