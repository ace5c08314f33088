"""What health checks and metrics read: the database's record of deliveries and the broker's
queues. Computed on demand from shared state, so any number of processes report the same numbers.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import redis
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from service.db import utcnow
from service.models import Delivery, DeliveryState

UNFINISHED = (DeliveryState.QUEUED.value, DeliveryState.DELIVERING.value)
# Kombu's Redis transport keeps a queue's messages of priority p > 0 in `<queue>\x06\x16<p>`.
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)


@dataclass(frozen=True)
class DeliveryStats:
    by_state: dict[str, int]  # every DeliveryState, zero when none
    recipients_delivered: int
    recipients_failed: int
    batches_pending: int  # of unfinished deliveries
    oldest_unfinished_age: float  # seconds since the oldest unfinished delivery was accepted


def delivery_stats(session: Session, now: dt.datetime | None = None) -> DeliveryStats:
    """Counts by state, recipient outcomes, and lag: the age of the oldest unfinished delivery
    (0 when none is unfinished)."""
    now = now or utcnow()
    by_state = {state.value: 0 for state in DeliveryState}
    rows = session.execute(
        select(
            Delivery.state,
            func.count(),
            func.coalesce(func.sum(Delivery.delivered), 0),
            func.coalesce(func.sum(Delivery.failed), 0),
        ).group_by(Delivery.state)
    ).all()
    delivered = failed = 0
    for state, count, ok, bad in rows:
        by_state[state] = int(count)
        delivered += int(ok)
        failed += int(bad)
    oldest, pending = session.execute(
        select(
            func.min(Delivery.created_at), func.coalesce(func.sum(Delivery.batches_pending), 0)
        ).where(Delivery.state.in_(UNFINISHED))
    ).one()
    if oldest is not None and oldest.tzinfo is None:  # aggregates bypass the column type
        oldest = oldest.replace(tzinfo=dt.UTC)
    lag = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
    return DeliveryStats(by_state, delivered, failed, int(pending), lag)


def check_database(session: Session) -> None:
    """Raises when the database does not answer a trivial query."""
    session.execute(text("SELECT 1")).scalar_one()


def redis_client(broker_url: str, timeout: float) -> redis.Redis:
    """A Redis client for the broker URL Celery uses (`redis://`, `rediss://`, or a Unix socket
    as `redis+socket://` / `socket://`), failing after `timeout` seconds."""
    parts = urlsplit(broker_url)
    if parts.scheme in {"redis+socket", "socket"}:
        query = parse_qs(parts.query)
        db = int((query.get("virtual_host") or query.get("db") or ["0"])[0] or 0)
        return redis.Redis(
            unix_socket_path=parts.path,
            db=db,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
    if parts.scheme in {"redis", "rediss"}:
        return redis.Redis.from_url(
            broker_url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
    raise ValueError(f"not a Redis broker URL: {parts.scheme}://")


def queue_depths(client: redis.Redis, queues: Iterable[str]) -> dict[str, int]:
    """Messages waiting in each Celery queue (all priority levels; excludes unacked ones)."""
    names = list(queues)
    pipe = client.pipeline(transaction=False)
    for name in names:
        for step in PRIORITY_STEPS:
            pipe.llen(name if step == 0 else f"{name}{PRIORITY_SEPARATOR}{step}")
    lengths = pipe.execute()
    per = len(PRIORITY_STEPS)
    return {name: sum(lengths[i * per : (i + 1) * per]) for i, name in enumerate(names)}


def check_broker(client: redis.Redis) -> float:
    """Round-trip time of a PING, in seconds; raises when the broker does not answer."""
    start = time.monotonic()
    if not client.ping():
        raise redis.ConnectionError("PING was not answered")
    return time.monotonic() - start
