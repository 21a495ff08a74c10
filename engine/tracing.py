"""OpenTelemetry tracing: off (the API's no-op tracer, no cost) unless configured.

- `OTEL_EXPORTER_OTLP_ENDPOINT` (and the other standard `OTEL_*` variables):
  spans go to that collector by OTLP/HTTP, in batches.
- `PAYMENT_TRACE_DIR`: each process also writes its spans as JSON lines to a
  file there (the tests read them; no collector needed).

A withdrawal is one trace. Its submission's span context is stored on the queue
row (`traceparent`); every step, timer and webhook of it, in any process, is a
span of that trace: a child of the current span when that is already in the
withdrawal's trace, else of the stored context, linked to the current one (a
provider's webhook request is its own trace).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Link, Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
_tracer = trace.get_tracer("payment-service")
_enabled = False


def setup(service: str) -> bool:
    """Configure this process's tracer provider; returns whether tracing is on."""
    global _enabled
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    directory = os.environ.get("PAYMENT_TRACE_DIR")
    if not endpoint and not directory:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    tracers = TracerProvider(resource=Resource.create({"service.name": service}))
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        tracers.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if directory:
        tracers.add_span_processor(SimpleSpanProcessor(_JsonLinesExporter(Path(directory))))
    trace.set_tracer_provider(tracers)
    _enabled = True
    return True


def enabled() -> bool:
    return _enabled


def current_traceparent() -> str | None:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def current_trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else None


def outbound_headers() -> dict[str, str]:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier


@contextlib.contextmanager
def workflow_span(
    name: str,
    traceparent: str | None,
    attributes: Mapping[str, object],
    kind: SpanKind = SpanKind.INTERNAL,
) -> Iterator[Span]:
    """A span of the workflow instance (a withdrawal) whose stored context is `traceparent`."""
    if not _enabled:
        yield trace.INVALID_SPAN
        return
    stored = _PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else None
    current = trace.get_current_span().get_span_context()
    parent, links = None, []
    if stored is not None:
        stored_context = trace.get_current_span(stored).get_span_context()
        if not (current.is_valid and current.trace_id == stored_context.trace_id):
            parent = stored
            if current.is_valid:
                links = [Link(current)]
    with _tracer.start_as_current_span(
        name, context=parent, kind=kind, attributes=_clean(attributes), links=links
    ) as span:
        yield span


@contextlib.contextmanager
def client_span(name: str, attributes: Mapping[str, object]) -> Iterator[Span]:
    """An outbound call (ledger, provider, cascade-core), child of the current span."""
    if not _enabled:
        yield trace.INVALID_SPAN
        return
    with _tracer.start_as_current_span(
        name, kind=SpanKind.CLIENT, attributes=_clean(attributes)
    ) as span:
        yield span


def _clean(attributes: Mapping[str, object]) -> dict[str, str]:
    return {k: str(v) for k, v in attributes.items() if v is not None}


class _JsonLinesExporter(SpanExporter):
    """Each span as one JSON line in `<dir>/<pid>.jsonl` (for tests and local runs)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._path = directory / f"{os.getpid()}.jsonl"

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._path.open("a") as out:
            for span in spans:
                out.write(json.dumps(json.loads(span.to_json()), separators=(",", ":")) + "\n")
        return SpanExportResult.SUCCESS
