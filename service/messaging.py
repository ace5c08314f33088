"""Messages: send, reply, read state, listing and unread counts.

Every function takes the session first and never commits; the request or task that calls it owns
the transaction and publishes follow-up tasks only after its commit. Visibility is checked here,
once, for every route: a conversation the caller may not see raises NotFound, as if it did not
exist.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import (
    ColumnElement,
    Exists,
    Integer,
    Select,
    and_,
    case,
    cast,
    exists,
    false,
    func,
    literal,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from service import recipients as rcpt
from service.db import insert_ignore, utcnow
from service.errors import Conflict, Forbidden, InvalidInput, NotFound, UnknownReference
from service.models import (
    Conversation,
    Delivery,
    DeliveryKind,
    DeliveryState,
    DeliveryTarget,
    Inbox,
    Message,
    MessageType,
    OrgUnit,
    OrgUnitGroup,
    Priority,
    Status,
    SystemSetting,
    TargetKind,
    User,
    UserGroup,
    conversation_activity,
    inbox_row,
    row_activity,
    user_group_members,
)
from service.system_settings import FEEDBACK_RECIPIENTS, feedback_group

MAX_SUBJECT = 255
MAX_TEXT = 10_000
MAX_RECIPIENT_IDS = 1_000  # ids per request, all kinds together
PARTICIPANTS_INLINE = 30
OU_MODES = ("SELECTED", "DESCENDANTS")


# ---------------------------------------------------------------------------------------------
# Inputs and results


@dataclass(frozen=True)
class Recipients:
    """What a message is addressed to, as DHIS2 UIDs."""

    users: Sequence[str] = ()
    user_groups: Sequence[str] = ()
    org_units: Sequence[str] = ()
    org_unit_groups: Sequence[str] = ()

    def is_empty(self) -> bool:
        return not (self.users or self.user_groups or self.org_units or self.org_unit_groups)

    def count(self) -> int:
        return (
            len(self.users)
            + len(self.user_groups)
            + len(self.org_units)
            + len(self.org_unit_groups)
        )


@dataclass(frozen=True)
class Sent:
    conversation: Conversation
    delivery: Delivery | None  # None when nothing needs fanning out


@dataclass(frozen=True)
class Replied:
    conversation: Conversation  # the conversation the reply landed in (a private thread, maybe)
    message: Message
    delivery: Delivery | None  # set when the unread marks are fanned out by the workers


@dataclass(frozen=True)
class Access:
    """How the caller reaches a conversation."""

    row: Inbox | None
    handler: bool  # the caller handles feedback (sees internal replies of tickets)

    @property
    def read(self) -> bool:
        return True if self.row is None else self.row.read

    @property
    def followup(self) -> bool:
        return False if self.row is None else self.row.followup


@dataclass(frozen=True)
class Summary:
    conversation: Conversation
    read: bool
    followup: bool
    handler: bool

    # What the caller may see: handlers see internal activity, everyone else does not.
    @property
    def last_message(self) -> dt.datetime:
        c = self.conversation
        return c.last_message_at if self.handler else c.public_last_message_at

    @property
    def message_count(self) -> int:
        c = self.conversation
        return c.message_count if self.handler else c.public_message_count

    @property
    def last_sender(self) -> User | None:
        c = self.conversation
        return c.last_sender if self.handler else c.public_last_sender


FILTER_FIELDS = ("message_type", "status", "priority", "read", "followup", "assignee")
FILTER_OPS = ("eq", "ne", "in", "!in", "null", "!null")
ORDER_KEYS = (
    "last_message",
    "created",
    "subject",
    "message_count",
    "status",
    "priority",
    "read",
    "followup",
)
FOLDERS = {
    "messages": MessageType.PRIVATE.value,
    "feedback": MessageType.TICKET.value,
    "system": MessageType.SYSTEM.value,
}
MAX_QUERY_TOKENS = 10


@dataclass(frozen=True)
class Condition:
    """One `field op values` test on a listed conversation.

    Fields: message_type, status, priority (enum names), read, followup (booleans), assignee (a
    user uid). Ops: eq, ne, in, !in (values), null, !null (no values). The assignee of feedback is
    the handlers' business: for anyone else every conversation is unassigned.
    """

    field: str
    op: str
    values: tuple[object, ...] = ()


@dataclass(frozen=True)
class ListFilters:
    message_type: str | None = None
    status: str | None = None
    priority: str | None = None
    read: bool | None = None
    followup: bool | None = None
    assignee_uid: str | None = None
    # Words searched in the subject, visible message text and visible messages' sender names;
    # every word must match somewhere ("token"), or the whole phrase when `query_phrase`.
    query: str | None = None
    query_phrase: bool = False
    folder: str | None = None  # messages, feedback, system
    assigned_to_me: bool = False
    conditions: tuple[Condition, ...] = ()
    # (key, descending) pairs from ORDER_KEYS; newest activity first when empty.
    order: tuple[tuple[str, bool], ...] = ()

    def all_conditions(self) -> list[Condition]:
        out = list(self.conditions)
        for name in ("message_type", "status", "priority", "read", "followup"):
            value = getattr(self, name)
            if value is not None:
                out.append(Condition(name, "eq", (value,)))
        if self.folder is not None:
            if self.folder not in FOLDERS:
                raise InvalidInput(
                    f"folder must be one of {', '.join(FOLDERS)}, got {self.folder!r}.",
                    field="folder",
                )
            out.append(Condition("message_type", "eq", (FOLDERS[self.folder],)))
        if self.assignee_uid is not None:
            out.append(Condition("assignee", "eq", (self.assignee_uid,)))
        return out


@dataclass(frozen=True)
class Page:
    items: list[Summary]
    total: int
    page: int
    page_size: int

    @property
    def page_count(self) -> int:
        return max(1, -(-self.total // self.page_size)) if self.page_size else 1


@dataclass(frozen=True)
class View:
    summary: Summary
    messages: list[Message]
    participants: list[User]
    participant_count: int
    delivery: Delivery | None = None
    extra: dict[str, object] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Validation helpers


def clean_subject(subject: object) -> str:
    if subject is not None and not isinstance(subject, str):
        raise InvalidInput("Subject must be a string.", field="subject")
    if subject is None or not subject.strip():
        raise InvalidInput("Subject is required.", field="subject")
    subject = subject.strip()
    if len(subject) > MAX_SUBJECT:
        raise InvalidInput(f"Subject must be at most {MAX_SUBJECT} characters.", field="subject")
    return subject


def clean_text(text: object) -> str:
    if text is not None and not isinstance(text, str):
        raise InvalidInput("Text must be a string.", field="text")
    if text is None or not text.strip():
        raise InvalidInput("Text is required.", field="text")
    if len(text) > MAX_TEXT:
        raise InvalidInput(f"Text must be at most {MAX_TEXT} characters.", field="text")
    return text.strip("\n\r ")


def _ids_for(session: Session, model: type, uids: Iterable[str]) -> dict[str, int]:
    wanted = sorted(set(uids))
    if not wanted:
        return {}
    rows = session.execute(select(model.uid, model.id).where(model.uid.in_(wanted))).all()  # type: ignore[attr-defined]
    return {r[0]: r[1] for r in rows}


def _resolve(session: Session, to: Recipients) -> dict[TargetKind, set[int]]:
    """Map every UID to an internal id, failing on the first unknown one (DHIS2's codes)."""
    if to.count() > MAX_RECIPIENT_IDS:
        raise InvalidInput(
            f"At most {MAX_RECIPIENT_IDS} users, groups and organisation units may be named in one "
            "message; use user groups, organisation-unit groups or ouMode=DESCENDANTS instead.",
            field="recipients",
        )
    spec: list[tuple[TargetKind, type, Sequence[str], type[Exception], str, str]] = [
        (TargetKind.USER, User, to.users, UnknownReference, "User", "users"),
        (TargetKind.USER_GROUP, UserGroup, to.user_groups, NotFound, "User group", "userGroups"),
        (
            TargetKind.ORG_UNIT,
            OrgUnit,
            to.org_units,
            UnknownReference,
            "Organisation unit",
            "organisationUnits",
        ),
        (
            TargetKind.ORG_UNIT_GROUP,
            OrgUnitGroup,
            to.org_unit_groups,
            UnknownReference,
            "Organisation unit group",
            "organisationUnitGroups",
        ),
    ]
    out: dict[TargetKind, set[int]] = {}
    for kind, model, uids, error, label, fld in spec:
        for uid in uids:
            if not isinstance(uid, str):
                raise InvalidInput(f"{fld} must be a list of objects with a string id.", field=fld)
        found = _ids_for(session, model, uids)
        missing = [u for u in uids if u not in found]
        if missing:
            raise error(f"{label} does not exist: {missing[0]}", field=fld)  # type: ignore[call-arg]
        out[kind] = set(found.values())
    return out


# ---------------------------------------------------------------------------------------------
# Who may see what


def _handler_now(user_id: int | ColumnElement[int]) -> Exists:
    """EXISTS: the user is in the group configured as feedback recipients (one lookup of the
    setting and one of the membership, inside whatever statement needs it)."""
    return exists().where(
        SystemSetting.key == FEEDBACK_RECIPIENTS,
        user_group_members.c.group_id == cast(SystemSetting.value, Integer),
        user_group_members.c.user_id == user_id,
    )


def is_handler(session: Session, user_id: int) -> bool:
    """Whether the user is, right now, a member of the configured feedback recipients group."""
    return bool(session.scalar(select(_handler_now(user_id))))


def _row(session: Session, user_id: int, conversation_id: int) -> Inbox | None:
    return session.get(Inbox, (user_id, conversation_id))


def access(session: Session, user: User, conversation: Conversation) -> Access | None:
    """How `user` reaches `conversation`, or None if they may not see it."""
    row = _row(session, user.id, conversation.id)
    if conversation.message_type == MessageType.TICKET.value:
        handler = is_handler(session, user.id)
        if handler or conversation.created_by_id == user.id:
            return Access(row=row, handler=handler)
        return None
    if row is None or row.as_handler:
        return None
    return Access(row=row, handler=False)


def get_visible(session: Session, user: User, uid: str) -> tuple[Conversation, Access]:
    """The conversation and the caller's access to it; NotFound when they may not see it."""
    conv = session.scalar(select(Conversation).where(Conversation.uid == uid))
    acc = access(session, user, conv) if conv is not None else None
    if conv is None or acc is None:
        raise NotFound(f"Message conversation does not exist: {uid}", field="id")
    return conv, acc


# ---------------------------------------------------------------------------------------------
# Sending


def _record_targets(
    session: Session,
    sender: User,
    conv: Conversation,
    targets: dict[TargetKind, set[int]],
    include_descendants: bool,
    now: dt.datetime,
) -> Delivery:
    delivery = Delivery(
        conversation_id=conv.id,
        kind=DeliveryKind.SEND.value,
        state=DeliveryState.QUEUED.value,
        actor_id=sender.id,
        include_descendants=include_descendants,
        created_at=now,
        touched_at=now,
    )
    session.add(delivery)
    session.flush()
    session.add_all(
        DeliveryTarget(delivery_id=delivery.id, kind=kind.value, target_id=target_id)
        for kind, ids in targets.items()
        for target_id in ids
    )
    session.flush()
    return delivery


def _check_sending_rights(
    session: Session,
    sender: User,
    source: rcpt.TargetSource,
    targets: dict[TargetKind, set[int]],
) -> None:
    """Organisation units (and their groups) only within the sender's own subtrees, unless the
    sender is an administrator or a broadcaster."""
    if not (targets[TargetKind.ORG_UNIT] or targets[TargetKind.ORG_UNIT_GROUP]):
        return
    if sender.is_admin or sender.is_broadcaster:
        return
    own_paths = [ou.path for ou in sender.org_units]
    outside = session.scalars(rcpt.named_units_outside(source, own_paths).limit(5)).all()
    if outside:
        raise Forbidden(
            "You may only send to organisation units within your own assigned units; not "
            f"within them: {', '.join(sorted(outside))}",
            field="organisationUnits",
        )
    groups = session.scalars(rcpt.groups_outside(source, own_paths).limit(5)).all()
    if groups:
        raise Forbidden(
            "You may only send to organisation-unit groups whose units are all within your own "
            f"assigned units; reaching beyond them: {', '.join(sorted(groups))}",
            field="organisationUnitGroups",
        )


def _clean_targets(session: Session, to: Recipients, ou_mode: object) -> dict[TargetKind, set[int]]:
    if ou_mode not in OU_MODES:
        raise InvalidInput(
            f"ouMode must be one of {', '.join(OU_MODES)}, got {ou_mode!r}.", field="ouMode"
        )
    if to.is_empty():
        raise Conflict("No recipients selected.", field="recipients")
    return _resolve(session, to)


def send_message(
    session: Session,
    sender: User,
    subject: object,
    text: object,
    to: Recipients,
    *,
    ou_mode: object = "SELECTED",
    discussion: bool | None = None,
    announcement_threshold: int = 50,
) -> Sent:
    """Create a conversation and the delivery that fans it out. Nothing is written on error.

    The request returns before any recipient is resolved: the caller commits, then publishes
    `delivery.plan`. Only bounded work happens here: id look-ups, the sending-rights check, and a
    sample of at most a few thousand routes to decide whether it is an announcement.
    """
    subject = clean_subject(subject)
    text = clean_text(text)
    targets = _clean_targets(session, to, ou_mode)

    now = utcnow()
    conv = Conversation(
        subject=subject,
        message_type=MessageType.PRIVATE.value,
        status=Status.NONE.value,
        priority=Priority.NONE.value,
        created_by_id=sender.id,
        created_at=now,
        last_message_at=now,
        last_sender_id=sender.id,
        public_last_message_at=now,
        public_last_sender_id=sender.id,
        message_count=1,
        public_message_count=1,
        participant_count=1,
    )
    session.add(conv)
    session.flush()
    delivery = _record_targets(session, sender, conv, targets, ou_mode == "DESCENDANTS", now)

    _check_sending_rights(session, sender, delivery.id, targets)

    limit = max(1_000, announcement_threshold * 20)
    distinct, routes = session.execute(
        rcpt.sample_count(delivery.id, delivery.include_descendants, sender.id, limit)
    ).one()
    if distinct == 0:
        raise Conflict(
            "No recipients selected: the chosen users, groups and organisation units reach no "
            "active user other than you.",
            field="recipients",
        )
    large = distinct > announcement_threshold or routes >= limit
    conv.is_announcement = large and discussion is not True

    session.add(Message(conversation_id=conv.id, sender_id=sender.id, text=text, created_at=now))
    session.add(inbox_row(conv, sender.id, read=True))
    session.flush()
    return Sent(conversation=conv, delivery=delivery)


def direct_conversation(
    session: Session,
    sender: User,
    recipient_ids: Iterable[int],
    subject: str,
    text: str,
    *,
    message_type: MessageType,
    as_handler: bool = False,
    now: dt.datetime | None = None,
) -> Conversation:
    """A small conversation written at once (feedback, private threads): rows for the given
    users, the sender's read. The caller has bounded `recipient_ids`."""
    now = now or utcnow()
    conv = Conversation(
        subject=subject,
        message_type=message_type.value,
        status=Status.OPEN.value if message_type is MessageType.TICKET else Status.NONE.value,
        priority=Priority.NONE.value,
        created_by_id=sender.id,
        created_at=now,
        last_message_at=now,
        last_sender_id=sender.id,
        public_last_message_at=now,
        public_last_sender_id=sender.id,
        message_count=1,
        public_message_count=1,
    )
    session.add(conv)
    session.flush()
    session.add(Message(conversation_id=conv.id, sender_id=sender.id, text=text, created_at=now))
    session.add(inbox_row(conv, sender.id, read=True))
    others = [uid for uid in set(recipient_ids) if uid != sender.id]
    session.add_all(inbox_row(conv, uid, read=False, as_handler=as_handler) for uid in others)
    conv.participant_count = 1 + len(others)
    session.flush()
    return conv


def add_recipients(
    session: Session,
    user: User,
    uid: str,
    to: Recipients,
    *,
    ou_mode: object = "SELECTED",
    discussion: bool | None = None,
    announcement_threshold: int = 50,
) -> Delivery:
    """Add users, groups and organisation units to a private conversation the caller is part of.

    The new recipients are written by the workers like a send (the caller commits, then
    publishes `delivery.plan` for the returned delivery); people already in it are left as they
    are. Sending rights apply as for a new message. An announcement takes new recipients from
    its sender only; feedback, system messages and private threads take none.

    A discussion that would grow past `announcement_threshold` people is refused unless the
    caller asks for a discussion (`discussion=True`), as a new message that large would be an
    announcement: growing it silently would turn a small conversation into a reply-all storm
    (and show every newcomer everyone else)."""
    conv, _acc = get_visible(session, user, uid)
    if conv.message_type != MessageType.PRIVATE.value or conv.parent_id is not None:
        raise Conflict(
            "Recipients can be added to private messages only (not to feedback, system "
            "messages or private replies to an announcement).",
            field="id",
        )
    if conv.is_announcement and conv.created_by_id != user.id:
        raise Forbidden("Only the sender adds recipients to an announcement.", field="id")
    targets = _clean_targets(session, to, ou_mode)
    delivery = _record_targets(session, user, conv, targets, ou_mode == "DESCENDANTS", utcnow())
    _check_sending_rights(session, user, delivery.id, targets)
    small = conv.participant_count <= announcement_threshold
    if not conv.is_announcement and small and discussion is not True:
        limit = max(1_000, announcement_threshold * 20)
        new, routes = session.execute(
            rcpt.sample_count(delivery.id, delivery.include_descendants, user.id, limit, conv.id)
        ).one()
        if conv.participant_count + new > announcement_threshold or routes >= limit:
            raise Conflict(
                f"These recipients would make this conversation reach more than "
                f"{announcement_threshold} people. Send them a new message (it goes as an "
                'announcement), or add them anyway with "discussion": true.',
                field="discussion",
            )
    return delivery


def count_recipients(
    session: Session, sender: User, to: Recipients, *, ou_mode: object = "SELECTED"
) -> int:
    """How many people a message to `to` would reach now: active users other than the sender,
    each counted once however many routes reach them. Writes nothing.

    The same checks as a send (unknown ids, too many ids, sending rights: Forbidden naming
    organisationUnits) and the same resolution as the fan-out, in one COUNT over the distinct
    union of the routes. No recipients selected counts 0 rather than raising.
    """
    if to.is_empty():
        return 0
    targets = _clean_targets(session, to, ou_mode)
    _check_sending_rights(session, sender, targets, targets)
    reached = rcpt.recipients(targets, ou_mode == "DESCENDANTS", sender.id).subquery("reached")
    return int(session.scalar(select(func.count()).select_from(reached)) or 0)


# ---------------------------------------------------------------------------------------------
# Replying


def _append(
    session: Session,
    conv: Conversation,
    sender_id: int,
    text: str,
    internal: bool,
    now: dt.datetime,
) -> Message:
    msg = Message(
        conversation_id=conv.id, sender_id=sender_id, text=text, internal=internal, created_at=now
    )
    session.add(msg)
    values: dict[str, object] = {
        "last_message_at": now,
        "last_sender_id": sender_id,
        "message_count": Conversation.message_count + 1,
    }
    if not internal:
        values.update(
            public_last_message_at=now,
            public_last_sender_id=sender_id,
            public_message_count=Conversation.public_message_count + 1,
        )
    # A relative update: concurrent replies never lose a count.
    session.execute(update(Conversation).where(Conversation.id == conv.id).values(**values))
    session.flush()
    session.refresh(conv)
    return msg


def _set_own_read(session: Session, user_id: int, conv: Conversation, *, as_handler: bool) -> None:
    session.execute(
        insert_ignore(session, Inbox).values(
            user_id=user_id,
            conversation_id=conv.id,
            read=True,
            as_handler=as_handler,
            last_activity_at=conversation_activity(conv.id, as_handler),
            message_type=conv.message_type,
        )
    )
    session.execute(
        update(Inbox)
        .where(Inbox.user_id == user_id, Inbox.conversation_id == conv.id)
        .values(read=True, removed=False)
    )


def _touch_rows(session: Session, conv_id: int, user_id: int | None = None) -> None:
    """After a reply, the conversation's rows (or only `user_id`'s) take its latest activity."""
    q = update(Inbox).where(Inbox.conversation_id == conv_id)
    if user_id is not None:
        q = q.where(Inbox.user_id == user_id)
    session.execute(q.values(last_activity_at=row_activity()))


def _handler_ids(session: Session) -> Select[tuple[int]] | None:
    group = feedback_group(session)
    if group is None:
        return None
    return (
        select(user_group_members.c.user_id)
        .join(User, User.id == user_group_members.c.user_id)
        .where(user_group_members.c.group_id == group.id, User.disabled.is_(False))
    )


def _mark_ticket_unread(
    session: Session, conv: Conversation, replier_id: int, internal: bool
) -> None:
    """Tickets are small (the sender and the handlers): re-mark them in the request. Handlers'
    rows only (never the sender's row, even when the sender is a handler too: an internal reply
    must not mark it unread, as it would still show after they leave the group); the sender's
    row for public replies only."""
    handler_ids = _handler_ids(session)
    if handler_ids is not None:
        handlers = handler_ids.subquery("h")
        session.execute(
            insert_ignore(session, Inbox).from_select(
                [
                    "user_id",
                    "conversation_id",
                    "read",
                    "as_handler",
                    "last_activity_at",
                    "message_type",
                ],
                select(
                    handlers.c.user_id,
                    literal(conv.id),
                    false(),
                    true(),
                    conversation_activity(conv.id, as_handler=True),
                    literal(MessageType.TICKET.value),
                ).where(handlers.c.user_id != replier_id),
            )
        )
        session.execute(
            update(Inbox)
            .where(
                Inbox.conversation_id == conv.id,
                Inbox.user_id != replier_id,
                Inbox.as_handler.is_(True),
                Inbox.user_id.in_(select(handlers.c.user_id)),
            )
            .values(read=False, removed=False)
        )
    if not internal and conv.created_by_id is not None and conv.created_by_id != replier_id:
        session.execute(
            update(Inbox)
            .where(Inbox.conversation_id == conv.id, Inbox.user_id == conv.created_by_id)
            .values(read=False, removed=False)
        )


def _thread_for(
    session: Session, announcement: Conversation, user: User, now: dt.datetime
) -> Conversation:
    """The private thread between a recipient and the announcement's sender, made once."""
    found = session.scalar(
        select(Conversation).where(
            Conversation.parent_id == announcement.id, Conversation.thread_user_id == user.id
        )
    )
    if found is not None:
        return found
    assert announcement.created_by_id is not None
    try:
        with session.begin_nested():
            thread = Conversation(
                subject=f"Re: {announcement.subject}"[:MAX_SUBJECT],
                message_type=MessageType.PRIVATE.value,
                created_by_id=user.id,
                parent_id=announcement.id,
                thread_user_id=user.id,
                created_at=now,
                last_message_at=now,
                public_last_message_at=now,
                participant_count=2,
            )
            session.add(thread)
            session.flush()
            session.add_all(
                [
                    inbox_row(thread, user.id, read=True),
                    inbox_row(thread, announcement.created_by_id, read=False),
                ]
            )
            session.flush()
    except IntegrityError:
        # A concurrent first reply made it; use that one.
        return session.scalars(
            select(Conversation).where(
                Conversation.parent_id == announcement.id, Conversation.thread_user_id == user.id
            )
        ).one()
    return thread


def reply(
    session: Session,
    user: User,
    uid: str,
    text: object,
    *,
    internal: bool = False,
    inline_unread_limit: int = 500,
) -> Replied:
    """Add a reply. Every other participant sees the conversation unread again — at once for
    small conversations, through a REPLY delivery (published by the caller after commit) for
    large ones. A recipient's reply to an announcement goes to a private thread with its sender."""
    conv, acc = get_visible(session, user, uid)
    text = clean_text(text)
    now = utcnow()
    is_ticket = conv.message_type == MessageType.TICKET.value
    if internal and not (is_ticket and acc.handler):
        if is_ticket:
            raise Forbidden("Only feedback handlers may write internal replies.", field="internal")
        raise InvalidInput("Internal replies exist only on feedback messages.", field="internal")
    if conv.message_type == MessageType.SYSTEM.value:
        raise Forbidden("System messages cannot be replied to.", field="id")

    if conv.is_announcement and conv.created_by_id != user.id:
        thread = _thread_for(session, conv, user, now)
        msg = _append(session, thread, user.id, text, False, now)
        session.execute(
            update(Inbox)
            .where(Inbox.conversation_id == thread.id, Inbox.user_id != user.id)
            .values(read=False, removed=False)
        )
        _set_own_read(session, user.id, thread, as_handler=False)
        _touch_rows(session, thread.id)
        session.flush()
        return Replied(conversation=thread, message=msg, delivery=None)

    msg = _append(session, conv, user.id, text, internal, now)
    own_handler_row = is_ticket and acc.handler and conv.created_by_id != user.id
    _set_own_read(session, user.id, conv, as_handler=own_handler_row)
    delivery: Delivery | None = None
    if is_ticket:
        _mark_ticket_unread(session, conv, user.id, internal)
    elif conv.participant_count - 1 <= inline_unread_limit:
        session.execute(
            update(Inbox)
            .where(Inbox.conversation_id == conv.id, Inbox.user_id != user.id)
            .values(read=False, removed=False)
        )
    else:
        delivery = Delivery(
            conversation_id=conv.id,
            message_id=msg.id,
            kind=DeliveryKind.REPLY.value,
            state=DeliveryState.QUEUED.value,
            actor_id=user.id,
            created_at=now,
            touched_at=now,
        )
        session.add(delivery)
    # A large conversation's other rows take it batch by batch, with their unread mark.
    _touch_rows(session, conv.id, None if delivery is None else user.id)
    session.flush()
    return Replied(conversation=conv, message=msg, delivery=delivery)


# ---------------------------------------------------------------------------------------------
# Read state, follow-up, removal: the caller's own rows only


def _visible_ids(
    session: Session, user: User, uids: Iterable[str]
) -> list[tuple[Conversation, Access]]:
    out = []
    for uid in dict.fromkeys(uids):
        if not isinstance(uid, str):
            raise InvalidInput("Expected a JSON array of conversation ids.", field="ids")
        conv = session.scalar(select(Conversation).where(Conversation.uid == uid))
        acc = access(session, user, conv) if conv is not None else None
        if conv is not None and acc is not None:
            out.append((conv, acc))
    # Rows are then locked in conversation order whatever order the ids came in, so that two
    # requests over overlapping sets (two tabs, bulk actions) never wait on each other in a cycle.
    out.sort(key=lambda pair: pair[0].id)
    return out


def _set_flags(session: Session, user: User, uids: Iterable[str], **values: bool) -> list[str]:
    uids = list(uids)
    done: set[str] = set()
    for conv, acc in _visible_ids(session, user, uids):
        as_handler = (
            acc.handler
            and conv.message_type == MessageType.TICKET.value
            and conv.created_by_id != user.id
        )
        if acc.row is None:
            session.execute(
                insert_ignore(session, Inbox).values(
                    user_id=user.id,
                    conversation_id=conv.id,
                    read=True,
                    as_handler=as_handler,
                    last_activity_at=conversation_activity(conv.id, as_handler),
                    message_type=conv.message_type,
                )
            )
        session.execute(
            update(Inbox)
            .where(Inbox.user_id == user.id, Inbox.conversation_id == conv.id)
            .values(**values)
        )
        done.add(conv.uid)
    session.flush()
    return [uid for uid in dict.fromkeys(uids) if uid in done]  # in the order asked


def mark_read(session: Session, user: User, uids: Iterable[str], read: bool = True) -> list[str]:
    """Mark the caller's copies read (or unread). Returns the ids changed; unknown or invisible
    ids are ignored, as DHIS2 does. Only ever touches the caller's own rows."""
    if len(uids_list := list(uids)) > MAX_RECIPIENT_IDS:
        raise InvalidInput(f"At most {MAX_RECIPIENT_IDS} ids at once.", field="ids")
    return _set_flags(session, user, uids_list, read=read)


def set_followup(session: Session, user: User, uids: Iterable[str], on: bool) -> list[str]:
    return _set_flags(session, user, list(uids)[:MAX_RECIPIENT_IDS], followup=on)


def remove_from_inbox(session: Session, user: User, uids: Iterable[str]) -> list[str]:
    """Hide conversations from the caller's inbox; a later reply brings one back."""
    return _set_flags(session, user, list(uids)[:MAX_RECIPIENT_IDS], removed=True, read=True)


def _unread_conditions(user: User) -> tuple[list[ColumnElement[bool]], ColumnElement[bool]]:
    """The conditions on `Inbox` of the caller's unread rows, and "the caller handles feedback
    now" as an EXISTS over the setting and the membership (so no second statement decides it)."""
    handler_now = _handler_now(user.id)
    # Spelled NOT read / NOT removed so that PostgreSQL matches the partial index's predicate
    # (it cannot prove `read IS false` implies it) and counts from the index alone.
    cond = [
        Inbox.user_id == user.id,
        ~Inbox.read,
        ~Inbox.removed,
        # Handler rows count only while the user is in the configured feedback group.
        or_(~Inbox.as_handler, handler_now),
    ]
    return cond, handler_now


def unread_count(session: Session, user: User) -> int:
    """Unread conversations in the caller's inbox (reads one small partial index)."""
    # One statement: it is asked for on every page.
    cond, _ = _unread_conditions(user)
    return int(session.scalar(select(func.count()).select_from(Inbox).where(*cond)) or 0)


@dataclass(frozen=True)
class UnreadCounts:
    """Unread conversations per inbox folder, and whether the caller handles feedback now."""

    messages: int
    feedback: int
    system: int
    handler: bool

    @property
    def total(self) -> int:
        return self.messages + self.feedback + self.system


def unread_counts(session: Session, user: User) -> UnreadCounts:
    """The caller's unread conversations per folder (messages, feedback, system) in one statement.

    The same rows as `unread_count`, counted by the type each row carries, from the partial unread
    index alone (handler rows only while the caller handles feedback). Internal replies never
    mark a non-handler's row unread, so they are counted for handlers only.
    """
    cond, handler_now = _unread_conditions(user)

    def of_type(kind: MessageType) -> ColumnElement[int]:
        return func.coalesce(func.sum(case((Inbox.message_type == kind.value, 1), else_=0)), 0)

    row = session.execute(
        select(
            of_type(MessageType.PRIVATE),
            of_type(MessageType.TICKET),
            of_type(MessageType.SYSTEM),
            # Uncorrelated: one answer for the whole statement, even when no row is unread.
            select(handler_now).scalar_subquery(),
        )
        .select_from(Inbox)
        .where(*cond)
    ).one()
    return UnreadCounts(
        messages=int(row[0]), feedback=int(row[1]), system=int(row[2]), handler=bool(row[3])
    )


# ---------------------------------------------------------------------------------------------
# Listing and reading


def _visible_rows(user_id: int, handler: bool):  # type: ignore[no-untyped-def]
    activity: ColumnElement[dt.datetime] = Inbox.last_activity_at
    if handler:
        # A handler's own feedback (their row is the sender's, without internal replies) is
        # ordered as they see it, internal replies included, like the rest of their desk.
        activity = case(
            (
                and_(Inbox.message_type == MessageType.TICKET.value, Inbox.as_handler.is_(False)),
                select(Conversation.last_message_at)
                .where(Conversation.id == Inbox.conversation_id)
                .scalar_subquery(),
            ),
            else_=Inbox.last_activity_at,
        )
    mine = select(
        Inbox.conversation_id.label("conversation_id"),
        Inbox.read.label("read"),
        Inbox.followup.label("followup"),
        activity.label("last_activity_at"),
    ).where(Inbox.user_id == user_id, Inbox.removed.is_(False))
    if not handler:
        return mine.where(Inbox.as_handler.is_(False)).subquery("v")
    # Handlers also see every feedback conversation they have no row for (joined later).
    unseen = select(Conversation.id, true(), false(), Conversation.last_message_at).where(
        Conversation.message_type == MessageType.TICKET.value,
        ~exists().where(Inbox.user_id == user_id, Inbox.conversation_id == Conversation.id),
    )
    return union_all(mine, unseen).subquery("v")


def _like(value: str) -> str:
    return "%" + value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _query_condition(words: list[str], handler: bool) -> ColumnElement[bool]:
    """Every word in the subject, or in a message the caller may see, or in its sender's name.

    Internal replies (and their senders) are searched for feedback handlers only, so a search can
    never reveal that an internal reply contains a word."""
    cond: list[ColumnElement[bool]] = []
    # The sender's display name, as DHIS2 searches it: the full name, or the username without one.
    display_name = case(
        (
            and_(User.first_name.is_(None), User.surname.is_(None)),
            User.username,
        ),
        else_=func.coalesce(User.first_name, "") + " " + func.coalesce(User.surname, ""),
    )
    for word in words:
        pattern = _like(word)
        visible = [Message.conversation_id == Conversation.id]
        if not handler:
            visible.append(Message.internal.is_(False))
        sender_match = exists().where(
            User.id == Message.sender_id,
            display_name.ilike(pattern, escape="\\"),
        )
        cond.append(
            or_(
                Conversation.subject.ilike(pattern, escape="\\"),
                exists().where(
                    *visible, or_(Message.text.ilike(pattern, escape="\\"), sender_match)
                ),
            )
        )
    return and_(*cond)


def _bool_value(c: Condition, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{c.field} must be true or false.", field=c.field)
    return value


def _enum_value(c: Condition, value: object) -> str:
    allowed = {"message_type": MessageType, "status": Status, "priority": Priority}[c.field]
    names = {e.value for e in allowed}
    if not isinstance(value, str) or value.upper() not in names:
        raise InvalidInput(
            f"{c.field} must be one of {', '.join(sorted(names))}, got {value!r}.", field=c.field
        )
    return value.upper()


def _condition(c: Condition, handler: bool, v) -> ColumnElement[bool]:  # type: ignore[no-untyped-def]
    if c.field not in FILTER_FIELDS:
        raise InvalidInput(f"Unknown filter field {c.field!r}.", field=c.field)
    if c.op not in FILTER_OPS:
        raise InvalidInput(f"Unknown filter operator {c.op!r} for {c.field}.", field=c.field)
    column: ColumnElement[object]
    values: list[object]
    if c.field in ("read", "followup"):
        column = v.c.read if c.field == "read" else v.c.followup
        values = [_bool_value(c, x) for x in c.values]
    elif c.field == "assignee":
        # Who handles feedback is shown to handlers only; for anyone else nothing is assigned.
        column = Conversation.assignee_id if handler else literal(None, Integer)
        uids = [x for x in c.values if isinstance(x, str)]
        if len(uids) != len(c.values):
            raise InvalidInput("assignee must be a user id.", field="assignee")
        values = []
        if uids and handler:
            values = [select(User.id).where(User.uid.in_(uids))]
    else:
        column = getattr(Conversation, c.field)
        values = [_enum_value(c, x) for x in c.values]

    if c.op in ("null", "!null"):
        if c.values:
            raise InvalidInput(f"Operator {c.op} takes no value.", field=c.field)
        return column.is_(None) if c.op == "null" else column.is_not(None)
    if not c.values:
        raise InvalidInput(f"Operator {c.op} for {c.field} needs a value.", field=c.field)
    if c.op in ("eq", "ne") and len(c.values) != 1:
        raise InvalidInput(f"Operator {c.op} for {c.field} takes one value.", field=c.field)
    if c.field == "assignee":
        if not values:  # nobody the caller may see is assigned
            return false() if c.op in ("eq", "in") else true()
        found = Conversation.assignee_id.in_(values[0])  # type: ignore[arg-type]
        if c.op in ("eq", "in"):
            return found
        return or_(Conversation.assignee_id.is_(None), ~found)
    if c.op in ("eq", "in"):
        return column.in_(values)
    return column.not_in(values)


def _filter_conditions(
    session: Session, user: User, f: ListFilters, handler: bool, v
) -> list[ColumnElement[bool]]:  # type: ignore[no-untyped-def]
    cond = [_condition(c, handler, v) for c in f.all_conditions()]
    if f.assigned_to_me:
        cond.append(Conversation.assignee_id == user.id if handler else false())
    if f.query and f.query.strip():
        words = [f.query.strip()] if f.query_phrase else f.query.split()
        if len(words) > MAX_QUERY_TOKENS:
            raise InvalidInput(
                f"Search for at most {MAX_QUERY_TOKENS} words at once.", field="query"
            )
        cond.append(_query_condition(words, handler))
    return cond


_PRIORITY_RANK = case(
    {Priority.LOW.value: 1, Priority.MEDIUM.value: 2, Priority.HIGH.value: 3},
    value=Conversation.priority,
    else_=0,
)
_STATUS_RANK = case(
    {
        Status.OPEN.value: 1,
        Status.PENDING.value: 2,
        Status.INVALID.value: 3,
        Status.SOLVED.value: 4,
    },
    value=Conversation.status,
    else_=0,
)


def _order_by(f: ListFilters, handler: bool, v) -> list[ColumnElement[object]]:  # type: ignore[no-untyped-def]
    count = Conversation.message_count if handler else Conversation.public_message_count
    columns: dict[str, ColumnElement[object]] = {
        # The caller's own rows carry the activity they may see (`Inbox.last_activity_at`), so
        # the newest page is read from an index, not sorted out of every conversation.
        "last_message": v.c.last_activity_at,
        "created": Conversation.created_at,
        "subject": func.lower(Conversation.subject),
        "message_count": count,
        "status": _STATUS_RANK,
        "priority": _PRIORITY_RANK,
        "read": v.c.read,
        "followup": v.c.followup,
    }
    out: list[ColumnElement[object]] = []
    for key, descending in f.order or (("last_message", True),):
        if key not in columns:
            raise InvalidInput(
                f"Cannot order by {key!r}; choose one of {', '.join(ORDER_KEYS)}.", field="order"
            )
        out.append(columns[key].desc() if descending else columns[key].asc())
    # A stable tie-break so that pages never overlap or skip.
    out.append(v.c.conversation_id.desc())
    return out


def list_conversations(
    session: Session,
    user: User,
    *,
    page: int = 1,
    page_size: int = 50,
    filters: ListFilters | None = None,
    handler: bool | None = None,
) -> Page:
    """The caller's conversations (newest activity first unless `filters.order` says otherwise),
    one page of them, with the total of the filtered set for paging. Two statements: a count and
    the page; filters, search and order run in SQL."""
    f = filters or ListFilters()
    if handler is None:  # callers that know already (in this transaction) pass it
        handler = is_handler(session, user.id)
    v = _visible_rows(user.id, handler)
    cond = _filter_conditions(session, user, f, handler, v)
    order = _order_by(f, handler, v)
    if cond:
        counted = (
            select(func.count())
            .select_from(Conversation)
            .join(v, v.c.conversation_id == Conversation.id)
            .where(*cond)
        )
    else:
        # Unfiltered, the caller's rows alone give the total (each references its conversation),
        # so PostgreSQL counts from the inbox index without visiting the conversations.
        counted = select(func.count()).select_from(v)
    total = session.scalar(counted)
    # The people each entry names come in three statements for the whole page (not two per
    # entry); their own org units are not needed for a list and stay unloaded.
    people = [Conversation.created_by, Conversation.assignee]
    people.append(Conversation.last_sender if handler else Conversation.public_last_sender)
    rows = session.execute(
        select(Conversation, v.c.read, v.c.followup)
        .join(v, v.c.conversation_id == Conversation.id)
        .where(*cond)
        .options(*(selectinload(p).lazyload(User.org_units) for p in people))
        .order_by(*order)
        .offset(max(0, page - 1) * page_size)
        .limit(page_size)
    ).all()
    items = [
        Summary(conversation=r[0], read=bool(r[1]), followup=bool(r[2]), handler=handler)
        for r in rows
    ]
    return Page(items=items, total=int(total or 0), page=page, page_size=page_size)


def messages_of(
    session: Session, user: User, conversations: Sequence[Conversation]
) -> dict[int, list[Message]]:
    """The messages of conversations already listed for `user`, oldest first, in one statement;
    internal replies for feedback handlers only."""
    ids = [c.id for c in conversations]
    if not ids:
        return {}
    q = select(Message).where(Message.conversation_id.in_(ids))
    if not is_handler(session, user.id):
        q = q.where(Message.internal.is_(False))
    out: dict[int, list[Message]] = {i: [] for i in ids}
    for m in session.scalars(q.order_by(Message.conversation_id, Message.id)):
        out[m.conversation_id].append(m)
    return out


SNIPPET_LENGTH = 160


def snippets(
    session: Session, handler: bool, conversations: Sequence[Conversation]
) -> dict[int, str]:
    """The start of the latest message the caller may see in each listed conversation (internal
    replies only when `handler`), by conversation id, in one statement over the (conversation,
    id) index; at most SNIPPET_LENGTH characters each leave the database."""
    ids = [c.id for c in conversations]
    if not ids:
        return {}
    latest = select(Message.conversation_id, func.max(Message.id).label("mid")).where(
        Message.conversation_id.in_(ids)
    )
    if not handler:
        latest = latest.where(Message.internal.is_(False))
    last = latest.group_by(Message.conversation_id).subquery("last")
    rows = session.execute(
        select(Message.conversation_id, func.substr(Message.text, 1, SNIPPET_LENGTH)).join(
            last, Message.id == last.c.mid
        )
    )
    return {r[0]: " ".join(str(r[1]).split()) for r in rows}


def view_conversation(session: Session, user: User, uid: str) -> View:
    """A conversation as the caller may see it: messages oldest first (internal replies for
    handlers only), at most 30 participants inline, and the participant count."""
    conv, acc = get_visible(session, user, uid)
    msg_q = select(Message).where(Message.conversation_id == conv.id)
    if not acc.handler:
        msg_q = msg_q.where(Message.internal.is_(False))
    messages = list(session.scalars(msg_q.order_by(Message.id)))
    participants, count = _participants(session, conv, user, acc)
    delivery = session.scalar(
        select(Delivery)
        .where(Delivery.conversation_id == conv.id, Delivery.kind == DeliveryKind.SEND.value)
        .order_by(Delivery.id)
        .limit(1)
    )
    summary = Summary(conversation=conv, read=acc.read, followup=acc.followup, handler=acc.handler)
    return View(
        summary=summary,
        messages=messages,
        participants=participants,
        participant_count=count,
        delivery=delivery,
    )


def _participants(
    session: Session, conv: Conversation, user: User, acc: Access
) -> tuple[list[User], int]:
    if conv.is_announcement and conv.created_by_id != user.id:
        # Recipients of an announcement see its sender, not each other.
        sender = session.get(User, conv.created_by_id) if conv.created_by_id else None
        return ([sender] if sender else []), conv.participant_count
    q = select(User).join(Inbox, Inbox.user_id == User.id).where(Inbox.conversation_id == conv.id)
    if conv.message_type == MessageType.TICKET.value:
        if not acc.handler:
            # The feedback sender sees themself and the team as one party: no handler names.
            q = q.where(Inbox.as_handler.is_(False))
        count = int(session.scalar(select(func.count()).select_from(q.subquery())) or 0)
    else:
        count = conv.participant_count
    people = list(session.scalars(q.order_by(Inbox.user_id).limit(PARTICIPANTS_INLINE)))
    return people, count


def delivery_for(session: Session, user: User, uid: str) -> Delivery:
    """The conversation's original delivery, for its sender and administrators only."""
    conv = session.scalar(select(Conversation).where(Conversation.uid == uid))
    if conv is None:
        raise NotFound(f"Message conversation does not exist: {uid}", field="id")
    if not (user.is_admin or conv.created_by_id == user.id):
        if access(session, user, conv) is None:  # as if it did not exist
            raise NotFound(f"Message conversation does not exist: {uid}", field="id")
        raise Forbidden(
            "Only the sender of a message and administrators follow its delivery.", field="id"
        )
    found = session.scalar(
        select(Delivery)
        .where(Delivery.conversation_id == conv.id, Delivery.kind == DeliveryKind.SEND.value)
        .order_by(Delivery.id)
        .limit(1)
    )
    if found is None:
        raise NotFound(f"Message conversation {uid} has no delivery.", field="id")
    return found


def delivery_by_uid(session: Session, user: User, uid: str) -> Delivery:
    """Any delivery (a send or a reply's) by its id, for whoever started it and administrators."""
    found = session.scalar(select(Delivery).where(Delivery.uid == uid))
    if found is None or not (user.is_admin or found.actor_id == user.id):
        raise NotFound(f"Delivery does not exist: {uid}", field="id")
    return found
