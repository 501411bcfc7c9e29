"""Live metrics: /metrics names and labels, and Debian's real Prometheus server scraping them."""

from __future__ import annotations

import json
import socket
import time
import urllib.parse
import urllib.request

import pytest
from servers import start_prometheus, stop

from lorafleet.errors import BadInput
from lorafleet.telemetry import Telemetry


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_metrics_endpoint_serves_fleet_and_adapter_series(fleet, store_url):
    with Telemetry(store_url, prometheus_port=0) as tel:
        fleet.start(tel)
        for s in range(1, 4):
            fleet.step(tel, s)
        fleet.eval(tel, "alpha")
        fleet.change(tel, 3, "gamma", "quarantine", reason="nan")
        text = scrape(tel.prometheus.port)
    run = f'run="{fleet.run_id}"'
    assert f"lorafleet_steps_total{{{run}}} 3.0" in text
    assert f"lorafleet_tokens_total{{{run}}} {3 * 3 * 128}.0" in text
    assert f"lorafleet_step_duration_seconds_count{{{run}}} 3.0" in text
    for adapter in fleet.adapters:
        for gauge in ("loss", "grad_norm", "learning_rate"):
            assert f'lorafleet_adapter_{gauge}{{adapter="{adapter}",{run}}}' in text
    assert f'lorafleet_adapter_eval_score{{adapter="alpha",metric="exact_match",{run},suite="arith"}} 0.5' in text
    assert f'lorafleet_adapters{{{run},state="running"}} 2.0' in text
    assert f'lorafleet_adapters{{{run},state="quarantined"}} 1.0' in text
    assert "lorafleet_writer_queue_depth " in text and "lorafleet_writer_spooled_rows 0.0" in text


def test_per_adapter_series_are_capped_by_the_setting(fleet, store_url):
    with Telemetry(store_url, prometheus_port=0, max_labelled_adapters=2) as tel:
        fleet.start(tel)
        fleet.step(tel, 1)
        text = scrape(tel.prometheus.port)
    assert sum(line.startswith("lorafleet_adapter_loss{") for line in text.splitlines()) == 2
    assert f'lorafleet_adapters_unlabelled{{run="{fleet.run_id}"}} 1.0' in text


def test_metrics_are_off_unless_a_port_is_given(fleet, store_url):
    with Telemetry(store_url) as tel:
        assert tel.prometheus is None


@pytest.mark.slow
def test_a_real_prometheus_server_scrapes_the_loss_of_every_adapter(fleet, store_url, tmp_path):
    tel = Telemetry(store_url, prometheus_port=0)
    fleet.start(tel)
    for s in range(1, 4):
        fleet.step(tel, s)
    server = start_prometheus(tmp_path / "prometheus", tel.prometheus.port)
    try:
        adapters = wait_for_series(server.url, "lorafleet_adapter_loss", expected=len(fleet.adapters))
        assert {r["metric"]["adapter"] for r in adapters} == set(fleet.adapters)
        assert {r["metric"]["run"] for r in adapters} == {fleet.run_id}
        assert all(float(r["value"][1]) > 0 for r in adapters)
    finally:
        stop(server)
        tel.shutdown()


def wait_for_series(server_url: str, query: str, expected: int, timeout_s: float = 45.0) -> list[dict]:
    url = f"{server_url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    deadline = time.monotonic() + timeout_s
    result: list[dict] = []
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                result = json.load(response)["data"]["result"]
            if len(result) >= expected:
                return result
        except OSError:
            pass  # the server is still starting
        time.sleep(0.25)
    raise AssertionError(f"Prometheus returned {len(result)} of {expected} series for {query}")


def test_a_busy_metrics_port_is_a_clear_input_error(store_url):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        with pytest.raises(BadInput, match=f"prometheus_port: cannot serve /metrics on 127.0.0.1:{busy}"):
            Telemetry(store_url, prometheus_port=busy)
