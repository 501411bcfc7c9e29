"""lorafleet: train a fleet of LoRA adapters on one frozen base model, observe each adapter,
and promote or roll back adapter versions with a full audit trail.

The subpackages are the top-level folders of the repository:
trainer (training), telemetry (traces, signals, Prometheus), store (ClickHouse), ui (CLI, console).
"""

__version__ = "0.1.0"
