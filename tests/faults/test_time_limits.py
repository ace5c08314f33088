"""Batches that run past their time limits: held up by a real row lock (the soft limit, and
PostgreSQL's statement timeout below it), or hung outright (the hard limit). Each is retried or
marked FAILED — never left DELIVERING — and an interrupted batch leaves no backend behind."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest
from sqlalchemy import select

from service.models import Conversation, DeliveryBatch, Inbox, MessageType
from tests.faults.conftest import (
    Stack,
    backends,
    children,
    conversation_held,
    db_worker,
    delivered_exactly,
    delivery,
    max_attempts,
    population,
    publish,
    submit,
    wait_until,
)

pytestmark = pytest.mark.faults

# Short limits for these workers only: soft < hard < visibility timeout.
SHORT = {
    "TASK_SOFT_TIME_LIMIT": "2",
    "TASK_TIME_LIMIT": "4",
    "BROKER_VISIBILITY_TIMEOUT": "8",
}
TIMED_OUT = ("Soft time limit (2s) exceeded", "canceling statement due to statement timeout")


def test_batch_past_its_soft_time_limit_is_retried_and_delivered(live: Stack) -> None:
    stack = live
    app = "soft-retried"
    pop = population(stack, 1200)
    worker = db_worker(stack, app, BATCH_MAX_ATTEMPTS="5", **SHORT)
    b = submit(stack, pop, "Slow, then not")
    with conversation_held(stack, b):
        publish(stack, b)
        # Held until a batch has timed out and its retry has begun.
        wait_until(lambda: max_attempts(stack, b.delivery_id) >= 2, 60, "a second attempt")
    took = delivered_exactly(stack, b, timeout=60)
    print(f"\n[measure] soft time limit: delivered {took:.1f}s after the lock was released")
    assert any(t in worker.log() for t in TIMED_OUT)


def test_batch_past_its_soft_time_limit_every_time_is_marked_failed(live: Stack) -> None:
    stack = live
    app = "soft-failed"
    attempts = 2
    pop = population(stack, 1200)
    worker = db_worker(stack, app, BATCH_MAX_ATTEMPTS=str(attempts), **SHORT)
    b = submit(stack, pop, "Never finishes")
    most = 0
    t0 = time.monotonic()
    with conversation_held(stack, b):
        publish(stack, b)

        def failed() -> bool:
            nonlocal most
            most = max(most, backends(stack, app))
            return delivery(stack, b.delivery_id).state == "FAILED"

        # Held for as long as it takes: every attempt at every batch times out.
        wait_until(failed, 90, "the delivery to be marked FAILED", 0.2)
    print(
        f"\n[measure] soft time limit every time: FAILED after {time.monotonic() - t0:.1f}s, "
        f"at most {most} backends of the worker"
    )
    # A timed-out statement is ended by PostgreSQL, not left running with its locks: the
    # worker's backends stay within its pools (2 processes x 4), however many retries.
    assert most <= 8
    assert any(t in worker.log() for t in TIMED_OUT)
    with stack.session() as s:
        d = delivery(stack, b.delivery_id)
        assert (d.state, d.total, d.delivered, d.failed, d.batches_pending) == (
            "FAILED",
            1200,
            0,
            1200,
            0,
        )
        batches = s.scalars(
            select(DeliveryBatch).where(DeliveryBatch.delivery_id == b.delivery_id)
        ).all()
        assert {x.state for x in batches} == {"FAILED"}
        assert all(x.attempts > attempts for x in batches)
        # Nothing written after all (the sender's own row only), and the sender is told.
        rows = set(
            s.scalars(select(Inbox.user_id).where(Inbox.conversation_id == b.conversation_id))
        )
        assert rows == {pop.sender_id}
        notices = s.scalars(
            select(Conversation)
            .join(Inbox, Inbox.conversation_id == Conversation.id)
            .where(
                Inbox.user_id == pop.sender_id,
                Inbox.read.is_(False),
                Conversation.message_type == MessageType.SYSTEM.value,
            )
        ).all()
        assert [c.subject for c in notices] == ["Delivery failed: Never finishes"]


def test_batch_hung_past_its_hard_time_limit_is_killed_and_redone(live: Stack) -> None:
    """The pool process is stopped (SIGSTOP) mid-batch, as a process stuck where no signal
    handler runs: the soft limit cannot interrupt it; the hard limit kills it, and the sweep
    has the batch done again."""
    stack = live
    app = "hard"
    pop = population(stack, 1200)
    worker = db_worker(
        stack,
        app,
        concurrency=1,
        TASK_SOFT_TIME_LIMIT="8",
        TASK_TIME_LIMIT="10",
        BROKER_VISIBILITY_TIMEOUT="20",
    )
    b = submit(stack, pop, "Hung")
    (child,) = children(worker.popen.pid)
    try:
        with conversation_held(stack, b):
            publish(stack, b)
            wait_until(
                lambda: backends(stack, app, waiting_on_lock=True) >= 1, 60, "a batch mid-way"
            )
            os.kill(child, signal.SIGSTOP)
        worker.wait_for_log(r"Hard time limit \(10s\) exceeded", timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGCONT)
    took = delivered_exactly(stack, b, timeout=90)
    print(f"\n[measure] hard time limit: delivered {took:.1f}s after the kill")
    assert max_attempts(stack, b.delivery_id) >= 2
    assert child not in children(worker.popen.pid)
