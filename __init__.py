"""lorafleet: train a fleet of LoRA adapters on one frozen base model, observe each adapter,
and promote or roll back adapter versions with a full audit trail.

The subpackages are the top-level folders of the repository:
trainer (training), telemetry (traces, signals, Prometheus), store (ClickHouse), ui (CLI, console).
"""

import os
from pathlib import Path

__version__ = "0.1.0"

HOME_ENV = "LORAFLEET_HOME"


def lorafleet_home() -> Path:
    """The state directory every part shares: $LORAFLEET_HOME, default ~/.lorafleet (always absolute)."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".lorafleet").expanduser().absolute()
