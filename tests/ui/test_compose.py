"""compose.yaml (Docker is not available here, so the file itself is checked): every service has an
image, loopback-only ports and a healthcheck where the image allows; the trainer and console use
the clickhouse service; no password is empty or defaulted; mounted configs exist and parse."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
NO_SHELL_IMAGES = {"otel-collector"}  # distroless: nothing inside can run a probe
REQUIRED = re.compile(r"^\$\{(?P<name>[A-Z_]+):\?[^}]+\}$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_every_service_has_image_loopback_ports_and_healthcheck(compose):
    services = compose["services"]
    assert {"clickhouse", "grafana", "prometheus", "otel-collector", "console", "trainer"} <= set(services)
    for name, service in services.items():
        assert service.get("image"), f"{name} has no image"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        if name not in NO_SHELL_IMAGES:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert services["otel-collector"]["profiles"] == ["otel"]


def test_trainer_and_console_point_at_the_clickhouse_service(compose):
    for name in ("trainer", "console"):
        service = compose["services"][name]
        url = service["environment"]["LORAFLEET_STORE"]
        assert url.startswith("http://") and "@clickhouse:8123/" in url, url
        assert ":${CLICKHOUSE_PASSWORD:?" in url, url
        assert service["depends_on"]["clickhouse"]["condition"] == "service_healthy"
    assert "--prometheus-port" in compose["services"]["trainer"]["command"]


def test_no_empty_or_default_password(compose):
    passwords = {}
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if "PASSWORD" in key:
                passwords[f"{name}.{key}"] = value
    assert {"clickhouse.CLICKHOUSE_PASSWORD", "grafana.GF_SECURITY_ADMIN_PASSWORD"} <= set(passwords)
    for where, value in passwords.items():
        assert REQUIRED.match(str(value)), f"{where} must be a required variable (${{X:?message}}), got {value!r}"


def test_mounted_configs_exist_and_parse(compose):
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
    prometheus = yaml.safe_load((ROOT / "ui" / "deploy" / "prometheus.yml").read_text())
    targets = [t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    assert "trainer:9464" in targets
    collector = yaml.safe_load((ROOT / "ui" / "deploy" / "otel-collector.yaml").read_text())
    exporter = collector["exporters"]["clickhouse"]
    assert exporter["traces_table_name"] == "otel_traces" and exporter["create_schema"] is False
    assert "clickhouse" in collector["service"]["pipelines"]["traces"]["exporters"]
    assert (ROOT / compose["services"]["console"]["build"]["dockerfile"]).exists()
