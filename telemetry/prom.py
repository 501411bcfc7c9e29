"""Live Prometheus metrics on /metrics: counters, a step-time histogram and per-adapter gauges.

Its own CollectorRegistry (nothing global), served on loopback by default. Per-adapter series
are capped at `max_adapters`; adapters beyond the cap are counted in
lorafleet_adapters_unlabelled and their history lives in the store only.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from lorafleet.errors import BadInput
from lorafleet.trainer.callbacks import EvalRecord, StepRecord

ADAPTER_STATES = ("running", "stopped", "quarantined", "early_stopped", "finished", "rejected")
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class PrometheusMetrics:
    def __init__(self, port: int, *, addr: str = "127.0.0.1", max_adapters: int = 64, writer=None):
        self.registry = registry = CollectorRegistry()
        self.max_adapters = max_adapters
        self.run_id = ""
        self.steps = Counter("lorafleet_steps", "Fleet steps completed.", ["run"], registry=registry)
        self.tokens = Counter("lorafleet_tokens", "Tokens processed by all adapters.", ["run"], registry=registry)
        self.step_seconds = Histogram(
            "lorafleet_step_duration_seconds", "Fleet step wall time.", ["run"], buckets=STEP_BUCKETS, registry=registry
        )
        per_adapter = ["run", "adapter"]
        self.loss = Gauge("lorafleet_adapter_loss", "Latest training loss.", per_adapter, registry=registry)
        self.grad_norm = Gauge(
            "lorafleet_adapter_grad_norm", "Latest gradient norm (before clipping).", per_adapter, registry=registry
        )
        self.learning_rate = Gauge(
            "lorafleet_adapter_learning_rate", "Current learning rate.", per_adapter, registry=registry
        )
        self.eval_score = Gauge(
            "lorafleet_adapter_eval_score",
            "Latest aggregate eval result.",
            ["run", "adapter", "suite", "metric"],
            registry=registry,
        )
        self.adapters = Gauge("lorafleet_adapters", "Adapters by state.", ["run", "state"], registry=registry)
        self.unlabelled = Gauge(
            "lorafleet_adapters_unlabelled", "Adapters beyond the per-adapter label cap.", ["run"], registry=registry
        )
        if writer is not None:
            Gauge(
                "lorafleet_writer_queue_depth", "Items waiting in the writer's queue.", registry=registry
            ).set_function(lambda: writer.queue_depth)
            Gauge(
                "lorafleet_writer_spooled_rows", "Rows waiting in the on-disk spool.", registry=registry
            ).set_function(lambda: writer.spool.rows)
        self._children: dict[str, tuple | None] = {}
        self._run_children: tuple | None = None
        try:
            self.server, self._thread = start_http_server(port, addr=addr, registry=registry)
        except OSError as exc:
            raise BadInput(
                f"prometheus_port: cannot serve /metrics on {addr}:{port} ({exc.strerror or exc}); "
                "choose another port or turn metrics off"
            ) from None

    @property
    def port(self) -> int:
        return self.server.server_port

    def start_run(self, run_id: str) -> None:
        self.run_id = run_id
        self._run_children = (
            self.steps.labels(run_id),
            self.tokens.labels(run_id),
            self.step_seconds.labels(run_id),
        )

    def on_step(self, record: StepRecord) -> None:
        if self._run_children is None:
            self.start_run(record.run_id)
        steps, tokens, seconds = self._run_children
        steps.inc()
        tokens.inc(record.tokens)
        seconds.observe(record.duration_s)
        for a in record.adapters:
            gauges = self._adapter(a.adapter)
            if gauges is not None:
                gauges[0].set(a.loss)
                gauges[1].set(a.grad_norm)
                gauges[2].set(a.learning_rate)

    def on_eval(self, record: EvalRecord) -> None:
        if self._adapter(record.adapter) is None:
            return
        for name, value in record.metrics.items():
            self.eval_score.labels(self.run_id, record.adapter, record.suite, name).set(value)

    def set_states(self, states: dict[str, str]) -> None:
        for state in ADAPTER_STATES:
            self.adapters.labels(self.run_id, state).set(sum(1 for s in states.values() if s == state))

    def _adapter(self, name: str) -> tuple | None:
        if name in self._children:
            return self._children[name]
        labelled = sum(1 for c in self._children.values() if c is not None)
        if labelled >= self.max_adapters:
            self._children[name] = None
            self.unlabelled.labels(self.run_id).inc()
            return None
        key = (self.run_id, name)
        children = (self.loss.labels(*key), self.grad_norm.labels(*key), self.learning_rate.labels(*key))
        self._children[name] = children
        return children

    def shutdown(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
