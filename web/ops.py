"""Operations endpoints: liveness, readiness and Prometheus metrics.

No sign-in: they expose no personal data, only counts. `/health/live` says the process serves
requests; `/health/ready` checks the database and the broker, each with a short timeout
(HEALTH_TIMEOUT), and answers 503 naming what is down. `/metrics` is computed at scrape time from
the database and the broker, so every web process reports the same numbers however many run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any, TypeVar

from flask import Blueprint, Flask, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from service import observability as obs
from service.config import QUEUES, Settings

bp = Blueprint("ops", __name__)
T = TypeVar("T")
log = logging.getLogger(__name__)


def _probe_engine(settings: Settings) -> Engine:
    """Connections for checks only: no pool, short connect and statement timeouts, and (SQLite)
    plain deferred transactions, so a check never queues behind a writer's lock."""
    timeout = settings.health_timeout
    if settings.is_sqlite:
        args: dict[str, Any] = {"timeout": timeout}
    else:
        args = {
            "connect_timeout": max(1, math.ceil(timeout)),
            "options": f"-c statement_timeout={int(timeout * 1000)}",
        }
    return create_engine(settings.database_url, poolclass=NullPool, connect_args=args)


def _probe_sessions() -> Callable[[], Session]:
    factory: Callable[[], Session] | None = current_app.extensions.get("probe_sessions")
    if factory is None:
        # Injected session factories (tests) are used as they are.
        factory = current_app.extensions["session_factory"]
        assert factory is not None
    return factory


def _settings() -> Settings:
    return current_app.extensions["settings"]  # type: ignore[no-any-return]


def _timed(check: Callable[[], object]) -> dict[str, Any]:
    start = time.monotonic()
    try:
        check()
    except Exception as exc:  # any failure means "not ready"; the log has the detail
        log.warning("readiness check failed: %s", exc)
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True, "seconds": round(time.monotonic() - start, 4)}


def _check_database() -> None:
    with closing(_probe_sessions()()) as session:
        obs.check_database(session)


def _check_broker() -> None:
    settings = _settings()
    with closing(obs.redis_client(settings.broker_url, settings.health_timeout)) as client:
        obs.check_broker(client)


@bp.get("/health/live")
def live() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/health/ready")
def ready() -> tuple[Response, int]:
    checks = {"database": _timed(_check_database), "broker": _timed(_check_broker)}
    ok = all(c["ok"] for c in checks.values())
    body = {"status": "ok" if ok else "unavailable", "checks": checks}
    return jsonify(body), 200 if ok else 503


class ServiceCollector(Collector):
    """Reads deliveries and queue depths at each scrape; a source that cannot be read is
    reported by `messaging_up{source=...} 0` and its metrics are left out."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "messaging_up", "1 when the source could be read for this scrape", labels=["source"]
        )
        with self.app.app_context():
            stats = _read("database", _read_stats, up)
            if stats is not None:
                yield from _delivery_metrics(stats)
            depths = _read("broker", _read_depths, up)
            if depths is not None:
                depth = GaugeMetricFamily(
                    "messaging_queue_depth", "Tasks waiting in each broker queue", labels=["queue"]
                )
                for queue, count in depths.items():
                    depth.add_metric([queue], count)
                yield depth
        yield up


def _read(source: str, read: Callable[[], T], up: GaugeMetricFamily) -> T | None:
    """Runs `read`, recording in `up` whether it worked."""
    try:
        value = read()
    except Exception as exc:  # reported as messaging_up{source=...} 0
        log.warning("metrics: the %s could not be read: %s", source, exc)
        up.add_metric([source], 0.0)
        return None
    up.add_metric([source], 1.0)
    return value


def _read_stats() -> obs.DeliveryStats:
    with closing(_probe_sessions()()) as session:
        return obs.delivery_stats(session)


def _read_depths() -> dict[str, int]:
    settings = _settings()
    with closing(obs.redis_client(settings.broker_url, settings.health_timeout)) as client:
        return obs.queue_depths(client, QUEUES)


def _delivery_metrics(stats: obs.DeliveryStats) -> Iterator[Metric]:
    deliveries = GaugeMetricFamily(
        "messaging_deliveries", "Deliveries (fan-outs) by state", labels=["state"]
    )
    for state, count in stats.by_state.items():
        deliveries.add_metric([state.lower()], count)
    yield deliveries
    recipients = GaugeMetricFamily(
        "messaging_delivery_recipients",
        "Recipients written (delivered) or given up on (failed), over all deliveries",
        labels=["outcome"],
    )
    recipients.add_metric(["delivered"], stats.recipients_delivered)
    recipients.add_metric(["failed"], stats.recipients_failed)
    yield recipients
    lag = GaugeMetricFamily(
        "messaging_delivery_lag_seconds",
        "Age of the oldest unfinished (queued or delivering) delivery; 0 when none",
    )
    lag.add_metric([], stats.oldest_unfinished_age)
    yield lag
    pending = GaugeMetricFamily(
        "messaging_delivery_batches_pending", "Batches still to write, over unfinished deliveries"
    )
    pending.add_metric([], stats.batches_pending)
    yield pending


@bp.get("/metrics")
def metrics() -> Response:
    registry: CollectorRegistry = current_app.extensions["metrics_registry"]
    return Response(generate_latest(registry), mimetype=None, content_type=CONTENT_TYPE_LATEST)


def init_app(app: Flask, settings: Settings, injected_sessions: bool) -> None:
    if not injected_sessions:
        app.extensions["probe_sessions"] = sessionmaker(bind=_probe_engine(settings))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(app))
    app.extensions["metrics_registry"] = registry
    app.register_blueprint(bp)
