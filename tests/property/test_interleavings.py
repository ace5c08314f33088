"""Property-based: random interleavings of send (fanned out batch by batch, batches run again),
feedback, reply (internal or not), read, unread, remove, status changes and feedback-group
membership changes, on a real PostgreSQL session (rolled back after each example).

After every step the service is checked against a small model and against recounts from its
own rows: every user's unread count equals a recount (and the model's), every inbox row has
the read/removed state the operations so far imply (no lost update) and the latest activity its
reader may see (inboxes list newest activity first), removed conversations are absent from
inboxes, internal replies are seen and counted by feedback handlers only, and the last status
written is the status."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Engine, delete, func, insert, select
from sqlalchemy.orm import Session

from service import delivery as svc
from service import feedback as fb
from service import messaging as msg
from service.errors import DomainError, Forbidden, InvalidInput, NotFound
from service.models import Conversation, DeliveryBatch, Inbox, User, user_group_members
from service.system_settings import set_feedback_group
from tests import factories as f

USERS = 6  # u0..u3 never handle feedback, u4 always does, u5 joins and leaves the group
ALWAYS_HANDLER, SOMETIMES_HANDLER = 4, 5
STATUSES = ("OPEN", "PENDING", "INVALID", "SOLVED")


@dataclass
class Row:
    read: bool
    removed: bool = False
    as_handler: bool = False


@dataclass
class Conv:
    id: int
    uid: str
    ticket: bool
    creator: int  # an index into users
    messages: list[bool] = field(default_factory=list)  # internal?
    status: str = "NONE"
    delivery_id: int | None = None
    batches: list[int] = field(default_factory=list)
    recipients: frozenset[int] = frozenset()


class Interleavings(RuleBasedStateMachine):
    engine: Engine  # set by the test

    def __init__(self) -> None:
        super().__init__()
        self.conn = self.engine.connect()
        self.trans = self.conn.begin()
        self.db = Session(bind=self.conn, join_transaction_mode="create_savepoint")
        self.users: list[User] = []
        self.handlers: set[int] = set()
        self.group_id = 0
        self.convs: list[Conv] = []
        self.rows: dict[tuple[int, int], Row] = {}  # (user index, conv index)
        self.last: int | None = None  # the conversation the last step changed

    def teardown(self) -> None:
        self.db.close()
        self.trans.rollback()
        self.conn.close()

    @initialize()
    def world(self) -> None:
        self.users = [f.user(self.db) for _ in range(USERS)]
        group = f.user_group(self.db, members=(self.users[ALWAYS_HANDLER],))
        set_feedback_group(self.db, group)
        self.db.flush()
        self.group_id = group.id
        self.handlers = {ALWAYS_HANDLER}

    # -----------------------------------------------------------------------------------------
    # The model's rules of visibility

    def visible(self, u: int, c: int) -> bool:
        conv = self.convs[c]
        if conv.ticket:
            return u in self.handlers or conv.creator == u
        row = self.rows.get((u, c))
        return row is not None and not row.as_handler

    def own_row(self, u: int, c: int) -> Row:
        conv = self.convs[c]
        as_handler = conv.ticket and u in self.handlers and conv.creator != u
        return self.rows.setdefault((u, c), Row(read=True, as_handler=as_handler))

    def pick_conv(self, data: st.DataObject) -> int:
        return data.draw(st.integers(0, len(self.convs) - 1), label="conversation")

    def pick_user(self, data: st.DataObject) -> int:
        return data.draw(st.integers(0, USERS - 1), label="user")

    # -----------------------------------------------------------------------------------------
    # Steps

    @rule(data=st.data())
    def send(self, data: st.DataObject) -> None:
        sender = self.pick_user(data)
        others = [i for i in range(USERS) if i != sender]
        to = data.draw(st.sets(st.sampled_from(others), min_size=1), label="recipients")
        sent = msg.send_message(
            self.db,
            self.users[sender],
            "Subject",
            "Text",
            msg.Recipients(users=[self.users[i].uid for i in sorted(to)]),
        )
        assert sent.delivery is not None and not sent.conversation.is_announcement
        planned = svc.plan(self.db, sent.delivery.id, batch_size=2)
        self.convs.append(
            Conv(
                id=sent.conversation.id,
                uid=sent.conversation.uid,
                ticket=False,
                creator=sender,
                messages=[False],
                delivery_id=sent.delivery.id,
                batches=list(planned.batch_seqs),
                recipients=frozenset(to),
            )
        )
        self.rows[(sender, len(self.convs) - 1)] = Row(read=True)
        self.last = len(self.convs) - 1

    @precondition(lambda self: any(c.batches for c in self.convs))
    @rule(data=st.data(), again=st.booleans())
    def run_batch(self, data: st.DataObject, again: bool) -> None:
        """One batch of a fan-out; `again` leaves it listed, to be run a second time later."""
        c = data.draw(st.sampled_from([i for i, x in enumerate(self.convs) if x.batches]))
        conv = self.convs[c]
        seq = data.draw(st.sampled_from(conv.batches), label="batch")
        assert conv.delivery_id is not None
        lo, hi = self.db.execute(
            select(DeliveryBatch.lo_user_id, DeliveryBatch.hi_user_id).where(
                DeliveryBatch.delivery_id == conv.delivery_id, DeliveryBatch.seq == seq
            )
        ).one()
        first = svc.begin_attempt(self.db, conv.delivery_id, seq, max_attempts=10)
        result = svc.run_batch(self.db, conv.delivery_id, seq)
        assert result.ran == first
        if result.ran:
            reached = {i for i in conv.recipients if lo <= self.users[i].id <= hi}
            assert result.rows == len(reached)
            for i in reached:
                self.rows.setdefault((i, c), Row(read=False))
        if not again or not result.ran:
            conv.batches.remove(seq)
        self.last = c

    @rule(data=st.data())
    def send_feedback(self, data: st.DataObject) -> None:
        sender = self.pick_user(data)
        conv = fb.send_feedback(self.db, self.users[sender], "Feedback", "Text")
        self.convs.append(
            Conv(conv.id, conv.uid, ticket=True, creator=sender, messages=[False], status="OPEN")
        )
        c = len(self.convs) - 1
        self.rows[(sender, c)] = Row(read=True)
        for h in self.handlers - {sender}:
            self.rows[(h, c)] = Row(read=False, as_handler=True)
        self.last = c

    @precondition(lambda self: self.convs)
    @rule(data=st.data(), internal=st.booleans())
    def reply(self, data: st.DataObject, internal: bool) -> None:
        u, c = self.pick_user(data), self.pick_conv(data)
        conv = self.convs[c]
        handler = u in self.handlers
        expected: type[DomainError] | None = None
        if not self.visible(u, c):
            expected = NotFound
        elif internal and not (conv.ticket and handler):
            expected = Forbidden if conv.ticket else InvalidInput
        try:
            replied = msg.reply(self.db, self.users[u], conv.uid, "Reply", internal=internal)
        except DomainError as exc:
            assert type(exc) is expected, exc
            return
        assert expected is None, f"expected {expected}"
        assert replied.delivery is None and replied.conversation.id == conv.id
        conv.messages.append(internal)
        own = self.own_row(u, c)
        own.read, own.removed = True, False
        if not conv.ticket:
            for (ru, rc), row in self.rows.items():
                if rc == c and ru != u:
                    row.read, row.removed = False, False
        else:
            # Handlers' rows; a handler who sent it has only the sender's row, below.
            for h in self.handlers - {u, conv.creator}:
                row = self.rows.setdefault((h, c), Row(read=False, as_handler=True))
                row.read, row.removed = False, False
            if not internal and conv.creator != u:
                row = self.rows[(conv.creator, c)]
                row.read, row.removed = False, False
        self.last = c

    def _flags(self, data: st.DataObject, op: str) -> None:
        u = self.pick_user(data)
        picked = data.draw(st.sets(st.integers(0, len(self.convs) - 1), min_size=1), label="ids")
        uids = [self.convs[c].uid for c in sorted(picked)]
        user = self.users[u]
        if op == "remove":
            done = msg.remove_from_inbox(self.db, user, uids)
        else:
            done = msg.mark_read(self.db, user, uids, read=op == "read")
        visible = [c for c in sorted(picked) if self.visible(u, c)]
        assert sorted(done) == sorted(self.convs[c].uid for c in visible)
        for c in visible:
            row = self.own_row(u, c)
            if op == "remove":
                row.removed, row.read = True, True
            else:
                row.read = op == "read"
        self.last = visible[-1] if visible else self.last

    @precondition(lambda self: self.convs)
    @rule(data=st.data(), op=st.sampled_from(["read", "unread", "remove"]))
    def flags(self, data: st.DataObject, op: str) -> None:
        self._flags(data, op)

    @precondition(lambda self: self.convs)
    @rule(data=st.data(), status=st.sampled_from(STATUSES))
    def set_status(self, data: st.DataObject, status: str) -> None:
        u, c = self.pick_user(data), self.pick_conv(data)
        conv = self.convs[c]
        expected: type[DomainError] | None = None
        if not self.visible(u, c):
            expected = NotFound
        elif not conv.ticket:
            expected = InvalidInput
        elif u not in self.handlers:
            expected = Forbidden
        try:
            fb.set_status(self.db, self.users[u], conv.uid, status)
        except DomainError as exc:
            assert type(exc) is expected, exc
            return
        assert expected is None, f"expected {expected}"
        conv.status = status
        self.last = c

    @rule()
    def toggle_membership(self) -> None:
        """u5 joins the feedback group, or leaves it."""
        uid = self.users[SOMETIMES_HANDLER].id
        if SOMETIMES_HANDLER in self.handlers:
            self.db.execute(
                delete(user_group_members).where(
                    user_group_members.c.group_id == self.group_id,
                    user_group_members.c.user_id == uid,
                )
            )
            self.handlers.discard(SOMETIMES_HANDLER)
        else:
            self.db.execute(insert(user_group_members).values(group_id=self.group_id, user_id=uid))
            self.handlers.add(SOMETIMES_HANDLER)
        self.db.flush()

    # -----------------------------------------------------------------------------------------
    # Invariants, after every step

    def expected_unread(self, u: int, tickets_only: bool = False) -> int:
        return sum(
            1
            for (ru, c), row in self.rows.items()
            if ru == u
            and not row.read
            and not row.removed
            and (not row.as_handler or u in self.handlers)
            and (self.convs[c].ticket or not tickets_only)
        )

    @invariant()
    def inbox_rows_are_what_the_steps_imply(self) -> None:
        if not self.users:
            return
        index = {x.id: i for i, x in enumerate(self.users)}
        convs = {x.id: i for i, x in enumerate(self.convs)}
        found = {
            (index[r.user_id], convs[r.conversation_id]): Row(r.read, r.removed, r.as_handler)
            for r in self.db.execute(
                select(Inbox).where(Inbox.conversation_id.in_(list(convs)))
            ).scalars()
        }
        assert found == self.rows

    @invariant()
    def unread_counts_equal_recounts(self) -> None:
        for u, user in enumerate(self.users):
            handler = u in self.handlers
            recount = self.db.scalar(
                select(func.count())
                .select_from(Inbox)
                .where(
                    Inbox.user_id == user.id,
                    Inbox.read.is_(False),
                    Inbox.removed.is_(False),
                    Inbox.as_handler.is_(False) | handler,
                )
            )
            assert msg.unread_count(self.db, user) == recount == self.expected_unread(u)
            counts = msg.unread_counts(self.db, user)
            assert counts.total == recount and counts.handler == handler
            assert counts.feedback == self.expected_unread(u, tickets_only=True)

    @invariant()
    def inboxes_list_what_is_visible_and_not_removed(self) -> None:
        for u, user in enumerate(self.users):
            listed = msg.list_conversations(self.db, user, page_size=500)
            expected = set()
            for c, conv in enumerate(self.convs):
                row = self.rows.get((u, c))
                if row is None:
                    # Handlers see every feedback message, as read, before they have a row.
                    if conv.ticket and u in self.handlers:
                        expected.add(conv.id)
                elif not row.removed and self.visible(u, c):
                    expected.add(conv.id)
            assert {s.conversation.id for s in listed.items} == expected
            assert listed.total == len(expected)
            for s in listed.items:
                c = next(i for i, x in enumerate(self.convs) if x.id == s.conversation.id)
                row = self.rows.get((u, c))
                assert s.read == (True if row is None else row.read)

    @invariant()
    def inbox_rows_carry_the_activity_their_reader_may_see(self) -> None:
        """A handler's row moves with internal replies; every other row with public ones only,
        so the order of a feedback sender's inbox says nothing about internal replies."""
        rows = self.db.execute(
            select(
                Inbox.last_activity_at,
                Inbox.as_handler,
                Conversation.last_message_at,
                Conversation.public_last_message_at,
                Inbox.message_type,
                Conversation.message_type,
            )
            .join(Conversation, Conversation.id == Inbox.conversation_id)
            .where(Conversation.id.in_([c.id for c in self.convs]))
        ).all()
        for at, as_handler, last, public, row_type, conv_type in rows:
            assert at == (last if as_handler else public)
            assert row_type == conv_type

    @invariant()
    def inboxes_list_newest_activity_first(self) -> None:
        times = {
            cid: (last, public)
            for cid, last, public in self.db.execute(
                select(
                    Conversation.id,
                    Conversation.last_message_at,
                    Conversation.public_last_message_at,
                ).where(Conversation.id.in_([c.id for c in self.convs]))
            )
        }
        convs = {x.id: i for i, x in enumerate(self.convs)}
        for u, user in enumerate(self.users):
            listed = [s.conversation.id for s in msg.list_conversations(self.db, user).items]

            def key(cid: int, u: int = u) -> tuple[object, int]:
                row = self.rows.get((u, convs[cid]))
                # Handlers order every feedback message by its activity internal replies
                # included (their own feedback too); everyone else by its public activity.
                handler_view = row is None or (self.convs[convs[cid]].ticket and u in self.handlers)
                return (times[cid][0] if handler_view else times[cid][1], cid)

            assert listed == sorted(listed, key=key, reverse=True)

    @invariant()
    def internal_replies_reach_handlers_only(self) -> None:
        if self.last is None:
            return
        conv = self.convs[self.last]
        for u, user in enumerate(self.users):
            if not self.visible(u, self.last):
                continue
            view = msg.view_conversation(self.db, user, conv.uid)
            internal = [m.internal for m in view.messages]
            if u in self.handlers:
                assert internal == conv.messages
                assert view.summary.message_count == len(conv.messages)
            else:
                assert internal == [i for i in conv.messages if not i]
                assert view.summary.message_count == internal.count(False)
            assert view.summary.conversation.status == conv.status

    @invariant()
    def last_status_written_wins(self) -> None:
        statuses = dict(
            self.db.execute(
                select(Conversation.id, Conversation.status).where(
                    Conversation.id.in_([c.id for c in self.convs])
                )
            ).all()
        )
        assert statuses == {c.id: c.status for c in self.convs}


@pytest.mark.timeout(600)
def test_random_interleavings_keep_counts_rows_and_visibility_right(pg_engine: Engine) -> None:
    Interleavings.engine = pg_engine
    run_state_machine_as_test(
        Interleavings,
        settings=settings(
            max_examples=50,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            database=None,
        ),
    )
