"""Sending, fan-out, replies and read state against real PostgreSQL and SQLite sessions."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
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
    with pytest.raises(Forbidden):
        msg.send_message(db, district_user, "S", "T", msg.Recipients(org_unit_groups=[group.uid]))
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
    with pytest.raises(NotFound):
        msg.delivery_for(db, b, uid)  # only the sender and administrators see delivery
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
    found = msg.list_conversations(db, me, filters=msg.ListFilters(query="body 4"))
    assert [s.conversation.uid for s in found.items] == [uids[4]]
    by_sender = msg.list_conversations(db, me, filters=msg.ListFilters(query="kamara"))
    assert by_sender.total == 7
    msg.remove_from_inbox(db, me, [uids[0]])
    assert msg.list_conversations(db, me).total == 6
    assert msg.list_conversations(db, other).total == 7  # only the caller's rows changed


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
