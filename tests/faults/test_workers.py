"""Workers die: the whole worker (main process and pool) SIGKILLed three times in one
50,000-recipient broadcast, and one pool process SIGKILLed mid-batch. Late acks, redelivery after
the visibility timeout and the sweep finish the work; idempotent batches write it once."""

from __future__ import annotations

import os
import signal
import time

import pytest
from sqlalchemy import func, select

from service.models import DeliveryBatch
from tests.faults.conftest import (
    Stack,
    assert_exact,
    children,
    conversation_held,
    delivery,
    kill_group,
    population,
    publish,
    submit,
    wait_finished,
    wait_lock_waiters,
    wait_until,
)

pytestmark = pytest.mark.faults


def test_whole_worker_killed_three_times_in_a_50000_recipient_broadcast(live: Stack) -> None:
    stack = live
    size = 50_000
    t = time.monotonic()
    pop = population(stack, size)
    print(f"\n[measure] 50,000 users inserted in {time.monotonic() - t:.1f}s")
    worker = stack.worker("k0")
    b = submit(stack, pop, "Killed three times")
    publish(stack, b)
    t0 = time.monotonic()
    for i, fraction in enumerate((0.1, 0.4, 0.7), start=1):

        def reached(fraction: float = fraction) -> bool:
            return delivery(stack, b.delivery_id).delivered >= fraction * size

        wait_until(reached, 180, f"{fraction:.0%} delivered", 0.02)
        before = delivery(stack, b.delivery_id)
        assert before.state == "DELIVERING" and before.delivered < size, "killed too late"
        kill_group(worker)
        print(f"[measure] kill {i} at {before.delivered}/{size} ({time.monotonic() - t0:.1f}s)")
        worker = stack.worker(f"k{i}")
    killed_at = time.monotonic()
    d = wait_finished(stack, b, timeout=240)
    print(
        f"[measure] 50,000 delivered {time.monotonic() - killed_at:.1f}s after the third "
        f"restart, {time.monotonic() - t0:.1f}s in all"
    )
    assert d.state == "DELIVERED"
    assert_exact(stack, b)


def test_one_pool_process_killed_mid_batch(live: Stack) -> None:
    stack = live
    pop = population(stack, 2000)
    worker = stack.worker("pool")
    b = submit(stack, pop, "Pool process killed")
    with conversation_held(stack, b):
        publish(stack, b)
        # Both pool processes are inside a batch: rows inserted, the counter update waiting.
        wait_lock_waiters(stack, 2)
        victim = children(worker.popen.pid)[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: victim not in children(worker.popen.pid), 10, "the pool to notice")
        t0 = time.monotonic()
    d = wait_finished(stack, b, timeout=120)
    print(f"\n[measure] pool process kill: delivered {time.monotonic() - t0:.1f}s after")
    assert d.state == "DELIVERED"
    assert_exact(stack, b)
    with stack.session() as s:
        # The killed batch really was interrupted and run again.
        assert (
            s.scalar(
                select(func.max(DeliveryBatch.attempts)).where(
                    DeliveryBatch.delivery_id == b.delivery_id
                )
            )
            or 0
        ) >= 2
    assert worker.popen.poll() is None, "the worker itself survives"
