"""Delivery bookkeeping: the sweep, attempts, and two workers running one batch at once."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from service import delivery as svc
from service import messaging as msg
from service.db import make_engine, make_session_factory, utcnow
from service.models import Delivery, Inbox
from tests import factories as f
from tests.conftest import create_pg_database, migrate, run_db_name


def test_sweep_republishes_only_stalled_deliveries(db: Session) -> None:
    sender = f.user(db)
    people = [f.user(db) for _ in range(5)]
    queued = msg.send_message(db, sender, "A", "T", msg.Recipients(users=[p.uid for p in people]))
    running = msg.send_message(db, sender, "B", "T", msg.Recipients(users=[p.uid for p in people]))
    plan = svc.plan(db, running.delivery.id, 2)
    svc.run_batch(db, running.delivery.id, plan.batch_seqs[0])
    fresh = msg.send_message(db, sender, "C", "T", msg.Recipients(users=[people[0].uid]))
    assert fresh.delivery is not None
    later = utcnow() + dt.timedelta(seconds=120)
    # Only work older than the cutoff is republished; fresh work is left to its own tasks.
    assert svc.sweep(db, stale_after=600, now=later) == []
    for d in (queued.delivery, running.delivery):
        d.touched_at = later - dt.timedelta(seconds=300)
    db.flush()
    todo = svc.sweep(db, stale_after=60, now=later)
    assert svc.Republish("delivery.plan", (queued.delivery.id,)) in todo
    assert [t for t in todo if t.task == "delivery.fan_out_batch"] == [
        svc.Republish("delivery.fan_out_batch", (running.delivery.id, s))
        for s in plan.batch_seqs[1:]
    ]
    # It touched what it republished: the next sweep waits again.
    assert svc.sweep(db, stale_after=60, now=later) == []
    # Replaying what the sweep asked for (twice, as a redelivery would) finishes the work once.
    for _ in range(2):
        for item in todo:
            if item.task == "delivery.plan":
                replanned = svc.plan(db, *item.args, batch_size=2)
                for seq in replanned.batch_seqs:
                    svc.run_batch(db, item.args[0], seq)
            else:
                svc.run_batch(db, *item.args)
    for d in (queued.delivery, running.delivery):
        db.refresh(d)
        assert (d.state, d.delivered, d.total) == ("DELIVERED", 5, 5)


def test_begin_attempt_refuses_finished_batches(db: Session) -> None:
    sender, other = f.user(db), f.user(db)
    sent = msg.send_message(db, sender, "A", "T", msg.Recipients(users=[other.uid]))
    plan = svc.plan(db, sent.delivery.id, 10)
    assert svc.begin_attempt(db, sent.delivery.id, plan.batch_seqs[0], 3)
    svc.run_batch(db, sent.delivery.id, plan.batch_seqs[0])
    assert not svc.begin_attempt(db, sent.delivery.id, plan.batch_seqs[0], 3)


@pytest.fixture(scope="module")
def committing_engine() -> Iterator[Engine]:
    """A PostgreSQL database of its own for tests whose sessions must commit."""
    url = create_pg_database(run_db_name("commit"))
    migrate(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def test_two_workers_running_one_batch_at_once_write_it_once(committing_engine: Engine) -> None:
    factory = make_session_factory(committing_engine)
    with factory() as s:
        sender = f.user(s)
        people = [f.user(s) for _ in range(300)]
        sent = msg.send_message(
            s, sender, "Race", "T", msg.Recipients(users=[p.uid for p in people])
        )
        delivery_id = sent.delivery.id
        conversation_id = sent.conversation.id
        plan = svc.plan(s, delivery_id, 1000)
        s.commit()
    seq = plan.batch_seqs[0]
    barrier = threading.Barrier(2)
    results: list[svc.BatchResult] = []

    def run() -> None:
        with factory() as s:
            barrier.wait()
            results.append(svc.run_batch(s, delivery_id, seq))
            s.commit()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(r.ran for r in results) == [False, True]
    with factory() as s:
        rows = s.scalar(
            select(func.count()).select_from(Inbox).where(Inbox.conversation_id == conversation_id)
        )
        d = s.get_one(Delivery, delivery_id)
        assert rows == 301
        assert (d.state, d.delivered, d.total) == ("DELIVERED", 300, 300)
