"""`lorafleet console` (serve the Streamlit console) and `lorafleet demo` (train the demo fleet,
register its versions, promote the best of each family through the gate, then serve the console)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

import lorafleet
from lorafleet.errors import BadInput, GateRefused
from lorafleet.store import open_store, parse_store_url
from lorafleet.ui.cli._common import JsonOption, StoreOption, console, handle_errors, output

APP_PATH = Path(__file__).resolve().parent.parent / "console" / "app.py"
DEMO_SPEC = Path(lorafleet.__file__).resolve().parent / "examples" / "demo.yaml"
DEMO_ALIAS = "production"
DEMO_ACTOR = "lorafleet-demo"

PortOption = Annotated[int, typer.Option("--port", help="Port to serve the console on.")]
AddressOption = Annotated[str, typer.Option("--address", help="Interface to bind; loopback unless told otherwise.")]


def streamlit_command(port: int, address: str = "127.0.0.1") -> list[str]:
    """The `streamlit run` command line for the console app."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP_PATH),
        "--server.port", str(port), "--server.address", address, "--server.headless", "true",
        "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",
    ]  # fmt: skip


def serve_console(store_url: str | None, port: int, address: str = "127.0.0.1") -> int:
    """Run the console in the foreground until interrupted; returns streamlit's exit code."""
    if not 1 <= port <= 65535:
        raise BadInput(f"--port {port} is not a TCP port (1-65535)")
    url = parse_store_url(store_url)  # a bad URL is exit 2 here, not a stack trace in the browser
    env = os.environ | {"LORAFLEET_STORE": store_url or os.environ.get("LORAFLEET_STORE", "")}
    env = {k: v for k, v in env.items() if v != "" or k != "LORAFLEET_STORE"}
    host = "localhost" if address in ("127.0.0.1", "0.0.0.0") else address
    read_only = "" if os.environ.get("LORAFLEET_CONSOLE_TOKEN") else " (read-only: LORAFLEET_CONSOLE_TOKEN is not set)"
    console.print(f"lorafleet console on [bold]http://{host}:{port}[/] over {url.masked()}{read_only}")
    process = subprocess.Popen(streamlit_command(port, address), env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        return process.wait(timeout=10)


def run_demo(
    store_url: str | None,
    spec_path: Path = DEMO_SPEC,
    *,
    prometheus_port: int | None = None,
    prometheus_addr: str = "127.0.0.1",
    callbacks: Sequence = (),
) -> dict:
    """Train the demo fleet with telemetry, register its versions and promote each family's best."""
    from lorafleet.store import registry
    from lorafleet.trainer import load_fleet_spec
    from lorafleet.ui.cli.train_cmd import train_and_register

    result, versions = train_and_register(
        load_fleet_spec(spec_path), store_url, callbacks=callbacks, prometheus_port=prometheus_port,
        prometheus_addr=prometheus_addr, actor=DEMO_ACTOR,
    )  # fmt: skip
    store = open_store(store_url)
    promoted = [_promote_best(store, registry, family, vs) for family, vs in _by_family(versions).items()]
    return {
        "run_id": result.run_id,
        "status": result.status,
        "versions": [v.ref for v in versions],
        "promoted": promoted,
    }


def _by_family(versions) -> dict[str, list]:
    families: dict[str, list] = {}
    for version in versions:
        families.setdefault(version.family, []).append(version)
    return families


def best_version(versions, higher_is_better) -> object | None:
    """The version ranked best over the eval metrics every candidate has (each metric averaged over
    the version's suites, so versions trained on different tasks still compare); ranks, not raw
    values, so metrics of different scales weigh the same. Ties go to the earlier version."""
    scored = [v for v in versions if v.eval_summary]
    if not scored:
        return None
    means = [_metric_means(v) for v in scored]
    common = sorted(set.intersection(*(set(m) for m in means)))
    totals = [0.0] * len(scored)
    for metric in common:
        sign = 1.0 if higher_is_better(metric) else -1.0
        values = [sign * m[metric] for m in means]
        for i, value in enumerate(values):
            totals[i] += sum(other < value for other in values)  # how many versions this one beats
    return scored[max(range(len(scored)), key=lambda i: (totals[i], -i))]


def _metric_means(version) -> dict[str, float]:
    by_metric: dict[str, list[float]] = {}
    for row in version.eval_summary:
        by_metric.setdefault(row["metric"], []).append(float(row["mean"]))
    return {metric: sum(values) / len(values) for metric, values in by_metric.items()}


def _promote_best(store, registry, family: str, versions) -> dict:
    best = best_version(versions, registry.higher_is_better)
    if best is None:
        return {"family": family, "alias": DEMO_ALIAS, "version": None, "outcome": "no evaluated version"}
    reason = f"demo: best eval of run {best.run_id}"
    try:
        event = registry.promote(store, family, best.version, DEMO_ALIAS, reason=reason, actor=DEMO_ACTOR)
    except GateRefused as exc:  # an earlier demo's production is better: keep it, as the gate says
        return {"family": family, "alias": DEMO_ALIAS, "version": best.version, "outcome": f"refused: {exc}"}
    except BadInput as exc:  # already there
        return {"family": family, "alias": DEMO_ALIAS, "version": best.version, "outcome": str(exc)}
    return {"family": family, "alias": DEMO_ALIAS, "version": event.to_version, "outcome": event.gate_verdict}


def register(app: typer.Typer) -> None:
    @app.command("console")
    @handle_errors
    def console_cmd(store: StoreOption = None, port: PortOption = 8501, address: AddressOption = "127.0.0.1") -> None:
        """Serve the Streamlit console (fleet, compare, regressions, registry, traces)."""
        raise typer.Exit(serve_console(store, port, address))

    @app.command("demo")
    @handle_errors
    def demo_cmd(
        no_console: Annotated[bool, typer.Option("--no-console", help="Stop after training and promoting.")] = False,
        store: StoreOption = None,
        port: PortOption = 8501,
        prometheus_port: Annotated[
            int | None, typer.Option("--prometheus-port", help="Serve the trainer's /metrics on this port.")
        ] = None,
        prometheus_addr: Annotated[
            str, typer.Option("--prometheus-addr", help="Interface for /metrics.")
        ] = "127.0.0.1",
        json: JsonOption = False,
    ) -> None:
        """Train examples/demo.yaml on the store, register its versions, promote the best of each
        family to `production` through the gate, then serve the console."""
        from lorafleet.ui.cli._train_display import FleetDisplay

        display = FleetDisplay(console)
        with display:
            summary = run_demo(
                store, prometheus_port=prometheus_port, prometheus_addr=prometheus_addr, callbacks=[display]
            )
        output(summary["promoted"], json, columns=["family", "alias", "version", "outcome"], title="promoted")
        if not json:
            console.print(
                f"run {summary['run_id']} {summary['status']}: registered {', '.join(summary['versions']) or 'none'}"
            )
        if summary["status"] != "finished":
            raise typer.Exit(1)
        if not no_console:
            raise typer.Exit(serve_console(store, port))
