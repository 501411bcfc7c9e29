"""Traces: one per run, a consistent span tree found the way Grafana finds it, Collector format."""

from __future__ import annotations

import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from lorafleet.store import traces
from lorafleet.telemetry import Telemetry, TraceSampling


def test_run_leaves_one_trace_with_a_consistent_span_tree(fleet, store_url, store, assert_tree):
    with Telemetry(store_url, sampling=TraceSampling(first_steps=100, every=100)) as tel:
        fleet.start(tel)
        for s in range(1, 6):
            fleet.step(tel, s)
        fleet.change(tel, 5, "delta", "join")
        fleet.step(tel, 6, active=("alpha", "beta", "gamma", "delta"))
        fleet.change(tel, 6, "beta", "early_stop", reason="plateau")
        fleet.change(tel, 6, "gamma", "quarantine", reason="non-finite loss", value=math.inf)
        fleet.change(tel, 6, "delta", "leave", reason="removed")
        fleet.eval(tel, "alpha")
        fleet.checkpoint(tel, "alpha", final=True)
        fleet.end(tel, 6)

    trace_ids = traces.trace_ids_for_run(store, fleet.run_id)
    assert len(trace_ids) == 1
    spans = traces.trace_spans(store, trace_ids[0])  # bounded by otel_traces_trace_id_ts, as Grafana does
    assert_tree(store, spans)
    names = [s["SpanName"] for s in spans]
    assert names.count("run") == 1 and names.count("step") == 6
    for phase in ("data", "forward", "backward", "optimizer"):
        assert names.count(phase) == 6
    assert names.count("eval") == 1 and names.count("checkpoint") == 1 and names.count("fleet_change") == 4
    run = next(s for s in spans if s["SpanName"] == "run")
    assert sorted(run["EventNames"]) == ["early_stop", "join", "leave", "quarantine"]
    last_step = max(
        (s for s in spans if s["SpanName"] == "step"), key=lambda s: int(s["SpanAttributes"]["lorafleet.step"])
    )
    assert last_step["SpanAttributes"]["lorafleet.adapters.active"] == "4"
    assert last_step["SpanAttributes"]["lorafleet.tokens"] == str(4 * 128)
    evaluation = next(s for s in spans if s["SpanName"] == "eval")
    assert evaluation["SpanAttributes"]["lorafleet.adapter.id"] == "alpha"
    assert evaluation["SpanAttributes"]["lorafleet.eval.exact_match"] == "0.5"


def test_fleet_changes_are_in_the_store_while_the_run_is_live(fleet, store_url, store):
    with Telemetry(store_url) as tel:
        fleet.start(tel)
        fleet.step(tel, 1)
        fleet.change(tel, 1, "beta", "quarantine", reason="non-finite loss", value=math.inf)
        assert tel.flush(10)
        rows = store.query_rows(
            "SELECT SpanName, SpanAttributes AS a FROM otel_traces"
            " WHERE ResourceAttributes['lorafleet.run.id'] = {r:String}",
            {"r": fleet.run_id},
        )
        changes = [r["a"] for r in rows if r["SpanName"] == "fleet_change"]
        assert [(c["lorafleet.change"], c["lorafleet.adapter.id"]) for c in changes] == [("quarantine", "beta")]
        assert "run" not in {r["SpanName"] for r in rows}  # the run span itself is still open
        fleet.end(tel, 1)


def test_span_rows_are_written_as_the_collector_writes_them(fleet, store_url, store):
    with Telemetry(store_url) as tel:
        fleet.run(tel, 2)
    rows = store.query_rows(
        """
        SELECT SpanName, SpanKind, StatusCode, ServiceName, ScopeName, TraceId, SpanId, ParentSpanId,
               ResourceAttributes, Duration, Events.Timestamp AS EventTimes
        FROM otel_traces ORDER BY Timestamp
        """
    )
    assert {r["SpanKind"] for r in rows} == {"SPAN_KIND_INTERNAL"}
    assert {r["StatusCode"] for r in rows} == {"STATUS_CODE_UNSET"}
    assert {r["ServiceName"] for r in rows} == {"lorafleet-trainer"}
    assert {r["ScopeName"] for r in rows} == {"lorafleet.telemetry"}
    for row in rows:
        assert len(row["TraceId"]) == 32 and int(row["TraceId"], 16)
        assert len(row["SpanId"]) == 16 and int(row["SpanId"], 16)
        assert row["ParentSpanId"] == "" or len(row["ParentSpanId"]) == 16
        resource = row["ResourceAttributes"]
        assert resource["lorafleet.run.id"] == fleet.run_id
        assert resource["service.version"] and resource["host.name"]
    step = next(r for r in rows if r["SpanName"] == "forward")
    assert step["Duration"] == 400_000  # nanoseconds, from the trainer's own timestamps


def test_sampling_keeps_the_first_steps_every_kth_and_errors(fleet, store_url, store):
    with Telemetry(store_url, sampling=TraceSampling(first_steps=3, every=10)) as tel:
        fleet.start(tel)
        for s in range(1, 31):
            fleet.step(tel, s, loss=math.nan if s == 17 else None)
        fleet.step(tel, 31)  # not sampled on its own ...
        fleet.change(tel, 31, "beta", "quarantine", reason="loss spike")  # ... but a quarantine keeps it
        fleet.end(tel, 31)
    rows = store.query_rows(
        "SELECT SpanAttributes['lorafleet.step'] AS step, StatusCode FROM otel_traces WHERE SpanName = 'step'"
    )
    kept = sorted(int(r["step"]) for r in rows)
    assert kept == [1, 2, 3, 10, 17, 20, 30, 31]
    errors = sorted(int(r["step"]) for r in rows if r["StatusCode"] == "STATUS_CODE_ERROR")
    assert errors == [17, 31]
    phases = store.query_rows("SELECT count() AS n FROM otel_traces WHERE SpanName = 'forward'")[0]["n"]
    assert phases == len(kept)


def test_a_run_that_never_ends_still_gets_its_root_span_at_shutdown(fleet, store_url, store, assert_tree):
    tel = Telemetry(store_url)
    fleet.start(tel)
    fleet.step(tel, 1)
    tel.shutdown()
    [trace_id] = traces.trace_ids_for_run(store, fleet.run_id)
    spans = traces.trace_spans(store, trace_id)
    assert_tree(store, spans)
    run = next(s for s in spans if s["SpanName"] == "run")
    assert run["StatusCode"] == "STATUS_CODE_ERROR"
    assert run["SpanAttributes"]["lorafleet.run.status"] == "interrupted"


def test_with_an_otlp_endpoint_set_spans_also_go_to_a_collector(fleet, store_url, store, monkeypatch):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    received: list[ExportTraceServiceRequest] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(ExportTraceServiceRequest.FromString(body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        with Telemetry(store_url) as tel:
            fleet.run(tel, 2)
    finally:
        server.shutdown()
        server.server_close()
    spans = [s for r in received for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]
    stored = store.query_rows("SELECT count() AS n FROM otel_traces")[0]["n"]
    assert len(spans) == stored > 0, "the collector and the store see the same spans"
    resource = {a.key: a.value.string_value for a in received[0].resource_spans[0].resource.attributes}
    assert resource["service.name"] == "lorafleet-trainer" and resource["lorafleet.run.id"] == fleet.run_id
