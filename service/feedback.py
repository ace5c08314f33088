"""Feedback: routing to the configured group, and the handlers' tools (status, priority, assignee).

Handlers are the current members of the configured feedback recipients group; visibility follows
membership at the time of reading. Functions take the session first and never commit.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from service.db import utcnow
from service.errors import Conflict, Forbidden, InvalidInput, NotFound
from service.messaging import (
    clean_subject,
    clean_text,
    direct_conversation,
    get_visible,
    is_handler,
)
from service.models import (
    Conversation,
    Delivery,
    DeliveryKind,
    DeliveryState,
    Inbox,
    MessageType,
    Priority,
    Status,
    User,
    user_group_members,
)
from service.system_settings import feedback_group

TICKET_STATUSES = (Status.OPEN, Status.PENDING, Status.INVALID, Status.SOLVED)


def send_feedback(session: Session, sender: User, subject: object, text: object) -> Conversation:
    """Create an OPEN feedback conversation for the configured group's members.

    Raises Conflict when no feedback group is configured: feedback is never silently dropped.
    The group is small, so its members' inbox rows are written here, in the caller's transaction,
    and the delivery is recorded as already DELIVERED.
    """
    subject = clean_subject(subject)
    text = clean_text(text)
    group = feedback_group(session)
    if group is None:
        raise Conflict(
            "Feedback cannot be sent: no feedback recipients group is configured. "
            "Ask an administrator to choose one in the settings.",
            field="feedbackRecipients",
        )
    members = list(
        session.scalars(
            select(user_group_members.c.user_id)
            .join(User, User.id == user_group_members.c.user_id)
            .where(user_group_members.c.group_id == group.id, User.disabled.is_(False))
        )
    )
    now = utcnow()
    conv = direct_conversation(
        session,
        sender,
        members,
        subject,
        text,
        message_type=MessageType.TICKET,
        as_handler=True,
        now=now,
    )
    total = conv.participant_count - 1
    session.add(
        Delivery(
            conversation_id=conv.id,
            kind=DeliveryKind.SEND.value,
            state=DeliveryState.DELIVERED.value,
            actor_id=sender.id,
            total=total,
            delivered=total,
            created_at=now,
            touched_at=now,
            finished_at=now,
        )
    )
    session.flush()
    return conv


def _handled(session: Session, user: User, uid: str) -> Conversation:
    conv, acc = get_visible(session, user, uid)
    if conv.message_type != MessageType.TICKET.value:
        raise InvalidInput(
            "Only feedback messages have a status, priority and assignee.", field="id"
        )
    if not acc.handler:
        raise Forbidden("Only feedback handlers may change this.", field="id")
    return conv


def _parse(value: object, enum: type, allowed: tuple, field: str):  # type: ignore[no-untyped-def]
    names = ", ".join(a.value for a in allowed)
    if not isinstance(value, str) or value.upper() not in {a.value for a in allowed}:
        raise InvalidInput(f"{field} must be one of {names}, got {value!r}.", field=field)
    return enum(value.upper())


def set_status(session: Session, user: User, uid: str, status: object) -> Conversation:
    """Set a feedback conversation's status (handlers only)."""
    conv = _handled(session, user, uid)
    value = _parse(status, Status, TICKET_STATUSES, "messageConversationStatus")
    session.execute(
        update(Conversation).where(Conversation.id == conv.id).values(status=value.value)
    )
    session.refresh(conv)
    return conv


def set_priority(session: Session, user: User, uid: str, priority: object) -> Conversation:
    """Set a feedback conversation's priority (handlers only)."""
    conv = _handled(session, user, uid)
    value = _parse(priority, Priority, tuple(Priority), "messageConversationPriority")
    session.execute(
        update(Conversation).where(Conversation.id == conv.id).values(priority=value.value)
    )
    session.refresh(conv)
    return conv


def set_assignee(session: Session, user: User, uid: str, assignee_uid: str | None) -> Conversation:
    """Assign a feedback conversation to a handler, or unassign it with None (handlers only)."""
    conv = _handled(session, user, uid)
    assignee_id = _assignee_id(session, assignee_uid)
    session.execute(
        update(Conversation).where(Conversation.id == conv.id).values(assignee_id=assignee_id)
    )
    session.refresh(conv)
    return conv


def _assignee_id(session: Session, assignee_uid: str | None) -> int | None:
    """The internal id of a possible assignee (a current, enabled handler), None for nobody."""
    if assignee_uid is None:
        return None
    assignee = session.scalar(select(User).where(User.uid == assignee_uid))
    if assignee is None or assignee.disabled:
        raise NotFound(f"User does not exist: {assignee_uid}", field="assignee")
    if not is_handler(session, assignee.id):
        raise Conflict(
            "The assignee must be a member of the feedback recipients group.",
            field="assignee",
        )
    return assignee.id


MAX_TRIAGE_IDS = 1_000


def triage(
    session: Session,
    user: User,
    uids: Sequence[str],
    *,
    status: object = None,
    priority: object = None,
    assign: bool = False,
    assignee_uid: str | None = None,
) -> int:
    """Set the status, priority and/or assignee (with `assign`; None unassigns) of every listed
    feedback conversation in one UPDATE: all of them or none. Handlers only (Forbidden);
    InvalidInput naming `ids` when one of them is not feedback or does not exist, naming the
    value at fault otherwise; nothing is changed then. Returns how many were set. The caller
    commits."""
    if not is_handler(session, user.id):
        raise Forbidden("Only feedback handlers may change this.", field="id")
    wanted = list(dict.fromkeys(u for u in uids if isinstance(u, str)))
    if not wanted:
        raise InvalidInput("Select at least one feedback conversation.", field="ids")
    if len(wanted) > MAX_TRIAGE_IDS:
        raise InvalidInput(f"At most {MAX_TRIAGE_IDS} conversations at once.", field="ids")
    values: dict[str, object] = {}
    if status is not None:
        values["status"] = _parse(
            status, Status, TICKET_STATUSES, "messageConversationStatus"
        ).value
    if priority is not None:
        values["priority"] = _parse(
            priority, Priority, tuple(Priority), "messageConversationPriority"
        ).value
    if assign:
        values["assignee_id"] = _assignee_id(session, assignee_uid)
    if not values:
        raise InvalidInput("Choose a status, priority or assignee.")
    # Handlers see every feedback conversation, so "is it feedback" is all there is to check.
    tickets = set(
        session.scalars(
            select(Conversation.id).where(
                Conversation.uid.in_(wanted),
                Conversation.message_type == MessageType.TICKET.value,
            )
        )
    )
    if len(tickets) != len(wanted):
        others = len(wanted) - len(tickets)
        raise InvalidInput(
            f"{others} of the selected conversations {'is' if others == 1 else 'are'} not "
            "feedback: only feedback has a status, priority and assignee. Nothing was changed.",
            field="ids",
        )
    # The ORM brings conversations already loaded in the session up to date as well.
    session.execute(update(Conversation).where(Conversation.id.in_(tickets)).values(**values))
    return len(tickets)


def handlers_exist(session: Session) -> bool:
    group = feedback_group(session)
    if group is None:
        return False
    return bool(session.scalar(select(exists().where(user_group_members.c.group_id == group.id))))


def handlers(session: Session, limit: int = 200) -> list[User]:
    """The feedback group's current, enabled members (the possible assignees), by name.

    At most `limit` users: the list feeds a select control, and a feedback team is small. An empty
    list when no group is configured. Reads only.
    """
    group = feedback_group(session)
    if group is None:
        return []
    return list(
        session.scalars(
            select(User)
            .join(user_group_members, user_group_members.c.user_id == User.id)
            .where(user_group_members.c.group_id == group.id, User.disabled.is_(False))
            .order_by(User.first_name, User.surname, User.username)
            .limit(limit)
        )
    )


def has_sent_feedback(session: Session, user: User) -> bool:
    """Whether `user` has written feedback that is still in their inbox (shows the Feedback
    folder to people who are not handlers). Reads only the user's own inbox rows."""
    return bool(
        session.scalar(
            select(
                exists().where(
                    Inbox.user_id == user.id,
                    Inbox.removed.is_(False),
                    Inbox.conversation_id == Conversation.id,
                    Conversation.message_type == MessageType.TICKET.value,
                    Conversation.created_by_id == user.id,
                )
            )
        )
    )
