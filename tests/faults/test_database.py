"""PostgreSQL fails under the workers: their connections terminated mid-batch
(`pg_terminate_backend`), and tasks that arrive before the data they need is committed. Retries
with backoff, the pool's pre-ping and the sweep finish every delivery, exactly once."""

from __future__ import annotations

import re
import time

import pytest

from service import delivery as svc
from service import messaging as msg
from service.config import BULK_QUEUE, load_settings
from service.models import User
from tasks.celery_app import make_celery
from tests.faults.conftest import (
    Broadcast,
    Stack,
    backends,
    conversation_held,
    db_worker,
    delivered_exactly,
    delivery,
    max_attempts,
    population,
    publish,
    submit,
    terminate_backends,
    wait_until,
)

pytestmark = pytest.mark.faults

RETRY = re.compile(r"delivery (\d+) batch (\d+): transient failure, retry (\d+) in ([\d.]+)s")


def retries_logged(log: str, delivery_id: int) -> list[tuple[int, int, float]]:
    """(batch, retry number, countdown) of every transient-failure retry of the delivery."""
    return [
        (int(m[2]), int(m[3]), float(m[4])) for m in RETRY.finditer(log) if int(m[1]) == delivery_id
    ]


def test_connections_terminated_mid_batch_are_retried_with_backoff(live: Stack) -> None:
    stack = live
    app = "pgkill"
    pop = population(stack, 4000)
    # Enough attempts that no batch is given up on however the kills fall (8 batches, 2 at once).
    worker = db_worker(stack, app, BATCH_MAX_ATTEMPTS="20")
    b = submit(stack, pop, "Connections terminated")
    t0 = time.monotonic()
    kills = 0
    with conversation_held(stack, b):
        publish(stack, b)
        # Each round: both pool processes inside a batch (rows written, the counter update
        # waiting on the held row), then every backend of the worker terminated. Until one
        # batch has been hit twice, so its second retry shows the backoff growing.
        for _ in range(12):
            wait_until(
                lambda: backends(stack, app, waiting_on_lock=True) >= 2,
                60,
                "both pool processes waiting mid-batch",
            )
            assert delivery(stack, b.delivery_id).delivered == 0
            kills += terminate_backends(stack, app)
            if max_attempts(stack, b.delivery_id) >= 3:
                break
        assert max_attempts(stack, b.delivery_id) >= 3, "no batch was hit twice"
    delivered_exactly(stack, b)
    print(f"\n[measure] {kills} backends terminated; delivered {time.monotonic() - t0:.1f}s in all")
    retries = retries_logged(worker.log(), b.delivery_id)
    assert retries, "the terminated batches were not retried"
    assert {n for _, n, _ in retries} >= {1, 2}, retries
    # Doubling with jitter: retry n waits 2^(n-1) seconds (capped at a third of the visibility
    # timeout), times 0.5 to 1.5.
    cap = int(stack.env["BROKER_VISIBILITY_TIMEOUT"]) / 3
    for _, n, countdown in retries:
        base = min(cap, 2 ** (n - 1))
        assert 0.5 * base <= countdown <= 1.5 * base, (n, countdown)

    # Connections terminated while idle in the workers' pools: the pre-ping replaces them
    # before use, so the sweep and the next broadcast run without a single failed attempt.
    before = len(worker.log())
    assert wait_until(lambda: terminate_backends(stack, app) > 0, 10, "idle pooled backends")
    second = submit(stack, pop, "After the pools were emptied")
    publish(stack, second)
    delivered_exactly(stack, second, timeout=60)
    assert max_attempts(stack, second.delivery_id) == 1
    after = worker.log()[before:]
    assert "succeeded" in after
    assert not re.search(r" ERROR |transient failure| raised ", after), after[-3000:]


def _task_done(log: str, task_id: str) -> str | None:
    m = re.search(rf"Task [\w.]+\[{task_id}\] (succeeded|failed|retry|raised)", log)
    return m[1] if m else None


@pytest.mark.parametrize("task", ["delivery.plan", "delivery.fan_out_batch"])
def test_task_that_runs_before_its_data_is_committed_never_fails(live: Stack, task: str) -> None:
    """Publish a task for a delivery still inside an open transaction; the worker runs it and
    finds nothing; then commit. No "not found": the task does nothing, and the sweep (the
    delivery's own record of unfinished work) finishes it."""
    stack = live
    worker = db_worker(stack, f"early-{task.rsplit('.', 1)[1]}")
    pop = population(stack, 1200)
    celery = make_celery(load_settings(stack.env))
    with stack.session() as s:
        sender = s.get_one(User, pop.sender_id)
        sent = msg.send_message(
            s, sender, "Before commit", "T", msg.Recipients(user_groups=[pop.group_uid])
        )
        assert sent.delivery is not None
        delivery_id = sent.delivery.id
        b = Broadcast(sent.conversation.id, delivery_id, pop.member_ids | {pop.sender_id})
        if task == "delivery.plan":
            ids = [celery.send_task(task, args=[delivery_id], queue=BULK_QUEUE).id]
        else:
            planned = svc.plan(s, delivery_id, 500)
            assert len(planned.batch_seqs) == 3
            ids = [
                celery.send_task(task, args=[delivery_id, seq], queue=BULK_QUEUE).id
                for seq in planned.batch_seqs
            ]
        s.flush()
        outcomes = wait_until(
            lambda: all(_task_done(worker.log(), i) for i in ids) and ids,
            60,
            "the worker to run the early tasks",
        )
        assert [_task_done(worker.log(), i) for i in outcomes] == ["succeeded"] * len(ids)
        s.commit()
    took = delivered_exactly(stack, b, timeout=60)
    print(f"\n[measure] {task} before commit: delivered {took:.1f}s after the commit")
    log = worker.log()
    assert "sweep republished" in log
    assert not re.search(r"[Nn]ot found|NoResultFound| ERROR | raised ", log), log[-3000:]
