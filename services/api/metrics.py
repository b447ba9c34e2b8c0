"""`GET /metrics`: the gateway's Prometheus endpoint.

Two sources:
- HTTP requests, counted by the request hooks' after_request (shared/web/hooks.py; app.py hands
  `record_request`): by method, route (the URL rule, never the path, so that the series stay few)
  and status, with a latency histogram by method and route.
  Gunicorn runs several worker processes, and a scrape is answered by one of them; so under
  gunicorn (gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR) every worker writes its samples to
  files there and a scrape reads them all. Without the variable (the Flask test client) the
  samples live in a registry of the app's own, so that several apps in one process never collide.
- Facts that live in Postgres (instances by status, lifecycle transitions, time spent in each
  status, reconcile runs and actions, the cloud operation budget in use and its queue), computed
  by aggregate queries at most once every 15 s per process, on a connection of their own (never
  the API's pool) and under a short budget (shared/adapters/fleet_stats.py). When Postgres does
  not answer they are left out and `dark_metrics_db_up` is 0: the HTTP figures still render, and
  the scrape never fails.

Access: an operator bearer token. Only with DARK_METRICS_LOOPBACK_OPEN on (off by default, refused
in production) may a caller on loopback (127.0.0.0/8, ::1) read it without one, as a Prometheus on
the same host would. Behind a reverse proxy on the same host every request arrives from the proxy's
loopback address: the setting would open /metrics to whoever can reach the proxy.
"""

import ipaddress
import logging
import os
from dataclasses import dataclass

from flask import Flask, Response, current_app, request
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from services.api.auth import require_bearer
from shared.adapters.fleet_stats import STATUS_DURATION_BUCKETS, FleetStats, FleetStatsSource
from shared.domain.errors import RegistryUnavailable
from shared.domain.lifecycle import Status
from shared.service_layer.reconcile import ActionKind
from shared.settings import Settings
from shared.web import public

log = logging.getLogger("dark.api")

# A request's method is the client's to choose; only these become a label value of their own.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# The `from_status` of an instance's first event, its creation.
CREATED = "none"


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self._requests = Counter(
            "dark_http_requests",
            "HTTP requests the gateway answered, by method, route (URL rule) and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self._duration = Histogram(
            "dark_http_request_duration_seconds",
            "Time the gateway took to answer a request, by method and route (URL rule).",
            ["method", "route"],
            registry=registry,
        )
        self._series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in _METHODS else "other"
        # Each series' child looked up once (`labels` validates and locks on every call); the keys
        # are few: a known method, a URL rule, a status.
        key = (method, route, status)
        series = self._series.get(key)
        if series is None:
            series = (
                self._requests.labels(method, route, str(status)),
                self._duration.labels(method, route),
            )
            self._series[key] = series
        series[0].inc()
        series[1].observe(seconds)


class FleetCollector:
    """The Postgres-derived families, computed when a scrape collects them."""

    def __init__(self, stats: FleetStatsSource) -> None:
        self._stats = stats

    def collect(self):
        up = GaugeMetricFamily(
            "dark_metrics_db_up",
            "1 when the registry database answered this scrape's queries; 0 when it did not and "
            "the dark_instance* and dark_reconcile* families are left out.",
        )
        try:
            stats = self._stats.snapshot()
        except RegistryUnavailable as exc:
            log.warning("metrics: %s (%s)", exc, exc.__cause__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from _fleet_families(stats)


def _fleet_families(stats: FleetStats):
    instances = GaugeMetricFamily(
        "dark_instances", "Instances in the registry, by status.", labels=["status"]
    )
    for status in Status:
        instances.add_metric([status.value], stats.instances_by_status.get(status.value, 0))
    yield instances

    transitions = CounterMetricFamily(
        "dark_instance_transitions",
        "Lifecycle transitions recorded in the event log, by from and to status "
        f'(from_status="{CREATED}": the instance was created). Pipeline step outcomes: '
        'to_status="failed" is a step that gave up.',
        labels=["from_status", "to_status"],
    )
    for (src, dst), count in stats.transitions.items():
        transitions.add_metric([src or CREATED, dst], count)
    yield transitions

    durations = HistogramMetricFamily(
        "dark_instance_status_duration_seconds",
        "Time instances spent in a status before leaving it, by status (pipeline step durations).",
        labels=["status"],
    )
    for status_name, histogram in stats.status_durations.items():
        buckets = [
            (str(bound), count)
            for bound, count in zip(STATUS_DURATION_BUCKETS, histogram.cumulative, strict=True)
        ]
        buckets.append(("+Inf", histogram.count))
        durations.add_metric([status_name], buckets, histogram.total_secs)
    yield durations

    actions = CounterMetricFamily(
        "dark_reconcile_actions",
        "Actions taken by reconcile runs that were not dry runs, by kind (held-back ones are not).",
        labels=["kind"],
    )
    for kind in sorted({kind.value for kind in ActionKind} | set(stats.reconcile_actions)):
        actions.add_metric([kind], stats.reconcile_actions.get(kind, 0))
    yield actions

    runs = CounterMetricFamily(
        "dark_reconcile_runs", "Reconcile runs recorded, by dry_run.", labels=["dry_run"]
    )
    for dry_run in (False, True):
        runs.add_metric([str(dry_run).lower()], stats.reconcile_runs.get(dry_run, 0))
    yield runs

    # Gauges of the newest run, so that an alert fires while it stands and clears on its own.
    refused = GaugeMetricFamily(
        "dark_reconcile_refused",
        "1 when the newest finished reconcile run was refused: it would have taken more orphan "
        "deletes and lost marks than RECONCILE_MAX_DESTRUCTIVE and took none of them.",
    )
    refused.add_metric([], int(stats.reconcile_refused))
    yield refused
    held_back = GaugeMetricFamily(
        "dark_reconcile_held_back",
        "Actions the newest finished reconcile run held back (blast radius).",
    )
    held_back.add_metric([], stats.reconcile_held_back)
    yield held_back

    in_flight = GaugeMetricFamily(
        "dark_cloud_operations_in_flight",
        "Cloud creates and deletes holding a slot of the operation budget "
        "(YC_MAX_CONCURRENT_OPERATIONS).",
    )
    in_flight.add_metric([], stats.operations_in_flight)
    yield in_flight
    waiting = GaugeMetricFamily(
        "dark_cloud_capacity_waiting",
        "Pending instances waiting in line for a slot of the cloud operation budget.",
    )
    waiting.add_metric([], stats.waiting_for_capacity)
    yield waiting


@dataclass(frozen=True)
class GatewayMetrics:
    registry: CollectorRegistry  # what a scrape renders
    http: HttpMetrics
    loopback_open: bool
    stats: FleetStatsSource


def install_metrics(app: Flask, settings: Settings, stats: FleetStatsSource) -> None:
    registry = CollectorRegistry()
    multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if multiprocess_dir:
        # The metrics write to this worker's files (prometheus_client chose that when imported);
        # registering them too would count them twice.
        MultiProcessCollector(registry, multiprocess_dir)
        http = HttpMetrics(registry=None)
    else:
        http = HttpMetrics(registry)
    registry.register(FleetCollector(stats))
    app.extensions["dark_metrics"] = GatewayMetrics(
        registry, http, settings.metrics_loopback_open, stats
    )
    app.add_url_rule("/metrics", "metrics", metrics, methods=["GET"])


def record_request(method: str, route: str, status: int, seconds: float) -> None:
    current_app.extensions["dark_metrics"].http.observe(method, route, status, seconds)


@public  # its own rule: an operator bearer token, or loopback if opened (the module docstring)
def metrics():
    gateway_metrics: GatewayMetrics = current_app.extensions["dark_metrics"]
    if not (gateway_metrics.loopback_open and _loopback(request.remote_addr)):
        require_bearer()
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encode(gateway_metrics.registry), content_type=content_type)


def _loopback(remote_addr: str | None) -> bool:
    try:
        address = ipaddress.ip_address(remote_addr or "")
    except ValueError:  # not an IP address (a Unix socket)
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped  # a dual-stack socket's ::ffff:127.0.0.1
    return address.is_loopback
