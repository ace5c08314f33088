"""/health/live, /health/ready and /metrics on real PostgreSQL (and SQLite) and a real Redis;
the delivery statistics and queue depths they are computed from."""

from __future__ import annotations

import datetime as dt
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update
from sqlalchemy.orm import Session

from service import observability as obs
from service.config import Settings
from service.db import utcnow
from service.messaging import Recipients, send_message
from service.models import Delivery, DeliveryState
from tasks.celery_app import make_celery
from tests import factories as f
from tests.helpers import deliver
from tests.ops.conftest import free_port
from web import create_app


def _send(db: Session, sender: object, unit: object) -> Delivery:
    sent = send_message(db, sender, "Stock-out", "Report stock.", Recipients(org_units=[unit.uid]))
    assert sent.delivery is not None
    return sent.delivery


def test_delivery_stats_count_states_recipients_and_lag(db: Session) -> None:
    before = obs.delivery_stats(db)
    unit = f.org_unit(db)
    sender = f.user(db, admin=True, units=(unit,))
    for _ in range(3):
        f.user(db, units=(unit,))
    done, failed, waiting = (_send(db, sender, unit) for _ in range(3))
    deliver(db, done.id)
    db.execute(update(Delivery).where(Delivery.id == failed.id).values(state="FAILED", failed=3))
    an_hour_ago = utcnow() - dt.timedelta(hours=1)
    db.execute(update(Delivery).where(Delivery.id == waiting.id).values(created_at=an_hour_ago))

    stats = obs.delivery_stats(db)
    delta = {s: stats.by_state[s] - before.by_state[s] for s in stats.by_state}
    assert delta == {"QUEUED": 1, "DELIVERING": 0, "DELIVERED": 1, "FAILED": 1}
    assert stats.recipients_delivered - before.recipients_delivered == 3
    assert stats.recipients_failed - before.recipients_failed == 3
    assert 3600 <= stats.oldest_unfinished_age < 3600 + 60
    db.execute(update(Delivery).where(Delivery.id == waiting.id).values(state="DELIVERED"))
    assert obs.delivery_stats(db).oldest_unfinished_age < 3600


def test_queue_depths_count_what_celery_published(broker: redis.Redis, broker_url: str) -> None:
    """Published through Celery itself, so the keys are the transport's real ones (priorities
    included); read back by LLEN."""
    celery = make_celery(Settings(env="test", broker_url=broker_url, secret_key="x"))
    for delivery_id in (1, 2):
        celery.send_task("delivery.plan", args=[delivery_id], queue="bulk")
    celery.send_task("delivery.fan_out_batch", args=[1, 0], queue="bulk", priority=6)
    celery.send_task("delivery.sweep", queue="interactive")
    assert obs.queue_depths(broker, ["bulk", "interactive"]) == {"bulk": 3, "interactive": 1}
    assert broker.keys("bulk*")  # the transport really uses these names


def test_redis_client_understands_celery_broker_urls(tmp_path: Path, broker_url: str) -> None:
    client = obs.redis_client(broker_url, 1.0)
    assert obs.check_broker(client) < 1.0
    client.close()
    sock = obs.redis_client(f"redis+socket://{tmp_path}/r.sock?virtual_host=3", 1.0)
    assert sock.connection_pool.connection_kwargs["path"] == f"{tmp_path}/r.sock"
    assert sock.connection_pool.connection_kwargs["db"] == 3
    with pytest.raises(ValueError, match="not a Redis broker URL"):
        obs.redis_client("amqp://guest@localhost//", 1.0)


def _app(database_url: str, broker_url: str, tmp_path: Path, timeout: float = 2.0) -> Flask:
    settings = Settings(
        env="test",
        data_dir=tmp_path,
        database_url=database_url,
        broker_url=broker_url,
        secret_key="x",
        health_timeout=timeout,
    )
    return create_app(settings)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers: a hung dependency."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]


def test_live_and_ready_when_everything_answers(pg_url: str, broker_url: str, tmp_path) -> None:
    client = _app(pg_url, broker_url, tmp_path).test_client()
    assert client.get("/health/live").get_json() == {"status": "ok"}
    resp = client.get("/health/ready")
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["ok"] and body["checks"]["broker"]["ok"]


def test_ready_on_sqlite_and_the_demo_socket_url(sqlite_url: str, tmp_path: Path) -> None:
    missing_socket = f"redis+socket://{tmp_path}/nothing.sock"
    resp = _app(sqlite_url, missing_socket, tmp_path).test_client().get("/health/ready")
    assert resp.status_code == 503
    checks = resp.get_json()["checks"]
    assert checks["database"]["ok"] is True
    assert checks["broker"] == {"ok": False, "error": "ConnectionError"}


@pytest.mark.parametrize("down", ["broker", "database"])
def test_ready_is_503_naming_what_is_down(
    down: str, pg_url: str, broker_url: str, tmp_path: Path
) -> None:
    closed = free_port()
    db_url = pg_url if down != "database" else f"postgresql+psycopg://postgres@127.0.0.1:{closed}/x"
    br_url = broker_url if down != "broker" else f"redis://127.0.0.1:{closed}/0"
    client = _app(db_url, br_url, tmp_path).test_client()
    resp = client.get("/health/ready")
    assert resp.status_code == 503
    body = resp.get_json()
    assert body["status"] == "unavailable"
    up = "database" if down == "broker" else "broker"
    assert body["checks"][down]["ok"] is False and body["checks"][up]["ok"] is True
    assert client.get("/health/live").status_code == 200


def test_ready_gives_up_on_hung_dependencies_within_the_timeout(
    silent_server: int, tmp_path: Path
) -> None:
    app = _app(
        f"postgresql+psycopg://postgres@127.0.0.1:{silent_server}/x",
        f"redis://127.0.0.1:{silent_server}/0",
        tmp_path,
        timeout=0.5,
    )
    start = time.monotonic()
    resp = app.test_client().get("/health/ready")
    elapsed = time.monotonic() - start
    assert resp.status_code == 503
    checks = resp.get_json()["checks"]
    assert not checks["database"]["ok"] and not checks["broker"]["ok"]
    # PostgreSQL's connect timeout has a 1 s granularity; the broker's is 0.5 s.
    assert elapsed < 4, elapsed


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_report_deliveries_lag_and_queue_depth(
    pg_url: str, broker: redis.Redis, broker_url: str, tmp_path: Path
) -> None:
    broker.lpush("bulk", "a", "b")
    resp = _app(pg_url, broker_url, tmp_path).test_client().get("/metrics")
    assert resp.status_code == 200
    assert resp.content_type.startswith("text/plain; version=")
    samples = _samples(resp.get_data(as_text=True))
    for state in DeliveryState:
        assert ("messaging_deliveries", (("state", state.value.lower()),)) in samples
    assert samples[("messaging_queue_depth", (("queue", "bulk"),))] == 2
    assert samples[("messaging_queue_depth", (("queue", "interactive"),))] == 0
    assert ("messaging_delivery_lag_seconds", ()) in samples
    assert ("messaging_delivery_recipients", (("outcome", "delivered"),)) in samples
    assert samples[("messaging_up", (("source", "database"),))] == 1
    assert samples[("messaging_up", (("source", "broker"),))] == 1


def test_metrics_still_answer_when_the_broker_is_down(pg_url: str, tmp_path: Path) -> None:
    resp = (
        _app(pg_url, f"redis://127.0.0.1:{free_port()}/0", tmp_path).test_client().get("/metrics")
    )
    assert resp.status_code == 200
    samples = _samples(resp.get_data(as_text=True))
    assert samples[("messaging_up", (("source", "broker"),))] == 0
    assert samples[("messaging_up", (("source", "database"),))] == 1
    assert not any(name == "messaging_queue_depth" for name, _ in samples)
