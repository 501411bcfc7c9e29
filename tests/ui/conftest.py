"""One store filled by a short REAL training run (tiny base, two families, one bad variant),
shared by every ui test; Streamlit servers on free loopback ports; Debian's chromium."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from lorafleet.store import open_store, registry
from lorafleet.ui.cli.console_cmd import APP_PATH, run_demo

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
            # The bad variant: a learning rate 20,000x too high and no clipping; it blows up.
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
    """`lorafleet demo`'s library path on a fresh embedded store: train, register, promote the best."""
    root = tmp_path_factory.mktemp("ui-store")
    home = root / "home"
    home.mkdir()
    url = f"chdb://{root / 'clickhouse'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LORAFLEET_HOME", str(home))
        patch.delenv("LORAFLEET_STORE", raising=False)
        summary = run_demo(url, _spec(root / "fleet.yaml"))
    store = open_store(url)
    adapters = ["alpha-lr3", "alpha-lr1", "beta-lr3", BAD]
    return Filled(url, home, summary["run_id"], adapters, [f["family"] for f in registry.list_families(store)])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Console:
    url: str
    process: subprocess.Popen


def _start_console(filled: Filled, token: str | None, log: Path) -> Console:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "LORAFLEET_CONSOLE_TOKEN"}
    env |= {"LORAFLEET_STORE": filled.url, "LORAFLEET_HOME": str(filled.home)}
    if token:
        env["LORAFLEET_CONSOLE_TOKEN"] = token
    command = [sys.executable, "-m", "streamlit", "run", str(APP_PATH), "--server.port", str(port),
               "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
               "--server.fileWatcherType", "none"]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as response:
                if response.status == 200:
                    return Console(url, process)
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"streamlit did not come up in 60 s: {log.read_text()[-2000:]}")


def _stop(console: Console) -> None:
    console.process.terminate()
    try:
        console.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        console.process.kill()
        console.process.wait()


@pytest.fixture(scope="session")
def console(filled, tmp_path_factory):
    """The console with no operator token configured: read-only."""
    server = _start_console(filled, None, tmp_path_factory.mktemp("logs") / "console.log")
    yield server
    _stop(server)


@pytest.fixture(scope="session")
def operator_console(filled, tmp_path_factory):
    """The console with LORAFLEET_CONSOLE_TOKEN configured."""
    server = _start_console(filled, TOKEN, tmp_path_factory.mktemp("logs") / "operator-console.log")
    yield server
    _stop(server)


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
