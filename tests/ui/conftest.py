"""One store filled by a short REAL training run (tiny base, two families, one bad variant),
shared by every ui test; Streamlit servers on free loopback ports; Debian's chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from servers import Server, free_port, start_prometheus, stop, wait_up

from lorafleet.store import open_store, registry
from lorafleet.trainer import TrainerCallback
from lorafleet.ui.cli.console_cmd import run_demo, streamlit_command

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TOKEN = "test-operator-token"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync"]  # fmt: skip
BAD = "beta-bad"


@dataclass
class Filled:
    url: str
    home: Path
    run_id: str
    adapters: list[str]
    families: list[str]
    prometheus: str  # base URL of a real Prometheus server that scraped the run's /metrics


def _spec(path: Path) -> Path:
    common = {"max_steps": 12, "eval_every": 6, "batch_size": 4, "max_seq_len": 32, "eval_examples": 8, "rank": 4}
    spec = {
        "name": "uitest",
        "base_model": "tiny",
        "device": "cpu",
        "threads": 1,
        "adapters": [
            {**common, "name": "alpha-lr3", "family": "alpha", "learning_rate": 3e-3, "train_data": "task:reverse"},
            {**common, "name": "alpha-lr1", "family": "alpha", "learning_rate": 1e-3, "train_data": "task:reverse"},
            {**common, "name": "beta-lr3", "family": "beta", "learning_rate": 3e-3, "train_data": "task:sort"},
            # The bad variant: a learning rate 20,000x too high and no clipping. It blows up (NaN,
            # quarantined) or saturates (gradients vanish): either way the console must flag it.
            {
                **common,
                "name": BAD,
                "family": "beta",
                "learning_rate": 60.0,
                "grad_clip": None,
                "train_data": "task:sort",
            },
        ],
    }
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="session")
def filled(tmp_path_factory) -> Filled:
    """`lorafleet demo`'s library path on a fresh embedded store: train (with /metrics scraped by a
    real Prometheus server), register, promote the best of each family."""
    root = tmp_path_factory.mktemp("ui-store")
    home = root / "home"
    home.mkdir()
    url = f"chdb://{root / 'clickhouse'}"
    metrics_port = free_port()
    prometheus = start_prometheus(root / "prometheus", metrics_port)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("LORAFLEET_HOME", str(home))
            patch.delenv("LORAFLEET_STORE", raising=False)
            scraped = _WaitForScrapes(prometheus.url)
            summary = run_demo(url, _spec(root / "fleet.yaml"), prometheus_port=metrics_port, callbacks=[scraped])
        store = open_store(url)
        families = [f["family"] for f in registry.list_families(store)]
        yield Filled(
            url, home, summary["run_id"], ["alpha-lr3", "alpha-lr1", "beta-lr3", BAD], families, prometheus.url
        )
    finally:
        stop(prometheus)


class _WaitForScrapes(TrainerCallback):
    """Holds the end of the run (while /metrics still serves) until Prometheus has scraped the
    run's counters at least twice, so rate() has something to work on however fast the run was."""

    def __init__(self, prometheus: str, timeout_s: float = 20.0):
        self.prometheus, self.timeout_s = prometheus, timeout_s

    def on_run_end(self, end) -> None:
        query = urllib.parse.urlencode({"query": "count_over_time(lorafleet_steps_total[10m])"})
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"{self.prometheus}/api/v1/query?{query}", timeout=5) as response:
                result = json.loads(response.read())["data"]["result"]
            if result and float(result[0]["value"][1]) >= 2:
                return
            time.sleep(0.25)


def _start_console(filled: Filled, token: str | None, log: Path) -> Server:
    return start_console(filled.url, filled.home, token, log)


def start_console(url: str, home: Path, token: str | None, log: Path) -> Server:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "LORAFLEET_CONSOLE_TOKEN"}
    env |= {"LORAFLEET_STORE": url, "LORAFLEET_HOME": str(home)}
    if token:
        env["LORAFLEET_CONSOLE_TOKEN"] = token
    command = [*streamlit_command(port), "--server.fileWatcherType", "none"]
    process = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    return wait_up(Server(f"http://127.0.0.1:{port}", process), "/_stcore/health", log)


@pytest.fixture(scope="session")
def console(filled, tmp_path_factory):
    """The console with no operator token configured: read-only."""
    server = _start_console(filled, None, tmp_path_factory.mktemp("logs") / "console.log")
    yield server
    stop(server)


@pytest.fixture(scope="session")
def operator_console(filled, tmp_path_factory):
    """The console with LORAFLEET_CONSOLE_TOKEN configured."""
    server = _start_console(filled, TOKEN, tmp_path_factory.mktemp("logs") / "operator-console.log")
    yield server
    stop(server)


@pytest.fixture
def console_for(tmp_path):
    """Start a console over any store URL (stopped after the test)."""
    servers = []

    def start(url: str, home: Path) -> Server:
        servers.append(start_console(url, home, None, tmp_path / f"console-{len(servers)}.log"))
        return servers[-1]

    yield start
    for server in servers:
        stop(server)


@pytest.fixture(scope="session")
def operator_token() -> str:
    return TOKEN


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("Debian's chromium is not installed (.ci/run installs it)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=BROWSER_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    yield tab
    context.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
