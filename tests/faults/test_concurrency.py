"""Many people replying, reading and triaging the same conversations at once, while real worker
processes deliver a broadcast that reaches them too.

Each person acts from a thread of their own, each action in its own transaction against the real
PostgreSQL, as concurrent requests do. Afterwards: no action failed, the broadcast reached
exactly its recipients, no reply and no counter update was lost, every status and priority is the
last one written, every read and follow-up flag agrees with the order in which the actions
committed, internal replies reached handlers only, and every unread count equals a recount."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from sqlalchemy import func, select

from service import feedback as fb
from service import messaging as msg
from service.models import (
    Conversation,
    Inbox,
    Message,
    MessageType,
    User,
    UserGroup,
)
from tests import factories as f
from tests.faults.conftest import (
    Broadcast,
    Stack,
    delivered_exactly,
    delivery,
    population,
    publish,
    submit,
)

pytestmark = pytest.mark.faults

STAFF = 8  # everyone in every discussion; staff 0 also writes the feedback
HANDLERS = 2  # handler 0 sets statuses, handler 1 priorities; both reply, internally or not
DISCUSSIONS = 3
TICKETS = 2
MIN_ACTIONS = 25  # per person, and on until the broadcast is delivered
MAX_ACTIONS = 400
STATUSES = ("OPEN", "PENDING", "INVALID", "SOLVED")
PRIORITIES = ("NONE", "LOW", "MEDIUM", "HIGH")


@dataclass(frozen=True)
class Action:
    """One committed action: who, what, on which conversations, from start to commit."""

    user: int
    kind: str  # reply, internal, read, unread, followup, unfollowup, status, priority
    convs: tuple[int, ...]
    start: float
    end: float
    value: str = ""


class People:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.actions: list[Action] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def act(
        self, user_id: int, kind: str, convs: tuple[int, ...], fn: Callable, value: str = ""
    ) -> None:  # type: ignore[type-arg]
        start = time.monotonic()
        try:
            with self.stack.session() as s:
                me = s.get_one(User, user_id)
                uids = [s.get_one(Conversation, c).uid for c in convs]
                fn(s, me, uids)
                s.commit()
        except Exception as exc:  # every failure is a finding: report them all
            with self.lock:
                self.errors.append(f"user {user_id} {kind} {convs}: {type(exc).__name__}: {exc}")
            return
        end = time.monotonic()
        with self.lock:
            self.actions.append(Action(user_id, kind, convs, start, end, value))


def test_people_reply_read_and_triage_shared_conversations_while_a_broadcast_runs(
    live: Stack,
) -> None:
    stack = live
    live.worker("bulk-and-interactive", concurrency=2)
    pop = population(stack, 50_000)
    with stack.session() as s:
        staff = [f.user(s, f"conc_staff_{i}") for i in range(STAFF)]
        handlers = [f.user(s, f"conc_handler_{i}") for i in range(HANDLERS)]
        f.feedback_team(s, *handlers)
        group = s.scalar(select(UserGroup).where(UserGroup.uid == pop.group_uid))
        assert group is not None
        f.add_to_group(s, group, *staff)  # the broadcast reaches them too
        staff_ids = [u.id for u in staff]
        handler_ids = [u.id for u in handlers]
        discussions = [
            msg.direct_conversation(
                s, staff[0], staff_ids, f"Discussion {i}", "Hello", message_type=MessageType.PRIVATE
            ).id
            for i in range(DISCUSSIONS)
        ]
        tickets = [fb.send_feedback(s, staff[0], f"Ticket {i}", "Help").id for i in range(TICKETS)]
        s.commit()
    members = frozenset(pop.member_ids | set(staff_ids))
    b = submit(stack, pop, "Broadcast during the rush")
    b = Broadcast(b.conversation_id, b.delivery_id, members | {pop.sender_id})
    initial = {c: 1 for c in (*discussions, *tickets)}

    people = People(stack)
    delivered = threading.Event()

    def run(user_id: int, step: Callable[[random.Random], None]) -> None:
        rng = random.Random(user_id)
        n = 0
        while n < MAX_ACTIONS and (n < MIN_ACTIONS or not delivered.is_set()):
            step(rng)
            n += 1

    def staff_step(user_id: int) -> Callable[[random.Random], None]:
        mine = list(discussions) + (list(tickets) if user_id == staff_ids[0] else [])

        def step(rng: random.Random) -> None:
            kind = rng.choice(("reply", "read", "unread", "followup", "unfollowup", "read_many"))
            conv = rng.choice(mine)
            if kind == "reply":
                people.act(user_id, kind, (conv,), lambda s, me, u: msg.reply(s, me, u[0], "r"))
            elif kind in ("read", "unread"):
                people.act(
                    user_id, kind, (conv,), lambda s, me, u: msg.mark_read(s, me, u, kind == "read")
                )
            elif kind in ("followup", "unfollowup"):
                on = kind == "followup"
                people.act(user_id, kind, (conv,), lambda s, me, u: msg.set_followup(s, me, u, on))
            else:  # several at once, in any order, as the inbox's bulk action sends them
                convs = tuple(rng.sample(mine, len(mine)))
                people.act(user_id, "read", convs, lambda s, me, u: msg.mark_read(s, me, u, True))

        return step

    def handler_step(index: int) -> Callable[[random.Random], None]:
        user_id = handler_ids[index]
        field, values = ("status", STATUSES) if index == 0 else ("priority", PRIORITIES)
        setter = fb.set_status if index == 0 else fb.set_priority

        def step(rng: random.Random) -> None:
            kind = rng.choice((field, field, "reply", "internal", "read", "unread"))
            conv = rng.choice(tickets)
            if kind == field:
                value = rng.choice(values)
                people.act(
                    user_id, kind, (conv,), lambda s, me, u: setter(s, me, u[0], value), value
                )
            elif kind in ("reply", "internal"):
                internal = kind == "internal"
                people.act(
                    user_id,
                    kind,
                    (conv,),
                    lambda s, me, u: msg.reply(s, me, u[0], "h", internal=internal),
                )
            else:
                people.act(
                    user_id, kind, (conv,), lambda s, me, u: msg.mark_read(s, me, u, kind == "read")
                )

        return step

    threads = [threading.Thread(target=run, args=(u, staff_step(u))) for u in staff_ids]
    threads += [
        threading.Thread(target=run, args=(h, handler_step(i))) for i, h in enumerate(handler_ids)
    ]
    publish(stack, b)
    t0 = time.monotonic()
    for t in threads:
        t.start()
    while delivery(stack, b.delivery_id).state not in ("DELIVERED", "FAILED"):
        assert time.monotonic() - t0 < 180, "the broadcast did not finish"
        time.sleep(0.05)
    delivered_at = time.monotonic()
    delivered.set()
    for t in threads:
        t.join(120)
        assert not t.is_alive()
    # Each handler's last word on each ticket, so the final values are known.
    for conv in tickets:
        people.act(
            handler_ids[0],
            "status",
            (conv,),
            lambda s, me, u: fb.set_status(s, me, u[0], "SOLVED"),
            "SOLVED",
        )
        people.act(
            handler_ids[1],
            "priority",
            (conv,),
            lambda s, me, u: fb.set_priority(s, me, u[0], "HIGH"),
            "HIGH",
        )
    overlapped = sum(1 for a in people.actions if a.start < delivered_at)
    print(
        f"\n[measure] {len(people.actions)} actions by {len(threads)} people, {overlapped} of them "
        f"while the 50,000-recipient broadcast was delivering ({delivered_at - t0:.1f}s)"
    )
    assert not people.errors, people.errors[:10]
    assert overlapped >= (STAFF + HANDLERS) * MIN_ACTIONS // 2, (
        "too little overlap to prove anything"
    )

    delivered_exactly(stack, b)
    with stack.session() as s:
        _no_reply_or_counter_lost(s, people.actions, initial)
        for conv in tickets:
            c = s.get_one(Conversation, conv)
            assert (c.status, c.priority) == ("SOLVED", "HIGH")
        _flags_follow_commit_order(s, people.actions, staff_ids, handler_ids, discussions, tickets)
        _internal_replies_for_handlers_only(s, staff_ids, tickets)
        for user_id in (*staff_ids, *handler_ids):
            _unread_equals_recount(s, user_id, handler=user_id in handler_ids)


def _no_reply_or_counter_lost(s, actions: list[Action], initial: dict[int, int]) -> None:  # type: ignore[no-untyped-def]
    for conv, start in initial.items():
        replies = [a for a in actions if a.kind in ("reply", "internal") and a.convs == (conv,)]
        internal = sum(1 for a in replies if a.kind == "internal")
        rows = s.execute(
            select(Message.id, Message.sender_id, Message.internal)
            .where(Message.conversation_id == conv)
            .order_by(Message.id)
        ).all()
        public = [r for r in rows if not r.internal]
        c = s.get_one(Conversation, conv)
        assert len(rows) == start + len(replies), f"conversation {conv}: a reply was lost"
        assert (c.message_count, c.public_message_count) == (len(rows), len(public)), conv
        assert sum(1 for r in rows if r.internal) == internal
        assert c.last_sender_id == rows[-1].sender_id
        assert c.public_last_sender_id == public[-1].sender_id


def _flags_follow_commit_order(  # type: ignore[no-untyped-def]
    s, actions, staff_ids, handler_ids, discussions, tickets
) -> None:
    """Each person's read flag on each conversation is decided by their last own action and the
    others' replies: a reply that started after that action committed leaves it unread; when every
    such reply committed before that action started, the action's own value stands; overlapping
    ones may go either way. The follow-up flag is the person's own to set: the last one written."""
    checked = 0
    for conv in (*discussions, *tickets):
        people = list(staff_ids) if conv in discussions else [staff_ids[0], *handler_ids]
        for user in people:
            handler = user in handler_ids
            own = [
                a
                for a in actions
                if a.user == user
                and conv in a.convs
                and a.kind in ("read", "unread", "reply", "internal")
            ]
            others = [
                a
                for a in actions
                if a.user != user
                and a.convs == (conv,)
                # internal replies re-mark handlers only
                and (a.kind == "reply" or (a.kind == "internal" and handler))
            ]
            row = s.get(Inbox, (user, conv))
            assert row is not None, (user, conv)
            if own:
                last = max(own, key=lambda a: a.end)
                own_read = last.kind != "unread"
                if last.kind == "unread" or any(o.start > last.end for o in others):
                    assert row.read is False, (user, conv, last)
                    checked += 1
                elif all(o.end < last.start for o in others):
                    assert row.read is own_read, (user, conv, last)
                    checked += 1
            follow = [
                a for a in actions if a.user == user and conv in a.convs and "followup" in a.kind
            ]
            if follow:
                assert row.followup is (max(follow, key=lambda a: a.end).kind == "followup")
    assert checked > 0


def _internal_replies_for_handlers_only(s, staff_ids, tickets) -> None:  # type: ignore[no-untyped-def]
    writer = s.get_one(User, staff_ids[0])
    for conv in tickets:
        c = s.get_one(Conversation, conv)
        seen = msg.messages_of(s, writer, [c])[conv]
        assert seen and not any(m.internal for m in seen)
        assert len(seen) == c.public_message_count
    for user_id in staff_ids[1:]:  # not participants: the tickets do not exist for them
        assert (
            s.scalar(
                select(func.count())
                .select_from(Inbox)
                .where(Inbox.user_id == user_id, Inbox.conversation_id.in_(tickets))
            )
            == 0
        )


def _unread_equals_recount(s, user_id: int, handler: bool) -> None:  # type: ignore[no-untyped-def]
    """The service's three ways of counting (the badge, the folders, the unread filter's total)
    against the rows themselves: unread, not removed, handler rows only for handlers."""
    user = s.get_one(User, user_id)
    rows = select(func.count()).select_from(Inbox)
    rows = rows.where(Inbox.user_id == user_id, Inbox.read.is_(False), Inbox.removed.is_(False))
    if not handler:
        rows = rows.where(Inbox.as_handler.is_(False))
    recount = s.scalar(rows)
    counts = msg.unread_counts(s, user)
    listed = msg.list_conversations(s, user, filters=msg.ListFilters(read=False)).total
    assert (msg.unread_count(s, user), counts.total, listed) == (recount,) * 3, user_id
    assert counts.handler is handler
