"""The dashboard's ``/metrics``: every producer's metrics (:func:`freelance_rz.metrics.producer_families`
of its last detailed STATUS), labelled ``producer``, and ``freelance_rz_producer_up``.
A producer that is down shows only ``freelance_rz_producer_up 0``."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ..metrics import PREFIX, producer_families
from .fleet import Fleet


class FleetCollector(Collector):
    """Collects the metrics of every producer the dashboard watches (one family per name,
    its samples from all of them)."""

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(PREFIX + "producer_up", "1 when the producer answered the "
                               "dashboard's last STATUS, else 0.", labels=["producer", "endpoint"])
        merged: dict[str, Metric] = {}
        for endpoint, info, answered in self._fleet.infos():
            producer = str((info or {}).get("producer_id") or endpoint)
            up.add_metric([producer, endpoint], 1.0 if answered else 0.0)
            if not answered or info is None:
                continue
            for family in producer_families(info, {"producer": producer}):
                if family.name in merged:
                    merged[family.name].samples.extend(family.samples)
                else:
                    merged[family.name] = family
        yield up
        yield from merged.values()
