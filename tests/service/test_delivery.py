"""Delivery bookkeeping: the sweep, attempts, and two workers running one batch at once."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, event, func, select, update
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


def test_a_reply_committed_while_a_batch_writes_its_rows_is_not_missed(
    committing_engine: Engine,
) -> None:
    """A fan-out batch reads the conversation's latest activity, then inserts its rows; a reply
    that commits in between (on PostgreSQL, at READ COMMITTED) must still order the new rows by
    the reply, since the reply's own update of existing rows could not see them."""
    factory = make_session_factory(committing_engine)
    with factory() as s:
        sender = f.user(s)
        people = [f.user(s) for _ in range(20)]
        sent = msg.send_message(
            s,
            sender,
            "Race",
            "T",
            msg.Recipients(users=[p.uid for p in people]),
            discussion=True,
        )
        delivery_id, conv_uid = sent.delivery.id, sent.conversation.uid
        conversation_id = sent.conversation.id
        plan = svc.plan(s, delivery_id, 1000)
        s.commit()
    replied: list[dt.datetime] = []

    def reply_between(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if statement.startswith("INSERT INTO inbox") and not replied:
            # Another request, on its own connection, replies and commits right now.
            with factory() as other:
                author = other.get_one(type(sender), sender.id)
                msg.reply(other, author, conv_uid, "While you were writing")
                other.commit()
                replied.append(
                    other.get_one(type(sent.conversation), conversation_id).public_last_message_at
                )

    with factory() as s:
        event.listen(s.connection(), "after_cursor_execute", reply_between)
        svc.run_batch(s, delivery_id, plan.batch_seqs[0])
        s.commit()
    assert replied
    with factory() as s:
        times = set(
            s.scalars(
                select(Inbox.last_activity_at).where(Inbox.conversation_id == conversation_id)
            )
        )
        assert times == {replied[0]}


def test_an_update_never_moves_a_row_back_in_time(db: Session) -> None:
    """An update evaluated in an older snapshot (one that waited for a row lock) keeps the newer
    time a concurrent reply already wrote."""
    a, b = f.user(db), f.user(db)
    sent = msg.send_message(db, a, "S", "T", msg.Recipients(users=[b.uid]))
    plan = svc.plan(db, sent.delivery.id, 10)
    svc.run_batch(db, sent.delivery.id, plan.batch_seqs[0])
    ahead = utcnow() + dt.timedelta(hours=1)
    db.execute(
        update(Inbox)
        .where(Inbox.conversation_id == sent.conversation.id)
        .values(last_activity_at=ahead)
    )
    msg.reply(db, a, sent.conversation.uid, "R")  # writes the reply's time with `row_activity`
    db.expire_all()
    rows = db.scalars(select(Inbox).where(Inbox.conversation_id == sent.conversation.id)).all()
    assert {r.last_activity_at for r in rows} == {ahead}
