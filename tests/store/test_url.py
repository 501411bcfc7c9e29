import pytest

from lorafleet.errors import BadInput
from lorafleet.store import parse_store_url
from lorafleet.store.url import default_store_url


def test_embedded_url_defaults_under_lorafleet_home(lorafleet_home):
    url = parse_store_url(None)
    assert url.embedded
    assert url.path == lorafleet_home / "clickhouse"
    assert default_store_url() == f"chdb://{lorafleet_home / 'clickhouse'}"


def test_store_env_overrides_default(monkeypatch):
    monkeypatch.setenv("LORAFLEET_STORE", "http://bob:pw@db.local:9000/fleet")
    url = parse_store_url(None)
    assert (url.host, url.port, url.username, url.database) == ("db.local", 9000, "bob", "fleet")


def test_server_url_password_is_masked_everywhere():
    url = parse_store_url("https://alice:s3cr%40t@ch.example:8443/prod")
    assert url.password == "s3cr@t"
    assert "s3cr" not in url.masked()
    assert "s3cr" not in repr(url)
    assert "s3cr" not in str(url)
    assert url.masked() == "https://alice:***@ch.example:8443/prod"


@pytest.mark.parametrize(
    "bad",
    [
        "chdb://relative/path",
        "chdb:relative",
        "ftp://host/db",
        "http:///nohost",
        "http://h:notaport/db",
        "http://h/db;drop",
    ],
)
def test_malformed_store_urls_are_rejected(bad):
    with pytest.raises(BadInput, match="store URL"):
        parse_store_url(bad)
