"""Shared fixtures: every test gets its own LORAFLEET_HOME and, when asked, a fresh real store."""

from __future__ import annotations

import os

import pytest

from lorafleet.store import open_store

SERVER_URL_ENV = "LORAFLEET_TEST_CLICKHOUSE_URL"


@pytest.fixture(autouse=True)
def lorafleet_home(tmp_path, monkeypatch):
    """Isolate state: LORAFLEET_HOME under tmp_path, LORAFLEET_STORE unset."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("LORAFLEET_HOME", str(home))
    monkeypatch.delenv("LORAFLEET_STORE", raising=False)
    return home


def _store_params():
    params = ["embedded"]
    if os.environ.get(SERVER_URL_ENV):
        params.append("server")
    return params


@pytest.fixture(params=_store_params())
def store_url(request, lorafleet_home):
    """A URL for an empty store: embedded chDB, plus a ClickHouse server when
    LORAFLEET_TEST_CLICKHOUSE_URL is set (each test gets a fresh database there)."""
    if request.param == "embedded":
        return f"chdb://{lorafleet_home / 'clickhouse'}"
    return _fresh_server_database(os.environ[SERVER_URL_ENV], request.node.name)


@pytest.fixture
def store(store_url):
    handle = open_store(store_url)
    yield handle
    handle.close()


def _fresh_server_database(base_url: str, test_name: str) -> str:
    import re
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    import clickhouse_connect

    parts = urlsplit(base_url)
    database = "lf_test_" + re.sub(r"\W", "_", test_name)[:30] + "_" + uuid.uuid4().hex[:8]
    admin = clickhouse_connect.get_client(
        host=parts.hostname,
        port=parts.port or 8123,
        username=parts.username or "default",
        password=parts.password or "",
    )
    admin.command(f"CREATE DATABASE {database}")
    admin.close()
    return urlunsplit(parts._replace(path="/" + database))
