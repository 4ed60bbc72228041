"""Prometheus metrics of the connector ([R28]); exported by the platform's ``/metrics`` endpoint."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120, 300, 900)

SYNCED_RECORDS = Counter(
    "loopline_connector_synced_records_total", "Records synced by the CRM connector",
    ["direction", "outcome"],  # direction: from_crm | to_crm; outcome: created | updated | skipped | failed
)
SYNC_LATENCY = Histogram(
    "loopline_connector_sync_latency_seconds",
    "Time from a change on one side to its arrival on the other side", ["direction"], buckets=LATENCY_BUCKETS,
)
OUTBOX_BACKLOG = Gauge("loopline_connector_outbox_backlog", "Pending outbox entries", ["connector"])
OUTBOX_AGE = Gauge("loopline_connector_outbox_oldest_seconds", "Age of the oldest pending outbox entry",
                   ["connector"])
API_CALLS = Counter("loopline_connector_api_calls_total", "CRM API calls made by the connector", ["kind"])
ERRORS_OPEN = Gauge("loopline_connector_errors_open", "Open entries in the sync error queue", ["connector"])
