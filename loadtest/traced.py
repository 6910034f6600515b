"""The traced bench targets: their OTEL_* environment, and the span counts that show they traced.

  traced       the `memory` gateway exporting every request's span (always_on) to loadtest/otlp_sink.py;
  traced-down  the same, its collector a closed port: every export fails, the spans are dropped.

Two counts per round: spans the sink decoded (traced: ~1 per request, the server span; bench
requests wait on no I/O, so there is no child span), and spans the gateway dropped, from its
`switchyard_spans_dropped` counter (traced-down: ~1 per request, "export_failed"; traced: 0,
or the sink did not keep up). Either near 1.0 says tracing was on and every request sampled.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping

TRACED = ("traced", "traced-down")
DROPPED = "switchyard_spans_dropped_total"


def gateway_env(base: Mapping[str, str], collector_port: int | None) -> dict[str, str]:
    """`base` without any OTEL_* variable (an untraced target stays untraced whatever the shell
    exports), plus, given a port, tracing to http://127.0.0.1:<port> with every request sampled."""
    env = {k: v for k, v in base.items() if not k.startswith("OTEL_")}
    if collector_port is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{collector_port}"
        env["OTEL_TRACES_SAMPLER"] = "always_on"
    return env


def _get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET 127.0.0.1:{port}{path} answered {response.status}")
        return body
    finally:
        conn.close()


def sink_counts(port: int) -> dict[str, int]:
    """The sink's {"spans", "exports", "bad"} so far."""
    counts = json.loads(_get(port, "/count"))
    return {k: int(counts[k]) for k in ("spans", "exports", "bad")}


def dropped_spans(port: int) -> float:
    """Spans the gateway on `port` has dropped so far, all reasons (its /metrics)."""
    total = 0.0
    for line in _get(port, "/metrics").decode().splitlines():
        if line.startswith(DROPPED + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def final_report(counts: Mapping[str, int] | None, answered: int) -> tuple[str, bool]:
    """The whole run's line for `traced`, and whether it is a failure: `counts` read from the sink
    after the traced gateway exited (its exporter flushes at shutdown), so no span is in flight.
    wrk does not count the requests it leaves unanswered at the end of a load, so a few more spans
    than requests (≤ connections per load) is expected."""
    if counts is None:
        return "!! traced: the sink's final count could not be read (did the traced gateway exit?)", True
    per_req = counts["spans"] / max(1, answered)
    text = (
        f"traced: the sink decoded {counts['spans']} spans in {counts['exports']} exports for the {answered}"
        f" requests the gateway answered (warm-ups, rounds, checks): {per_req:.3f} spans/req"
    )
    failed = counts["bad"] > 0 or per_req < 0.99
    if counts["bad"]:
        text += f"\n!! traced: {counts['bad']} exports did not parse as an ExportTraceServiceRequest"
    if per_req < 0.99:
        text += "\n!! traced: fewer spans than requests: the gateway dropped some (see spans/req dropped above)"
    return text, failed
