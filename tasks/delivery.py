"""Fan-out tasks. Thin: each takes ids only, opens a transaction, calls service.delivery, commits,
then publishes follow-ups. All are safe to run twice (see service.delivery)."""

from __future__ import annotations

import logging
import random

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import DBAPIError, OperationalError

from service import delivery as svc
from service.config import Settings
from tasks.celery_app import app
from tasks.db import session_scope

log = logging.getLogger(__name__)

# Connection-class failures are retried with backoff; anything else is a bug and fails at once.
TRANSIENT = (OperationalError, SoftTimeLimitExceeded)


def _settings() -> Settings:
    return app.conf.messaging_settings  # type: ignore[no-any-return]


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TRANSIENT):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _backoff(retries: int, settings: Settings) -> float:
    """Seconds before retry number `retries + 1`: doubling, jittered, capped at 60 s and well
    inside the visibility timeout (a countdown waits unacknowledged in the worker)."""
    cap = min(60.0, settings.broker_visibility_timeout / 3)
    return min(cap, 2.0**retries) * (0.5 + random.random())  # noqa: S311 - jitter, not security


def publish_batches(delivery_id: int, seqs: list[int]) -> None:
    for seq in seqs:
        fan_out_batch.apply_async(args=[delivery_id, seq])


@app.task(name="delivery.plan", bind=True, acks_late=True, max_retries=None)
def plan(self: Task, delivery_id: int) -> None:
    """Count a delivery's recipients and queue its batches. A single batch runs right here."""
    settings = _settings()
    try:
        with session_scope(settings) as session:
            result = svc.plan(session, delivery_id, settings.batch_size)
    except Exception as exc:
        if _is_transient(exc):
            raise self.retry(exc=exc, countdown=_backoff(self.request.retries, settings)) from exc
        raise
    log.info(
        "delivery %s planned: %s recipients in %s batches",
        delivery_id,
        result.total,
        len(result.batch_seqs),
    )
    if len(result.batch_seqs) == 1:
        _run_batch(self, delivery_id, result.batch_seqs[0], settings)
    else:
        publish_batches(delivery_id, result.batch_seqs)


def _run_batch(task: Task, delivery_id: int, seq: int, settings: Settings) -> None:
    try:
        with session_scope(settings) as session:
            if not svc.begin_attempt(session, delivery_id, seq, settings.batch_max_attempts):
                return
        with session_scope(settings) as session:
            result = svc.run_batch(session, delivery_id, seq)
    except Exception as exc:
        if _is_transient(exc):
            retries = task.request.retries or 0
            countdown = _backoff(retries, settings)
            log.warning(
                "delivery %s batch %s: transient failure, retry %s in %.1fs: %s",
                delivery_id,
                seq,
                retries + 1,
                countdown,
                exc,
            )
            # Re-run as its own fan_out_batch task so the attempt counter decides when to stop;
            # it carries the retry count, so the backoff grows from one retry to the next.
            fan_out_batch.apply_async(
                args=[delivery_id, seq], countdown=countdown, retries=retries + 1
            )
            return
        raise
    if result.ran:
        log.info(
            "delivery %s batch %s wrote %s rows%s",
            delivery_id,
            seq,
            result.rows,
            f"; delivery {result.finished_state}" if result.finished_state else "",
        )


@app.task(name="delivery.fan_out_batch", bind=True, acks_late=True)
def fan_out_batch(self: Task, delivery_id: int, seq: int) -> None:
    """Write one batch of inbox rows (or unread marks). Idempotent; counts every attempt."""
    _run_batch(self, delivery_id, seq, _settings())


@app.task(name="delivery.sweep", acks_late=True, ignore_result=True)
def sweep() -> int:
    """Republish the work of deliveries that stopped making progress (lost by the broker)."""
    settings = _settings()
    with session_scope(settings) as session:
        todo = svc.sweep(session, settings.stale_after)
    for item in todo:
        app.send_task(item.task, args=list(item.args))
    if todo:
        log.warning("sweep republished %s tasks", len(todo))
    return len(todo)
