"""Sending, fan-out, replies and read state against real PostgreSQL and SQLite sessions."""

from __future__ import annotations

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from service import delivery as svc
from service import messaging as msg
from service.errors import Conflict, Forbidden, InvalidInput, NotFound, UnknownReference
from service.models import Conversation, Delivery, Inbox, OrgUnit, User
from tests import factories as f
from tests.helpers import deliver


def inbox_users(db: Session, conv: Conversation) -> set[int]:
    return set(db.scalars(select(Inbox.user_id).where(Inbox.conversation_id == conv.id)))


@pytest.fixture
def tree(db: Session) -> dict[str, OrgUnit]:
    country = f.org_unit(db, "Country")
    district = f.org_unit(db, "District", country)
    other_district = f.org_unit(db, "Other district", country)
    chiefdom = f.org_unit(db, "Chiefdom", district)
    facility = f.org_unit(db, "Facility", chiefdom)
    return {
        "country": country,
        "district": district,
        "other": other_district,
        "chiefdom": chiefdom,
        "facility": facility,
    }


def test_send_to_org_unit_selected_reaches_only_its_own_users(db: Session, tree) -> None:
    sender = f.user(db, admin=True, units=(tree["country"],))
    at_district = f.user(db, units=(tree["district"],))
    below = f.user(db, units=(tree["facility"],))
    sent = msg.send_message(
        db, sender, "Hi", "Text", msg.Recipients(org_units=[tree["district"].uid])
    )
    deliver(db, sent.delivery.id)
    assert inbox_users(db, sent.conversation) == {sender.id, at_district.id}
    assert below.id not in inbox_users(db, sent.conversation)


def test_send_with_descendants_reaches_subtree_once_each_and_skips_disabled(
    db: Session, tree
) -> None:
    sender = f.user(db, admin=True, units=(tree["country"],))
    a = f.user(db, units=(tree["district"],))
    b = f.user(db, units=(tree["chiefdom"], tree["facility"]))  # two routes, one row
    c = f.user(db, units=(tree["facility"],))
    f.user(db, units=(tree["facility"],), disabled=True)
    f.user(db, units=(tree["other"],))
    group = f.user_group(db, members=(a, c))
    sent = msg.send_message(
        db,
        sender,
        "Broadcast",
        "Text",
        msg.Recipients(org_units=[tree["district"].uid], user_groups=[group.uid], users=[a.uid]),
        ou_mode="DESCENDANTS",
    )
    d = sent.delivery
    assert d.state == "QUEUED" and d.total is None
    result = deliver(db, d.id, batch_size=1)
    db.refresh(d)
    assert result.total == 3
    assert inbox_users(db, sent.conversation) == {sender.id, a.id, b.id, c.id}
    assert (d.state, d.total, d.delivered, d.failed) == ("DELIVERED", 3, 3, 0)
    own = db.get(Inbox, (sender.id, sent.conversation.id))
    assert own.read is True
    assert db.get(Inbox, (a.id, sent.conversation.id)).read is False
    db.refresh(sent.conversation)
    assert sent.conversation.participant_count == 4


def test_org_unit_group_with_descendants(db: Session, tree) -> None:
    sender = f.user(db, admin=True)
    below = f.user(db, units=(tree["facility"],))
    group = f.org_unit_group(db, (tree["chiefdom"],))
    sent = msg.send_message(
        db, sender, "S", "T", msg.Recipients(org_unit_groups=[group.uid]), ou_mode="DESCENDANTS"
    )
    deliver(db, sent.delivery.id)
    assert inbox_users(db, sent.conversation) == {sender.id, below.id}


def test_every_batch_is_safe_to_run_twice(db: Session, tree) -> None:
    sender = f.user(db, admin=True)
    users = [f.user(db, units=(tree["facility"],)) for _ in range(5)]
    sent = msg.send_message(db, sender, "S", "T", msg.Recipients(org_units=[tree["facility"].uid]))
    plan = svc.plan(db, sent.delivery.id, 2)
    assert svc.plan(db, sent.delivery.id, 2).planned is False  # planning twice does nothing
    assert len(plan.batch_seqs) == 3
    for seq in plan.batch_seqs:
        first = svc.run_batch(db, sent.delivery.id, seq)
        second = svc.run_batch(db, sent.delivery.id, seq)
        assert first.ran and not second.ran
    d = db.get(Delivery, sent.delivery.id)
    db.refresh(d)
    assert (d.state, d.total, d.delivered) == ("DELIVERED", 5, 5)
    assert inbox_users(db, sent.conversation) == {sender.id, *(u.id for u in users)}


def test_failed_batch_counts_missing_recipients_and_tells_the_sender(db: Session, tree) -> None:
    sender = f.user(db, admin=True)
    for _ in range(3):
        f.user(db, units=(tree["facility"],))
    sent = msg.send_message(
        db, sender, "Subj", "T", msg.Recipients(org_units=[tree["facility"].uid])
    )
    plan = svc.plan(db, sent.delivery.id, 2)
    svc.run_batch(db, sent.delivery.id, plan.batch_seqs[0])
    for _ in range(3):
        assert svc.begin_attempt(db, sent.delivery.id, plan.batch_seqs[1], max_attempts=3)
    assert not svc.begin_attempt(db, sent.delivery.id, plan.batch_seqs[1], max_attempts=3)
    d = db.get(Delivery, sent.delivery.id)
    db.refresh(d)
    assert (d.state, d.total, d.delivered, d.failed) == ("FAILED", 3, 2, 1)
    system = db.scalars(
        select(Conversation)
        .join(Inbox, Inbox.conversation_id == Conversation.id)
        .where(Inbox.user_id == sender.id, Conversation.message_type == "SYSTEM")
    ).one()
    assert "Subj" in system.subject


def test_unknown_ids_and_empty_recipients_are_refused(db: Session, tree) -> None:
    sender = f.user(db, admin=True)
    with pytest.raises(UnknownReference, match="User does not exist: nosuchuser1"):
        msg.send_message(db, sender, "S", "T", msg.Recipients(users=["nosuchuser1"]))
    with pytest.raises(NotFound, match="User group does not exist"):
        msg.send_message(db, sender, "S", "T", msg.Recipients(user_groups=["nosuchgrp01"]))
    with pytest.raises(UnknownReference, match="Organisation unit does not exist"):
        msg.send_message(db, sender, "S", "T", msg.Recipients(org_units=["nosuchunit1"]))
    with pytest.raises(Conflict, match="No recipients selected"):
        msg.send_message(db, sender, "S", "T", msg.Recipients())
    with pytest.raises(Conflict, match="No recipients"):  # a unit with no active users
        msg.send_message(db, sender, "S", "T", msg.Recipients(org_units=[tree["other"].uid]))
    with pytest.raises(Conflict, match="No recipients"):  # only yourself
        msg.send_message(db, sender, "S", "T", msg.Recipients(users=[sender.uid]))
    with pytest.raises(InvalidInput, match="ouMode"):
        msg.send_message(db, sender, "S", "T", msg.Recipients(users=[sender.uid]), ou_mode="ALL")
    with pytest.raises(InvalidInput, match="Subject"):
        msg.send_message(db, sender, " ", "T", msg.Recipients(users=[sender.uid]))


def test_sending_rights_follow_assigned_subtrees(db: Session, tree) -> None:
    district_user = f.user(db, units=(tree["district"],))
    f.user(db, units=(tree["facility"],))
    f.user(db, units=(tree["other"],))
    ok = msg.send_message(
        db, district_user, "S", "T", msg.Recipients(org_units=[tree["facility"].uid])
    )
    assert ok.delivery is not None
    with pytest.raises(Forbidden, match=tree["other"].uid):
        msg.send_message(db, district_user, "S", "T", msg.Recipients(org_units=[tree["other"].uid]))
    group = f.org_unit_group(db, (tree["facility"], tree["other"]))
    inside = f.org_unit_group(db, (tree["facility"],))
    # The group is named as the input at fault, not a unit the sender never typed.
    with pytest.raises(Forbidden, match=group.uid) as refused:
        msg.send_message(
            db,
            district_user,
            "S",
            "T",
            msg.Recipients(org_unit_groups=[inside.uid, group.uid]),
        )
    assert refused.value.field == "organisationUnitGroups"
    assert tree["other"].uid not in str(refused.value)
    assert msg.send_message(
        db, district_user, "S", "T", msg.Recipients(org_unit_groups=[inside.uid])
    ).delivery
    broadcaster = f.user(db, broadcaster=True)
    assert msg.send_message(
        db, broadcaster, "S", "T", msg.Recipients(org_units=[tree["other"].uid])
    ).delivery
    # Anyone may write to users and user groups.
    nobody = f.user(db)
    assert msg.send_message(db, nobody, "S", "T", msg.Recipients(users=[district_user.uid]))


def test_reply_marks_every_other_participant_unread(db: Session) -> None:
    a, b, c = f.user(db), f.user(db), f.user(db)
    sent = msg.send_message(db, a, "S", "T", msg.Recipients(users=[b.uid, c.uid]))
    deliver(db, sent.delivery.id)
    msg.mark_read(db, b, [sent.conversation.uid])
    msg.mark_read(db, c, [sent.conversation.uid])
    assert msg.unread_count(db, b) == 0
    replied = msg.reply(db, b, sent.conversation.uid, "Answer")
    assert replied.conversation.id == sent.conversation.id and replied.delivery is None
    assert msg.unread_count(db, a) == 1
    assert msg.unread_count(db, c) == 1
    assert msg.unread_count(db, b) == 0
    view = msg.view_conversation(db, c, sent.conversation.uid)
    assert [m.text for m in view.messages] == ["T", "Answer"]
    assert view.summary.message_count == 2


def test_large_reply_is_fanned_out_by_a_reply_delivery(db: Session) -> None:
    a = f.user(db)
    others = [f.user(db) for _ in range(4)]
    sent = msg.send_message(
        db,
        a,
        "S",
        "T",
        msg.Recipients(users=[u.uid for u in others]),
        discussion=True,
        announcement_threshold=2,
    )
    deliver(db, sent.delivery.id)
    msg.mark_read(db, others[0], [sent.conversation.uid])
    replied = msg.reply(db, others[0], sent.conversation.uid, "R", inline_unread_limit=2)
    assert replied.delivery is not None and replied.delivery.kind == "REPLY"
    deliver(db, replied.delivery.id, batch_size=2)
    db.refresh(replied.delivery)
    assert (replied.delivery.state, replied.delivery.total) == ("DELIVERED", 4)
    assert msg.unread_count(db, a) == 1
    assert msg.unread_count(db, others[0]) == 0


def test_a_reply_moves_the_conversation_up_every_inbox_large_ones_batch_by_batch(
    db: Session,
) -> None:
    a = f.user(db)
    others = [f.user(db) for _ in range(4)]
    everyone = msg.Recipients(users=[u.uid for u in others])
    older = msg.send_message(db, a, "Older", "T", everyone, discussion=True)
    deliver(db, older.delivery.id)
    newer = msg.send_message(db, a, "Newer", "T", everyone, discussion=True)
    deliver(db, newer.delivery.id)

    def order(user: User) -> list[str]:
        return [s.conversation.uid for s in msg.list_conversations(db, user).items]

    assert order(others[1]) == [newer.conversation.uid, older.conversation.uid]
    replied = msg.reply(db, others[0], older.conversation.uid, "R", inline_unread_limit=2)
    assert replied.delivery is not None
    assert order(others[0]) == [older.conversation.uid, newer.conversation.uid]  # at once
    deliver(db, replied.delivery.id, batch_size=2)
    for user in (a, *others[1:]):
        assert order(user) == [older.conversation.uid, newer.conversation.uid]
    # A small conversation's rows move in the request itself.
    msg.reply(db, others[2], newer.conversation.uid, "R")
    for user in (a, *others):
        assert order(user) == [newer.conversation.uid, older.conversation.uid]


def test_announcement_replies_go_to_a_private_thread_with_the_sender(db: Session) -> None:
    sender = f.user(db)
    people = [f.user(db) for _ in range(4)]
    sent = msg.send_message(
        db,
        sender,
        "Notice",
        "T",
        msg.Recipients(users=[p.uid for p in people]),
        announcement_threshold=3,
    )
    assert sent.conversation.is_announcement
    deliver(db, sent.delivery.id)
    replied = msg.reply(db, people[0], sent.conversation.uid, "Question")
    thread = replied.conversation
    assert thread.id != sent.conversation.id and thread.parent_id == sent.conversation.id
    assert inbox_users(db, thread) == {sender.id, people[0].id}
    again = msg.reply(db, people[0], sent.conversation.uid, "Another")
    assert again.conversation.id == thread.id
    # Other recipients see nothing new; the sender sees the thread unread.
    for p in people[1:]:
        assert msg.unread_count(db, p) == 1
        with pytest.raises(NotFound):
            msg.view_conversation(db, p, thread.uid)
    view = msg.view_conversation(db, people[1], sent.conversation.uid)
    assert [u.id for u in view.participants] == [sender.id]  # recipients do not see each other
    # The sender's reply goes to everyone.
    for p in people:
        msg.mark_read(db, p, [sent.conversation.uid])
    msg.reply(db, sender, sent.conversation.uid, "Answer for all")
    assert all(msg.unread_count(db, p) >= 1 for p in people)


def test_small_messages_are_discussions(db: Session) -> None:
    a, b = f.user(db), f.user(db)
    sent = msg.send_message(db, a, "S", "T", msg.Recipients(users=[b.uid]))
    assert not sent.conversation.is_announcement


def test_nobody_reads_or_changes_a_conversation_they_are_not_part_of(db: Session) -> None:
    a, b, stranger = f.user(db), f.user(db), f.user(db)
    sent = msg.send_message(db, a, "S", "T", msg.Recipients(users=[b.uid]))
    deliver(db, sent.delivery.id)
    uid = sent.conversation.uid
    with pytest.raises(NotFound):
        msg.view_conversation(db, stranger, uid)
    with pytest.raises(NotFound):
        msg.reply(db, stranger, uid, "x")
    assert msg.mark_read(db, stranger, [uid]) == []
    assert msg.remove_from_inbox(db, stranger, [uid]) == []
    # Only the sender and administrators follow the delivery: a recipient is told so, someone
    # outside the conversation gets what a missing one gets.
    with pytest.raises(Forbidden):
        msg.delivery_for(db, b, uid)
    with pytest.raises(NotFound):
        msg.delivery_for(db, stranger, uid)
    assert msg.delivery_for(db, a, uid).id == sent.delivery.id


def test_inbox_lists_newest_first_with_totals_and_filters(db: Session) -> None:
    me, other = f.user(db), f.user(db, first_name="Ama", surname="Kamara")
    uids = []
    for i in range(7):
        sent = msg.send_message(
            db, other, f"Subject {i}", f"Body {i}", msg.Recipients(users=[me.uid])
        )
        deliver(db, sent.delivery.id)
        uids.append(sent.conversation.uid)
    msg.reply(db, other, uids[2], "bumped")
    page1 = msg.list_conversations(db, me, page=1, page_size=3)
    assert page1.total == 7 and page1.page_count == 3
    assert page1.items[0].conversation.uid == uids[2]
    page3 = msg.list_conversations(db, me, page=3, page_size=3)
    assert len(page3.items) == 1
    msg.mark_read(db, me, uids[:2])
    unread = msg.list_conversations(db, me, filters=msg.ListFilters(read=False))
    assert unread.total == 5
    assert msg.unread_count(db, me) == 5
    # The phrase; word by word, "4" would also match senders whose name holds a 4.
    found = msg.list_conversations(
        db, me, filters=msg.ListFilters(query="body 4", query_phrase=True)
    )
    assert [s.conversation.uid for s in found.items] == [uids[4]]
    by_sender = msg.list_conversations(db, me, filters=msg.ListFilters(query="kamara"))
    assert by_sender.total == 7
    msg.remove_from_inbox(db, me, [uids[0]])
    assert msg.list_conversations(db, me).total == 6
    assert msg.list_conversations(db, other).total == 7  # only the caller's rows changed


def test_flags_are_written_in_conversation_order_whatever_order_the_ids_come_in(
    db: Session,
) -> None:
    """Two requests over overlapping conversations (two tabs, bulk actions) lock the caller's
    rows in one order, so they never wait on each other in a cycle; the answer keeps the order
    asked."""
    me, other = f.user(db), f.user(db)
    convs = []
    for i in range(4):
        sent = msg.send_message(db, other, f"S{i}", "B", msg.Recipients(users=[me.uid]))
        deliver(db, sent.delivery.id)
        convs.append(sent.conversation)
    asked = [convs[2].uid, convs[0].uid, convs[3].uid, convs[1].uid]
    written: list[int] = []

    def spy(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("UPDATE INBOX"):
            params = context.compiled_parameters[0]
            written.append(next(v for k, v in params.items() if k.startswith("conversation_id")))

    conn = db.connection()
    event.listen(conn, "before_cursor_execute", spy)
    try:
        assert msg.mark_read(db, me, asked) == asked
        assert msg.set_followup(db, me, list(reversed(asked)), True) == list(reversed(asked))
    finally:
        event.remove(conn, "before_cursor_execute", spy)
    ids = sorted(c.id for c in convs)
    assert written == ids + ids


def test_removed_conversation_returns_on_new_reply(db: Session) -> None:
    a, b = f.user(db), f.user(db)
    sent = msg.send_message(db, a, "S", "T", msg.Recipients(users=[b.uid]))
    deliver(db, sent.delivery.id)
    msg.remove_from_inbox(db, b, [sent.conversation.uid])
    assert msg.list_conversations(db, b).total == 0
    msg.reply(db, a, sent.conversation.uid, "again")
    assert msg.list_conversations(db, b).total == 1
    assert msg.unread_count(db, b) == 1


def test_total_counts_recipients_other_than_sender(db: Session, tree) -> None:
    sender = f.user(db, admin=True, units=(tree["facility"],))
    f.user(db, units=(tree["facility"],))
    sent = msg.send_message(db, sender, "S", "T", msg.Recipients(org_units=[tree["facility"].uid]))
    deliver(db, sent.delivery.id)
    db.refresh(sent.delivery)
    assert sent.delivery.total == 1
    assert (
        db.scalar(
            select(func.count())
            .select_from(Inbox)
            .where(Inbox.conversation_id == sent.conversation.id)
        )
        == 2
    )


def test_disabled_sender_data_untouched(db: Session) -> None:
    a = f.user(db)
    assert db.get(User, a.id).disabled is False


# ---------------------------------------------------------------------------------------------
# Listing: search, filters and order


def uids_of(page: msg.Page) -> list[str]:
    return [s.conversation.uid for s in page.items]


@pytest.fixture
def mixed_inbox(db: Session):
    """A handler's inbox with private messages, feedback in several states and a system message."""
    from service import feedback as fb

    handler = f.user(db, first_name="Hawa", surname="Sesay")
    other_handler = f.user(db, first_name="Idrissa", surname="Bangura")
    f.feedback_team(db, handler, other_handler)
    writer = f.user(db, first_name="Fatmata", surname="Koroma")
    friend = f.user(db, first_name="Musa", surname="Conteh")
    private = msg.send_message(
        db, friend, "Malaria stock", "Need ACT kits", msg.Recipients(users=[handler.uid])
    )
    deliver(db, private.delivery.id)
    t1 = fb.send_feedback(db, writer, "Cold chain", "The fridge is warm")
    t2 = fb.send_feedback(db, writer, "Reporting form", "Field 7 is missing")
    t3 = fb.send_feedback(db, writer, "Zinc supply", "Out of zinc")
    fb.set_status(db, handler, t2.uid, "PENDING")
    fb.set_priority(db, handler, t2.uid, "HIGH")
    fb.set_priority(db, handler, t3.uid, "LOW")
    fb.set_assignee(db, handler, t2.uid, handler.uid)
    fb.set_assignee(db, handler, t3.uid, other_handler.uid)
    msg.reply(db, handler, t1.uid, "budget code 4711 approved", internal=True)
    system = msg.direct_conversation(
        db,
        handler,
        [handler.id],
        "Delivery failed",
        "3 recipients missed",
        message_type=msg.MessageType.SYSTEM,
    )
    db.flush()
    return {
        "handler": handler,
        "other_handler": other_handler,
        "writer": writer,
        "friend": friend,
        "private": private.conversation.uid,
        "t1": t1.uid,
        "t2": t2.uid,
        "t3": t3.uid,
        "system": system.uid,
    }


def test_search_matches_subject_text_and_sender_name_every_word(db: Session, mixed_inbox) -> None:
    h = mixed_inbox["handler"]

    def search(q: str, **kw) -> list[str]:
        return sorted(
            uids_of(msg.list_conversations(db, h, filters=msg.ListFilters(query=q, **kw)))
        )

    assert search("cold") == [mixed_inbox["t1"]]  # subject
    assert search("ACT KITS") == [mixed_inbox["private"]]  # text, case-insensitive
    assert search("conteh") == [mixed_inbox["private"]]  # sender's surname
    assert search("musa conteh", query_phrase=True) == [mixed_inbox["private"]]  # full name
    assert search("koroma zinc") == [mixed_inbox["t3"]]  # every word, anywhere in it
    assert search("koroma nothing-like-this") == []
    assert search("100%") == []  # LIKE wildcards are literal
    assert search("4711") == [mixed_inbox["t1"]]  # handlers search internal replies


def test_search_never_matches_internal_replies_for_others(db: Session, mixed_inbox) -> None:
    writer = mixed_inbox["writer"]
    f_ = msg.ListFilters
    assert msg.list_conversations(db, writer, filters=f_(query="4711")).total == 0
    assert msg.list_conversations(db, writer, filters=f_(query="approved budget")).total == 0
    # Nor by the internal reply's sender: the handler wrote nothing public in t1.
    assert msg.list_conversations(db, writer, filters=f_(query="Sesay")).total == 0
    assert msg.list_conversations(db, writer, filters=f_(query="fridge")).total == 1


def test_filters_combine_and_totals_match(db: Session, mixed_inbox) -> None:
    h = mixed_inbox["handler"]
    C = msg.Condition

    def listed(**kw) -> tuple[int, list[str]]:
        page = msg.list_conversations(db, h, page_size=2, filters=msg.ListFilters(**kw))
        everything = msg.list_conversations(db, h, page_size=100, filters=msg.ListFilters(**kw))
        assert page.total == everything.total == len(everything.items)
        return page.total, sorted(uids_of(everything))

    t1, t2, t3 = mixed_inbox["t1"], mixed_inbox["t2"], mixed_inbox["t3"]
    assert listed()[0] == 5
    assert listed(folder="feedback") == (3, sorted([t1, t2, t3]))
    assert listed(folder="system") == (1, [mixed_inbox["system"]])
    assert listed(folder="messages") == (1, [mixed_inbox["private"]])
    assert listed(message_type="TICKET", status="OPEN") == (2, sorted([t1, t3]))
    assert listed(conditions=(C("priority", "in", ("HIGH", "LOW")),)) == (2, sorted([t2, t3]))
    assert listed(conditions=(C("message_type", "ne", ("TICKET",)),))[0] == 2
    assert listed(conditions=(C("status", "!in", ("NONE", "OPEN")),)) == (1, [t2])
    assert listed(assigned_to_me=True) == (1, [t2])
    assert listed(assignee_uid=mixed_inbox["other_handler"].uid) == (1, [t3])
    assert listed(conditions=(C("assignee", "!null"),)) == (2, sorted([t2, t3]))
    assert listed(folder="feedback", conditions=(C("assignee", "null"),)) == (1, [t1])
    assert listed(conditions=(C("assignee", "ne", (h.uid,)),))[0] == 4
    assert listed(read=True, folder="feedback") == (1, [t1])  # replied to it: read
    msg.set_followup(db, h, [t3], True)
    assert listed(followup=True) == (1, [t3])
    assert listed(folder="feedback", followup=False, status="OPEN") == (1, [t1])


def test_assignee_is_invisible_to_people_who_do_not_handle_feedback(
    db: Session, mixed_inbox
) -> None:
    writer = mixed_inbox["writer"]
    h = mixed_inbox["handler"]
    C = msg.Condition

    def total(**kw) -> int:
        return msg.list_conversations(db, writer, filters=msg.ListFilters(**kw)).total

    assert total() == 3
    assert total(assignee_uid=h.uid) == 0
    assert total(conditions=(C("assignee", "!null"),)) == 0
    assert total(conditions=(C("assignee", "null"),)) == 3
    assert total(assigned_to_me=True) == 0


def test_order_by_subject_priority_and_oldest_first(db: Session, mixed_inbox) -> None:
    h = mixed_inbox["handler"]

    def ordered(*order: tuple[str, bool], **kw) -> list[str]:
        filters = msg.ListFilters(order=order, **kw)
        return uids_of(msg.list_conversations(db, h, filters=filters))

    m = mixed_inbox
    assert ordered(("subject", False)) == [m["t1"], m["system"], m["private"], m["t2"], m["t3"]]
    assert ordered(("subject", True))[0] == m["t3"]
    assert ordered(("priority", True), folder="feedback") == [m["t2"], m["t3"], m["t1"]]
    newest = ordered()
    assert ordered(("last_message", False)) == list(reversed(newest))
    # Pages of an order never overlap and cover everything.
    pages = [
        uids_of(
            msg.list_conversations(
                db, h, page=p, page_size=2, filters=msg.ListFilters(order=(("status", False),))
            )
        )
        for p in (1, 2, 3)
    ]
    assert sorted(uid for page in pages for uid in page) == sorted(newest)


@pytest.mark.parametrize(
    "filters",
    [
        msg.ListFilters(conditions=(msg.Condition("subject", "eq", ("x",)),)),
        msg.ListFilters(conditions=(msg.Condition("status", "like", ("OPEN",)),)),
        msg.ListFilters(conditions=(msg.Condition("status", "eq", ("CLOSED",)),)),
        msg.ListFilters(conditions=(msg.Condition("read", "eq", ("yes",)),)),
        msg.ListFilters(conditions=(msg.Condition("status", "null", ("OPEN",)),)),
        msg.ListFilters(conditions=(msg.Condition("status", "in", ()),)),
        msg.ListFilters(order=(("sender", True),)),
        msg.ListFilters(folder="archive"),
        msg.ListFilters(query=" ".join(["w"] * 11)),
    ],
)
def test_bad_filters_are_invalid_input(db: Session, filters: msg.ListFilters) -> None:
    with pytest.raises(InvalidInput):
        msg.list_conversations(db, f.user(db), filters=filters)
