"""Tasks for the tracing test: this module sets up the OpenTelemetry SDK in each job process
that imports it, records the spans there in memory, and hands them back from ``spans()``."""

from __future__ import annotations

import asyncio

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

EXPORTER = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(_provider)


def work(x):
    """Doubles ``x`` inside a span of its own (it must nest under the worker's run span)."""
    with trace.get_tracer("rztraced").start_as_current_span("inside work"):
        return x * 2


async def awork(x):
    """:func:`work` as a coroutine: its span must nest under the run span too."""
    with trace.get_tracer("rztraced").start_as_current_span("inside awork"):
        await asyncio.sleep(0)
        return x * 2


def boom():
    raise ValueError("traced failure")


def spans():
    """The spans this job process finished so far, as plain values."""
    return [describe(span) for span in EXPORTER.get_finished_spans()]


def describe(span) -> dict:
    return {
        "name": span.name, "trace_id": f"{span.context.trace_id:032x}",
        "span_id": f"{span.context.span_id:016x}",
        "parent": None if span.parent is None else f"{span.parent.span_id:016x}",
        "kind": span.kind.name, "status": span.status.status_code.name,
        "attributes": {k: v for k, v in span.attributes.items() if isinstance(v, (str, int))},
    }
