"""The `lorafleet` command. Each command module parses, calls one library function and prints."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="lorafleet",
    help="Train, observe and govern a fleet of LoRA adapters on one base model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# Sub-command groups; a module registers its commands on `app` through `register(app)`.
_COMMAND_MODULES = ("store_cmd", "runs_cmd", "train_cmd", "registry_cmd", "console_cmd")


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"lorafleet.ui.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"lorafleet.ui.cli.{name}":
                continue  # that command group is not built yet
            raise
        module.register(app)


_register_all()


def main() -> None:
    app()
