"""`lorafleet train | submit | stop`: run a fleet with a live table, and change a running one."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from lorafleet.ui.cli._common import StoreOption, console, err_console, handle_errors, output

FleetArg = Annotated[Path | None, typer.Argument(help="Fleet spec YAML (optional with --resume).")]


def train(
    fleet: FleetArg = None,
    run_id: Annotated[str | None, typer.Option("--run-id", help="Run id (default: <fleet>-<time>-<hex>).")] = None,
    resume: Annotated[str | None, typer.Option("--resume", help="Continue this run from its trainer state.")] = None,
    store: StoreOption = None,
    metrics_port: Annotated[int, typer.Option("--metrics-port", help="Serve Prometheus /metrics here.")] = 9464,
    no_metrics: Annotated[bool, typer.Option("--no-metrics", help="Do not serve /metrics.")] = False,
    no_telemetry: Annotated[bool, typer.Option("--no-telemetry", help="Write nothing to the store.")] = False,
    no_register: Annotated[bool, typer.Option("--no-register", help="Do not register finished adapters.")] = False,
) -> None:
    """Train a fleet of LoRA adapters on one base model, one forward/backward per step for all of them."""
    from lorafleet.ui.cli._train_display import FleetDisplay

    spec = _spec(fleet, resume)
    display = FleetDisplay(console)
    with display:
        result, _ = train_and_register(
            spec, store, callbacks=[display], run_id=resume or run_id, resume=bool(resume),
            prometheus_port=None if no_metrics else metrics_port, telemetry=not no_telemetry,
            register=not (no_register or no_telemetry),
        )  # fmt: skip
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if not console.is_terminal:
        typer.echo()  # the final table is left without a line end when no terminal drives the live display
    typer.echo(f"run {result.run_id} {result.status} after {result.steps} steps; output in {result.output_dir}")
    if result.status != "finished":
        raise typer.Exit(1)


def train_and_register(
    spec,
    store_url: str | None,
    *,
    callbacks: Sequence = (),
    run_id: str | None = None,
    resume: bool = False,
    prometheus_port: int | None = None,
    prometheus_addr: str = "127.0.0.1",
    telemetry: bool = True,
    register: bool = True,
    actor: str | None = None,
) -> tuple:
    """Run the fleet with telemetry to the store, then register its finished adapters as versions.

    Returns (RunResult, registered versions). Telemetry is shut down first, so every row the
    registry reads (adapters, evals) is in the store before versions are made from it."""
    from lorafleet.store import open_store
    from lorafleet.store.registry import register_run
    from lorafleet.trainer import run_fleet

    observers = list(callbacks)
    tel = None
    if telemetry:
        from lorafleet.telemetry import Telemetry

        tel = Telemetry(store_url, prometheus_port=prometheus_port, prometheus_addr=prometheus_addr)
        observers.append(tel)
    try:
        result = run_fleet(spec, callbacks=observers, run_id=run_id, resume=resume)
    finally:
        if tel is not None:
            tel.shutdown()
    if result.status != "finished" or not register:
        return result, []
    return result, register_run(open_store(store_url), result.run_id, actor=actor)


def _spec(fleet: Path | None, resume: str | None):
    from lorafleet.errors import BadInput
    from lorafleet.trainer import load_fleet_spec
    from lorafleet.trainer.config import spec_from_dict
    from lorafleet.trainer.control import run_dir

    if fleet is not None:
        return load_fleet_spec(fleet)
    if resume is None:
        raise BadInput("FLEET.yaml: give a fleet spec, or --resume RUN")
    saved = run_dir(resume) / "spec.json"
    if not saved.is_file():
        raise BadInput(f"resume: run {resume!r} not found")
    return spec_from_dict(json.loads(saved.read_text()), str(saved))


def submit(
    spec: Annotated[Path, typer.Argument(help="One adapter's spec YAML (same keys as a fleet's adapters entry).")],
    run: Annotated[str, typer.Option("--run", help="The running fleet's run id.")],
) -> None:
    """Queue an adapter to join a running fleet at its next step."""
    from lorafleet.trainer import load_adapter_spec, submit_adapter

    adapter = load_adapter_spec(spec)
    command = submit_adapter(run, adapter)
    output({"run": run, "adapter": adapter.name, "command": command, "action": "submit"}, False)


def stop(
    run: Annotated[str, typer.Argument(help="The running fleet's run id.")],
    adapter: Annotated[str, typer.Argument(help="The adapter to stop.")],
) -> None:
    """Queue an adapter to leave a running fleet (it saves a final checkpoint)."""
    from lorafleet.trainer import stop_adapter

    command = stop_adapter(run, adapter)
    output({"run": run, "adapter": adapter, "command": command, "action": "stop"}, False)


def register(app: typer.Typer) -> None:
    app.command("train")(handle_errors(train))
    app.command("submit")(handle_errors(submit))
    app.command("stop")(handle_errors(stop))
