"""Trace context that follows a job from submit to its worker and back (W3C Trace Context),
with ``opentelemetry-api`` when it is installed (the ``tracing`` extra); without it, or with
no tracer provider configured, nothing here does anything and JOBs carry no trace context.

On the producer, :func:`start_job_span` opens a span per job in the submitting thread (kind
PRODUCER, a child of the span current there) and gives its W3C ``traceparent``; the JOB
carries it (docs/protocol.md). The span ends when the job's Future resolves
(:func:`end_job_span`): it covers submit to result, retries included. In the worker's job
process, :func:`job_span` runs the job inside a span (kind CONSUMER) whose parent is that
``traceparent``, and current while the task runs (in every pool: on the job process's main
thread, on a slot's thread, or in the job's asyncio task), so the task's own spans nest under
it.
Spans are exported by whatever the application (and, in job processes, the task modules or
``opentelemetry-instrument``) configured; see docs/operations.md. The shape follows the
OpenTelemetry messaging conventions (a producer span, a consumer span, linked by context).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

try:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the extra is not installed: tracing is off
    trace = None  # type: ignore[assignment]

ENABLED = trace is not None
SYSTEM = "freelance_rz"  # messaging.system of every span
RECHECK_S = 1.0  # without a tracer provider, look for one again at most this often (seconds)
_PROPAGATOR: Any = TraceContextTextMapPropagator() if ENABLED else None
_active = False
_checked_at = -RECHECK_S


def active() -> bool:
    """Whether spans would be recorded: the API is installed and a tracer provider is set
    (the API's default proxy, before one is, records nothing). Checked on every submit, so
    it is cheap: a provider, once set, cannot be replaced, so a yes is kept; a no is looked at
    again after RECHECK_S (asking the API costs microseconds), so jobs are traced from at
    most a second after the application sets its provider."""
    global _active, _checked_at
    if _active or not ENABLED:
        return _active
    now = time.monotonic()
    if now - _checked_at < RECHECK_S:
        return False
    _checked_at = now
    _active = not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    return _active


def start_job_span(task: str, job_id: int) -> tuple[Any, str | None]:
    """Open the producer's span of a job (call in the submitting thread: the span current
    there is the parent). Returns the span and its ``traceparent`` (None when the span is
    not sampled or not valid: then the JOB carries none)."""
    tracer = trace.get_tracer(SYSTEM)
    span = tracer.start_span(f"submit {task}", kind=trace.SpanKind.PRODUCER, attributes={
        "messaging.system": SYSTEM, "messaging.operation.type": "send",
        "messaging.message.id": str(job_id), "freelance_rz.task": task,
        "freelance_rz.job_id": job_id,
    })
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return span, carrier.get("traceparent")


def end_job_span(span: Any, outcome: str, error: str | None = None) -> None:
    """End the producer's span of a job: ``outcome`` is ``done``, ``failed``, ``dead``,
    ``cancelled`` or ``closed``; ``error`` (e.g. ``"ValueError: bad input"``) marks it as
    an error."""
    span.set_attribute("freelance_rz.outcome", outcome)
    if error is not None:
        span.set_status(trace.Status(trace.StatusCode.ERROR, error))
    span.end()


@contextlib.contextmanager
def job_span(traceparent: str, task: str, job_id: int) -> Iterator[Callable[[str | None], None]]:
    """The worker's span of a job (kind CONSUMER, a child of ``traceparent``), current inside
    the ``with`` block: in a thread, or in an asyncio task (the context is per task). Yields
    ``done(error)``, to call with the job's outcome: None when it succeeded, what failed when
    it did (e.g. ``"ValueError: bad input"``, which marks the span as an error). Without the
    API installed it records nothing."""
    if not ENABLED:
        yield _ignore
        return
    parent = _PROPAGATOR.extract({"traceparent": traceparent})
    tracer = trace.get_tracer(SYSTEM)
    with tracer.start_as_current_span(f"run {task}", context=parent, kind=trace.SpanKind.CONSUMER,
                                      record_exception=False, set_status_on_exception=False,
                                      attributes={
                                          "messaging.system": SYSTEM,
                                          "messaging.operation.type": "process",
                                          "messaging.message.id": str(job_id),
                                          "freelance_rz.task": task, "freelance_rz.job_id": job_id,
                                      }) as span:

        def done(error: str | None) -> None:
            span.set_attribute("freelance_rz.outcome", "done" if error is None else "failed")
            if error is not None:
                span.set_status(trace.Status(trace.StatusCode.ERROR, error))

        yield done


def _ignore(error: str | None) -> None:
    """``done`` of a span that records nothing."""
