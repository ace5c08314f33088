"""Feedback routing and handling: visibility follows group membership at the time of reading."""

from __future__ import annotations

import pytest
from sqlalchemy import delete
from sqlalchemy.orm import Session

from service import feedback as fb
from service import messaging as msg
from service.errors import Conflict, Forbidden, InvalidInput, NotFound
from service.models import User, user_group_members
from service.system_settings import set_feedback_group
from tests import factories as f
from tests.helpers import deliver


def test_feedback_without_a_configured_group_is_refused(db: Session) -> None:
    user = f.user(db)
    with pytest.raises(Conflict, match="no feedback recipients group"):
        fb.send_feedback(db, user, "Subject", "Text")


def test_feedback_arrives_open_for_handlers(db: Session) -> None:
    h1, h2 = f.user(db), f.user(db)
    f.feedback_team(db, h1, h2)
    sender = f.user(db)
    conv = fb.send_feedback(db, sender, "Stock-out", "We have no ORS")
    assert (conv.message_type, conv.status, conv.priority) == ("TICKET", "OPEN", "NONE")
    for h in (h1, h2):
        page = msg.list_conversations(db, h, filters=msg.ListFilters(message_type="TICKET"))
        assert [s.conversation.uid for s in page.items] == [conv.uid]
        assert page.items[0].read is False
        assert msg.unread_count(db, h) == 1
    assert msg.unread_count(db, sender) == 0
    assert msg.list_conversations(db, sender).total == 1


def test_visibility_follows_membership_at_reading_time(db: Session) -> None:
    h1 = f.user(db)
    team = f.feedback_team(db, h1)
    sender = f.user(db)
    conv = fb.send_feedback(db, sender, "S", "T")
    late = f.user(db)
    with pytest.raises(NotFound):
        msg.view_conversation(db, late, conv.uid)
    f.add_to_group(db, team, late)
    assert msg.view_conversation(db, late, conv.uid).summary.conversation.id == conv.id
    assert msg.list_conversations(db, late).total == 1
    assert msg.unread_count(db, late) == 0  # joined later: old feedback is not news
    db.execute(delete(user_group_members).where(user_group_members.c.user_id == h1.id))
    with pytest.raises(NotFound):
        msg.view_conversation(db, h1, conv.uid)
    assert msg.list_conversations(db, h1).total == 0
    assert msg.unread_count(db, h1) == 0


def test_internal_replies_are_seen_by_handlers_only(db: Session) -> None:
    h1, h2 = f.user(db), f.user(db)
    f.feedback_team(db, h1, h2)
    sender = f.user(db)
    conv = fb.send_feedback(db, sender, "S", "T")
    msg.mark_read(db, sender, [conv.uid])
    msg.mark_read(db, h2, [conv.uid])
    msg.reply(db, h1, conv.uid, "internal note: check stock", internal=True)
    assert msg.unread_count(db, sender) == 0  # nothing changes for the sender
    assert msg.unread_count(db, h2) == 1
    sender_view = msg.view_conversation(db, sender, conv.uid)
    assert [m.text for m in sender_view.messages] == ["T"]
    assert sender_view.summary.message_count == 1
    assert sender_view.summary.last_sender.id == sender.id
    found = msg.list_conversations(db, sender, filters=msg.ListFilters(query="check stock"))
    assert found.total == 0
    handler_view = msg.view_conversation(db, h2, conv.uid)
    assert [m.internal for m in handler_view.messages] == [False, True]
    with pytest.raises(Forbidden):
        msg.reply(db, sender, conv.uid, "x", internal=True)


def test_internal_replies_move_feedback_up_the_handlers_inboxes_only(db: Session) -> None:
    """The order of the feedback sender's inbox says nothing about internal replies."""
    h1, h2 = f.user(db), f.user(db)
    f.feedback_team(db, h1, h2)
    sender = f.user(db)
    feedback = fb.send_feedback(db, sender, "S", "T")
    news = msg.send_message(db, h2, "News", "T", msg.Recipients(users=[sender.uid, h1.uid]))
    deliver(db, news.delivery.id)

    def order(user: User) -> list[str]:
        return [s.conversation.uid for s in msg.list_conversations(db, user).items]

    msg.reply(db, h1, feedback.uid, "internal note", internal=True)
    assert order(sender) == [news.conversation.uid, feedback.uid]
    assert order(h1) == order(h2) == [feedback.uid, news.conversation.uid]
    msg.reply(db, h2, feedback.uid, "public answer")
    assert order(sender) == [feedback.uid, news.conversation.uid]


def test_a_handlers_own_feedback_is_ordered_as_they_see_it(db: Session) -> None:
    """A handler who wrote feedback sees its internal replies, so they move it up their desk."""
    h1, h2 = f.user(db), f.user(db)
    f.feedback_team(db, h1, h2)
    own = fb.send_feedback(db, h1, "Mine", "T")
    other = fb.send_feedback(db, f.user(db), "Theirs", "T")
    assert [s.conversation.uid for s in msg.list_conversations(db, h1).items] == [
        other.uid,
        own.uid,
    ]
    msg.mark_read(db, h1, [own.uid])
    msg.reply(db, h2, own.uid, "internal note", internal=True)
    listed = msg.list_conversations(db, h1).items
    assert [s.conversation.uid for s in listed] == [own.uid, other.uid]
    assert listed[0].last_message == listed[0].conversation.last_message_at
    # Their row is the sender's: an internal reply leaves it read, so nothing of it shows once
    # they leave the feedback group.
    assert listed[0].read is True
    db.execute(delete(user_group_members).where(user_group_members.c.user_id == h1.id))
    assert msg.unread_counts(db, h1).total == 0
    assert [s.read for s in msg.list_conversations(db, h1).items] == [True]
    # A public reply does mark the sender's row unread.
    msg.reply(db, h2, own.uid, "public answer")
    assert msg.unread_count(db, h1) == 1


def test_handlers_set_status_priority_and_assignee_senders_cannot(db: Session) -> None:
    h1 = f.user(db)
    f.feedback_team(db, h1)
    sender = f.user(db)
    conv = fb.send_feedback(db, sender, "S", "T")
    assert fb.set_status(db, h1, conv.uid, "PENDING").status == "PENDING"
    assert fb.set_priority(db, h1, conv.uid, "high").priority == "HIGH"
    assert fb.set_assignee(db, h1, conv.uid, h1.uid).assignee_id == h1.id
    with pytest.raises(Conflict):
        fb.set_assignee(db, h1, conv.uid, sender.uid)
    with pytest.raises(InvalidInput, match="messageConversationStatus"):
        fb.set_status(db, h1, conv.uid, "NONE")
    with pytest.raises(Forbidden):
        fb.set_status(db, sender, conv.uid, "SOLVED")
    with pytest.raises(Forbidden):
        fb.set_priority(db, sender, conv.uid, "LOW")
    with pytest.raises(NotFound):
        fb.set_status(db, f.user(db), conv.uid, "SOLVED")
    pending = msg.list_conversations(
        db, h1, filters=msg.ListFilters(status="PENDING", priority="HIGH")
    )
    assert pending.total == 1
    assert msg.list_conversations(db, h1, filters=msg.ListFilters(status="OPEN")).total == 0
    mine = msg.list_conversations(db, h1, filters=msg.ListFilters(assignee_uid=h1.uid))
    assert mine.total == 1


def test_reply_by_sender_reaches_all_current_handlers(db: Session) -> None:
    h1 = f.user(db)
    team = f.feedback_team(db, h1)
    sender = f.user(db)
    conv = fb.send_feedback(db, sender, "S", "T")
    newcomer = f.user(db)
    f.add_to_group(db, team, newcomer)
    msg.reply(db, sender, conv.uid, "more details")
    assert msg.unread_count(db, newcomer) == 1
    assert msg.unread_count(db, h1) == 1
    msg.reply(db, h1, conv.uid, "Thanks, on it")
    assert msg.unread_count(db, sender) == 1


def test_clearing_the_feedback_group_removes_handling(db: Session) -> None:
    h1 = f.user(db)
    f.feedback_team(db, h1)
    conv = fb.send_feedback(db, f.user(db), "S", "T")
    set_feedback_group(db, None)
    with pytest.raises(NotFound):
        msg.view_conversation(db, h1, conv.uid)
