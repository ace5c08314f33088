"""Deliveries: the database's record of unfinished fan-out, its batches, claims and progress.

A delivery moves QUEUED -> DELIVERING -> DELIVERED | FAILED. Planning resolves the recipients once
in SQL to count them and cut the user-id space into batches of at most `batch_size` recipients
(and at least batch_size minus one bucket, see BUCKETS_PER_BATCH, but the last); each
batch then writes (or, for replies, re-marks) its slice in one transaction. Every step is a
conditional update, so a step run twice — broker redelivery, the sweep, two workers at once —
changes nothing the second time. Functions here never commit: the task owns the transaction.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Select, and_, func, insert, literal, select, update
from sqlalchemy.orm import Session

from service import recipients
from service.db import UTCDateTime, insert_ignore, utcnow
from service.models import (
    BatchState,
    Conversation,
    Delivery,
    DeliveryBatch,
    DeliveryKind,
    DeliveryState,
    Inbox,
    Message,
    MessageType,
    inbox_row,
    row_activity,
)

MAX_USER_ID = 2**31 - 1
# The plan counts recipients in buckets of batch_size / BUCKETS_PER_BATCH consecutive user ids;
# a batch is then within one bucket of batch_size.
BUCKETS_PER_BATCH = 16


@dataclass(frozen=True)
class PlanResult:
    planned: bool  # False when another run already planned it (nothing to do)
    batch_seqs: list[int]
    total: int


@dataclass(frozen=True)
class BatchResult:
    ran: bool  # False when the batch was already done (a duplicate run)
    rows: int
    finished_state: str | None  # the delivery's final state if this batch completed it


def _recipient_ids(
    session: Session, delivery: Delivery, user_range: tuple[int, int] | None
) -> Select[tuple[int]]:
    if delivery.kind == DeliveryKind.SEND.value:
        return recipients.recipients(
            delivery.id, delivery.include_descendants, delivery.actor_id, user_range
        )
    # REPLY: every participant of the conversation except the one who replied.
    cond = [Inbox.conversation_id == delivery.conversation_id]
    if delivery.actor_id is not None:
        cond.append(Inbox.user_id != delivery.actor_id)
    if user_range is not None:
        cond.append(Inbox.user_id.between(*user_range))
    return select(Inbox.user_id.label("user_id")).where(*cond)


def plan(session: Session, delivery_id: int, batch_size: int) -> PlanResult:
    """Count the recipients and create the batches.

    Idempotent: only a QUEUED delivery is planned; a second run returns planned=False.
    """
    now = utcnow()
    claimed = session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.state == DeliveryState.QUEUED.value)
        .values(state=DeliveryState.DELIVERING.value, touched_at=now)
    ).rowcount
    if claimed != 1:
        return PlanResult(planned=False, batch_seqs=[], total=0)
    delivery = session.get_one(Delivery, delivery_id, populate_existing=True)
    # SQLite resolves a whole broadcast faster starting from each user's units (as a batch
    # does) than from the named subtrees' units; PostgreSQL the other way round.
    whole = (0, MAX_USER_ID) if session.get_bind().dialect.name == "sqlite" else None
    ids = _recipient_ids(session, delivery, whole).subquery("r")
    # Recipients counted per bucket of `width` consecutive user ids: a hash aggregate into at
    # most (id space / width) small groups, where numbering every recipient in order (a window
    # over all of them) sorted the whole set. Only the buckets come back to Python.
    width = max(1, batch_size // BUCKETS_PER_BATCH)
    bucket = (ids.c.user_id // width).label("bucket")
    counts = session.execute(
        select(bucket, func.min(ids.c.user_id), func.count()).group_by(bucket).order_by(bucket)
    ).all()
    # Consecutive buckets make a batch until one more would pass batch_size (a bucket holds at
    # most `width` <= batch_size recipients, so no batch does).
    starts: list[int] = []
    total = filled = 0
    for _, first_id, n in counts:
        if not starts or filled + n > batch_size:
            starts.append(int(first_id))
            filled = 0
        filled += int(n)
        total += int(n)
    batches = [
        {
            "delivery_id": delivery_id,
            "seq": i,
            "lo_user_id": lo,
            "hi_user_id": starts[i + 1] - 1 if i + 1 < len(starts) else MAX_USER_ID,
            "state": BatchState.PENDING.value,
            "touched_at": now,
        }
        for i, lo in enumerate(starts)
    ]
    if batches:
        session.execute(insert(DeliveryBatch), batches)
    delivery.total = total
    delivery.batches_total = len(batches)
    delivery.batches_pending = len(batches)
    session.flush()
    if not batches:
        _finish(session, delivery, now)
    return PlanResult(planned=True, batch_seqs=[b["seq"] for b in batches], total=total)


def begin_attempt(session: Session, delivery_id: int, seq: int, max_attempts: int) -> bool:
    """Count an attempt at a batch (in its own short transaction, so crashes are counted too).

    Returns False when the batch is no longer pending or has used up its attempts — in which
    case it is marked FAILED here and must not run.
    """
    attempts = session.execute(
        update(DeliveryBatch)
        .where(
            DeliveryBatch.delivery_id == delivery_id,
            DeliveryBatch.seq == seq,
            DeliveryBatch.state == BatchState.PENDING.value,
        )
        .values(attempts=DeliveryBatch.attempts + 1, touched_at=utcnow())
        .returning(DeliveryBatch.attempts)
    ).scalar_one_or_none()
    if attempts is None:
        return False
    if attempts > max_attempts:
        fail_batch(session, delivery_id, seq)
        return False
    return True


def run_batch(session: Session, delivery_id: int, seq: int) -> BatchResult:
    """Write one batch. Safe to run twice or concurrently: the claim lets exactly one run count."""
    now = utcnow()
    batch = session.execute(
        update(DeliveryBatch)
        .where(
            DeliveryBatch.delivery_id == delivery_id,
            DeliveryBatch.seq == seq,
            DeliveryBatch.state == BatchState.PENDING.value,
        )
        .values(state=BatchState.DONE.value, touched_at=now)
        .returning(DeliveryBatch.lo_user_id, DeliveryBatch.hi_user_id)
    ).one_or_none()
    if batch is None:
        return BatchResult(ran=False, rows=0, finished_state=None)
    delivery = session.get_one(Delivery, delivery_id)
    user_range = (batch.lo_user_id, batch.hi_user_id)
    ids = _recipient_ids(session, delivery, user_range).subquery("r")
    if delivery.kind == DeliveryKind.SEND.value:
        cid = delivery.conversation_id
        kind, at = session.execute(
            select(Conversation.message_type, Conversation.public_last_message_at).where(
                Conversation.id == cid
            )
        ).one()
        stmt = insert_ignore(session, Inbox).from_select(
            ["user_id", "conversation_id", "last_activity_at", "message_type"],
            select(ids.c.user_id, literal(cid), literal(at, UTCDateTime()), literal(kind)).where(
                literal(True)
            ),
        )
        rows = session.execute(stmt).rowcount
        # This takes the conversation's row lock until commit (a reply's own update of the
        # conversation now waits for this batch, and then sees its rows) and answers with the
        # newest committed activity: a reply that committed after the rows were read is caught
        # up here, so no new row keeps an older time than the conversation's.
        latest = session.execute(
            update(Conversation)
            .where(Conversation.id == cid)
            .values(participant_count=Conversation.participant_count + rows)
            .returning(Conversation.public_last_message_at)
        ).scalar_one()
        if latest != at and rows:
            session.execute(
                update(Inbox)
                .where(
                    Inbox.conversation_id == cid,
                    Inbox.user_id.between(*user_range),
                    Inbox.last_activity_at < latest,
                )
                .values(last_activity_at=latest)
            )
    else:
        # Everyone in the slice now has an unread reply (a removed copy comes back), and the
        # conversation's latest activity moves it up their inbox.
        rows = session.scalar(select(func.count()).select_from(ids)) or 0
        session.execute(
            update(Inbox)
            .where(
                Inbox.conversation_id == delivery.conversation_id,
                Inbox.user_id.between(*user_range),
                Inbox.user_id != (delivery.actor_id or 0),
            )
            .values(read=False, removed=False, last_activity_at=row_activity())
        )
    session.execute(
        update(DeliveryBatch)
        .where(DeliveryBatch.delivery_id == delivery_id, DeliveryBatch.seq == seq)
        .values(rows=rows)
    )
    state = _count_batch(session, delivery_id, delivered=rows, failed=0, now=now)
    return BatchResult(ran=True, rows=rows, finished_state=state)


def fail_batch(session: Session, delivery_id: int, seq: int) -> None:
    """Give up on a batch: count the recipients it leaves without a row. Idempotent."""
    now = utcnow()
    batch = session.execute(
        update(DeliveryBatch)
        .where(
            DeliveryBatch.delivery_id == delivery_id,
            DeliveryBatch.seq == seq,
            DeliveryBatch.state == BatchState.PENDING.value,
        )
        .values(state=BatchState.FAILED.value, touched_at=now)
        .returning(DeliveryBatch.lo_user_id, DeliveryBatch.hi_user_id)
    ).one_or_none()
    if batch is None:
        return
    delivery = session.get_one(Delivery, delivery_id)
    ids = _recipient_ids(session, delivery, (batch.lo_user_id, batch.hi_user_id)).subquery("r")
    if delivery.kind == DeliveryKind.SEND.value:
        have = select(Inbox.user_id).where(Inbox.conversation_id == delivery.conversation_id)
        missing = session.scalar(
            select(func.count()).select_from(ids).where(ids.c.user_id.not_in(have))
        )
    else:
        missing = session.scalar(select(func.count()).select_from(ids))
    _count_batch(session, delivery_id, delivered=0, failed=int(missing or 0), now=now)


def _count_batch(
    session: Session, delivery_id: int, delivered: int, failed: int, now: dt.datetime
) -> str | None:
    # The row lock on the delivery serialises concurrent batches, so exactly one sees zero left.
    left = session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id)
        .values(
            delivered=Delivery.delivered + delivered,
            failed=Delivery.failed + failed,
            batches_pending=Delivery.batches_pending - 1,
            touched_at=now,
        )
        .returning(Delivery.batches_pending)
    ).scalar_one()
    if left > 0:
        return None
    delivery = session.get_one(Delivery, delivery_id, populate_existing=True)
    return _finish(session, delivery, now)


def _finish(session: Session, delivery: Delivery, now: dt.datetime) -> str | None:
    state = DeliveryState.FAILED if delivery.failed > 0 else DeliveryState.DELIVERED
    done = session.execute(
        update(Delivery)
        .where(Delivery.id == delivery.id, Delivery.state == DeliveryState.DELIVERING.value)
        .values(state=state.value, finished_at=now)
    ).rowcount
    if done != 1:
        return None
    session.refresh(delivery)
    if state is DeliveryState.FAILED:
        _notify_failure(session, delivery, now)
    return state.value


def _notify_failure(session: Session, delivery: Delivery, now: dt.datetime) -> None:
    """Tell the sender, by a SYSTEM message in their inbox, that some recipients were missed."""
    if delivery.actor_id is None:
        return
    original = session.get_one(Conversation, delivery.conversation_id)
    what = "message" if delivery.kind == DeliveryKind.SEND.value else "reply"
    text = (
        f'Delivery of your {what} "{original.subject}" failed for {delivery.failed} of '
        f"{delivery.total} recipients after repeated attempts. The other recipients received it. "
        f"Conversation: {original.uid}."
    )
    conv = Conversation(
        subject=f"Delivery failed: {original.subject}"[:255],
        message_type=MessageType.SYSTEM.value,
        created_at=now,
        last_message_at=now,
        public_last_message_at=now,
        message_count=1,
        public_message_count=1,
        participant_count=1,
    )
    session.add(conv)
    session.flush()
    session.add(Message(conversation_id=conv.id, sender_id=None, text=text, created_at=now))
    session.add(inbox_row(conv, delivery.actor_id, read=False))
    session.flush()


@dataclass(frozen=True)
class Republish:
    task: str
    args: tuple[int, ...]


def sweep(
    session: Session, stale_after: float, now: dt.datetime | None = None, limit: int = 100
) -> list[Republish]:
    """Find unfinished deliveries that made no progress for `stale_after` seconds and say which
    tasks to publish again (the broker may have lost them). Touches what it returns, so the next
    sweep waits again. Safe alongside running work: every task it republishes is idempotent."""
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=stale_after)
    stale = session.scalars(
        select(Delivery)
        .where(
            Delivery.state.in_([DeliveryState.QUEUED.value, DeliveryState.DELIVERING.value]),
            Delivery.touched_at < cutoff,
        )
        .order_by(Delivery.touched_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    out: list[Republish] = []
    for d in stale:
        if d.state == DeliveryState.QUEUED.value:
            out.append(Republish("delivery.plan", (d.id,)))
        else:
            seqs = session.scalars(
                select(DeliveryBatch.seq)
                .where(
                    DeliveryBatch.delivery_id == d.id,
                    DeliveryBatch.state == BatchState.PENDING.value,
                )
                .order_by(DeliveryBatch.seq)
            ).all()
            out.extend(Republish("delivery.fan_out_batch", (d.id, s)) for s in seqs)
        d.touched_at = now
    session.flush()
    return out


def progress(delivery: Delivery) -> dict[str, object]:
    """The public view of a delivery: state, total (None until counted), delivered, failed."""
    return {
        "id": delivery.uid,
        "state": delivery.state,
        "total": delivery.total,
        "delivered": delivery.delivered,
        "failed": delivery.failed,
    }


def pending_batches(session: Session, delivery_id: int) -> list[int]:
    return list(
        session.scalars(
            select(DeliveryBatch.seq)
            .where(
                and_(
                    DeliveryBatch.delivery_id == delivery_id,
                    DeliveryBatch.state == BatchState.PENDING.value,
                )
            )
            .order_by(DeliveryBatch.seq)
        )
    )
