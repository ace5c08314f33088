"""The data: organisation units, users and groups, conversations, messages, inbox rows, deliveries.

Internal keys are integers (compact, fast joins for million-row fan-out); every object that is
shown outside carries a DHIS2-style 11-character `uid`, unique per kind of object as in DHIS2.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    case,
    false,
    select,
    text,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.selectable import ScalarSelect

from service.db import Base, UTCDateTime, new_uid, utcnow


class MessageType(enum.StrEnum):
    PRIVATE = "PRIVATE"
    TICKET = "TICKET"
    SYSTEM = "SYSTEM"


class Status(enum.StrEnum):
    NONE = "NONE"
    OPEN = "OPEN"
    PENDING = "PENDING"
    INVALID = "INVALID"
    SOLVED = "SOLVED"


class Priority(enum.StrEnum):
    NONE = "NONE"
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"


class DeliveryState(enum.StrEnum):
    QUEUED = "QUEUED"
    DELIVERING = "DELIVERING"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"


class DeliveryKind(enum.StrEnum):
    SEND = "SEND"  # write an inbox row for every resolved recipient
    REPLY = "REPLY"  # mark every other participant's row unread after a reply


class TargetKind(enum.StrEnum):
    USER = "USER"
    USER_GROUP = "USER_GROUP"
    ORG_UNIT = "ORG_UNIT"
    ORG_UNIT_GROUP = "ORG_UNIT_GROUP"


class BatchState(enum.StrEnum):
    PENDING = "PENDING"
    DONE = "DONE"
    FAILED = "FAILED"


def _enum_check(column: str, values: type[enum.StrEnum]) -> CheckConstraint:
    allowed = ", ".join(f"'{v.value}'" for v in values)
    return CheckConstraint(f"{column} IN ({allowed})", name=f"{column}_valid")


user_org_units = Table(
    "user_org_unit",
    Base.metadata,
    Column("user_id", ForeignKey("app_user.id", ondelete="CASCADE"), primary_key=True),
    Column("org_unit_id", ForeignKey("org_unit.id", ondelete="CASCADE"), primary_key=True),
    Index("ix_user_org_unit_org_unit_id", "org_unit_id"),
)

user_group_members = Table(
    "user_group_member",
    Base.metadata,
    Column("group_id", ForeignKey("user_group.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", ForeignKey("app_user.id", ondelete="CASCADE"), primary_key=True),
    Index("ix_user_group_member_user_id", "user_id"),
)

org_unit_group_members = Table(
    "org_unit_group_member",
    Base.metadata,
    Column("group_id", ForeignKey("org_unit_group.id", ondelete="CASCADE"), primary_key=True),
    Column("org_unit_id", ForeignKey("org_unit.id", ondelete="CASCADE"), primary_key=True),
    Index("ix_org_unit_group_member_org_unit_id", "org_unit_id"),
)


class OrgUnit(Base):
    __tablename__ = "org_unit"

    id: Mapped[int] = mapped_column(primary_key=True)
    uid: Mapped[str] = mapped_column(String(11), unique=True, default=new_uid)
    name: Mapped[str] = mapped_column(String(230))
    short_name: Mapped[str | None] = mapped_column(String(50))
    code: Mapped[str | None] = mapped_column(String(50))
    level: Mapped[int] = mapped_column(Integer)
    # '/rootUid/.../ownUid', as in DHIS2; descendants share the prefix.
    path: Mapped[str] = mapped_column(String(400))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("org_unit.id"), index=True)
    opening_date: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    closed_date: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())

    parent: Mapped[OrgUnit | None] = relationship(remote_side=[id])

    __table_args__ = (
        # text_pattern_ops lets PostgreSQL use the index for `path LIKE 'prefix%'`.
        Index("ix_org_unit_path", "path", postgresql_ops={"path": "text_pattern_ops"}),
    )


class OrgUnitGroup(Base):
    __tablename__ = "org_unit_group"

    id: Mapped[int] = mapped_column(primary_key=True)
    uid: Mapped[str] = mapped_column(String(11), unique=True, default=new_uid)
    name: Mapped[str] = mapped_column(String(230))
    code: Mapped[str | None] = mapped_column(String(50))


class UserGroup(Base):
    __tablename__ = "user_group"

    id: Mapped[int] = mapped_column(primary_key=True)
    uid: Mapped[str] = mapped_column(String(11), unique=True, default=new_uid)
    name: Mapped[str] = mapped_column(String(230))
    code: Mapped[str | None] = mapped_column(String(50))


class User(Base):
    __tablename__ = "app_user"

    id: Mapped[int] = mapped_column(primary_key=True)
    uid: Mapped[str] = mapped_column(String(11), unique=True, default=new_uid)
    username: Mapped[str] = mapped_column(String(255), unique=True)
    first_name: Mapped[str | None] = mapped_column(String(160))
    surname: Mapped[str | None] = mapped_column(String(160))
    email: Mapped[str | None] = mapped_column(String(255))
    password_hash: Mapped[str | None] = mapped_column(String(255))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    is_broadcaster: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_login: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())

    org_units: Mapped[list[OrgUnit]] = relationship(secondary=user_org_units, lazy="selectin")
    groups: Mapped[list[UserGroup]] = relationship(secondary=user_group_members)

    @property
    def display_name(self) -> str:
        full = " ".join(p for p in (self.first_name, self.surname) if p)
        return full or self.username


class SystemSetting(Base):
    """Key/value settings an administrator changes at run time (e.g. the feedback group)."""

    __tablename__ = "system_setting"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(String(1000))


class LoginFailure(Base):
    """Recent failed sign-ins for one key (`user:<username>` or `ip:<address>`): the memory of
    the sign-in lockout, kept in the database so that every web worker sees the same counts."""

    __tablename__ = "login_failure"

    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_start: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class Conversation(Base):
    __tablename__ = "conversation"

    id: Mapped[int] = mapped_column(primary_key=True)
    uid: Mapped[str] = mapped_column(String(11), unique=True, default=new_uid)
    subject: Mapped[str] = mapped_column(String(255))
    message_type: Mapped[str] = mapped_column(String(10), default=MessageType.PRIVATE.value)
    status: Mapped[str] = mapped_column(String(10), default=Status.NONE.value)
    priority: Mapped[str] = mapped_column(String(10), default=Priority.NONE.value)
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("app_user.id"))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("app_user.id"))
    # Announcements: recipients' replies go to the sender only, in a private thread.
    is_announcement: Mapped[bool] = mapped_column(Boolean, default=False)
    # A private thread off an announcement: the announcement and the recipient it is with.
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("conversation.id", ondelete="CASCADE"))
    thread_user_id: Mapped[int | None] = mapped_column(ForeignKey("app_user.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Latest activity including internal replies (what feedback handlers see) ...
    last_message_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_sender_id: Mapped[int | None] = mapped_column(ForeignKey("app_user.id"))
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    # ... and excluding them (what everyone else sees), so an internal reply leaks by no route.
    public_last_message_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    public_last_sender_id: Mapped[int | None] = mapped_column(ForeignKey("app_user.id"))
    public_message_count: Mapped[int] = mapped_column(Integer, default=0)
    # Rows in `inbox` for this conversation (kept by the same statements that insert them).
    participant_count: Mapped[int] = mapped_column(Integer, default=0)

    created_by: Mapped[User | None] = relationship(foreign_keys=[created_by_id])
    last_sender: Mapped[User | None] = relationship(foreign_keys=[last_sender_id])
    public_last_sender: Mapped[User | None] = relationship(foreign_keys=[public_last_sender_id])
    assignee: Mapped[User | None] = relationship(foreign_keys=[assignee_id])

    __table_args__ = (
        _enum_check("message_type", MessageType),
        _enum_check("status", Status),
        _enum_check("priority", Priority),
        UniqueConstraint("parent_id", "thread_user_id", name="uq_conversation_thread"),
        Index("ix_conversation_type_last", "message_type", "last_message_at"),
    )


class Message(Base):
    __tablename__ = "message"

    id: Mapped[int] = mapped_column(primary_key=True)
    uid: Mapped[str] = mapped_column(String(11), unique=True, default=new_uid)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversation.id", ondelete="CASCADE"))
    sender_id: Mapped[int | None] = mapped_column(ForeignKey("app_user.id"))
    text: Mapped[str] = mapped_column(Text)
    # Internal replies on feedback are seen by feedback handlers only.
    internal: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    sender: Mapped[User | None] = relationship()

    __table_args__ = (Index("ix_message_conversation", "conversation_id", "id"),)


class Inbox(Base):
    """One row per (recipient, conversation): the recipient's copy and read state."""

    __tablename__ = "inbox"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("app_user.id", ondelete="CASCADE"), primary_key=True
    )
    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("conversation.id", ondelete="CASCADE"), primary_key=True
    )
    read: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    followup: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    removed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # A feedback handler's row: shown only while the user is still a handler.
    as_handler: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The conversation's latest activity as this row's reader sees it: the last message including
    # internal replies on a handler's row, the last public message on every other row (so the
    # order of anyone else's inbox says nothing about internal replies). The inbox is listed
    # newest first from the index below instead of from 10,000 conversations. Every statement that
    # writes a row sets it (no default, so a path that forgets fails), from `row_activity`.
    last_activity_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # The conversation's type (it never changes), so that unread counts per inbox folder are read
    # from the partial index below alone. Set by every statement that writes a row.
    message_type: Mapped[str] = mapped_column(String(10))

    __table_args__ = (
        Index("ix_inbox_conversation", "conversation_id"),
        Index("ix_inbox_user_activity", "user_id", "last_activity_at", "conversation_id"),
        # Unread counts read only this small partial index.
        Index(
            "ix_inbox_unread",
            "user_id",
            "as_handler",
            "message_type",
            postgresql_where=text("NOT read AND NOT removed"),
            sqlite_where=text("NOT read AND NOT removed"),
        ),
    )


class Delivery(Base):
    """The database's record of one fan-out: what to do, how far it got, how it ended."""

    __tablename__ = "delivery"

    id: Mapped[int] = mapped_column(primary_key=True)
    uid: Mapped[str] = mapped_column(String(11), unique=True, default=new_uid)
    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("conversation.id", ondelete="CASCADE"), index=True
    )
    message_id: Mapped[int | None] = mapped_column(ForeignKey("message.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(10), default=DeliveryKind.SEND.value)
    state: Mapped[str] = mapped_column(String(12), default=DeliveryState.QUEUED.value)
    # The user whose own row is not part of the fan-out (the sender or the replier).
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("app_user.id"))
    include_descendants: Mapped[bool] = mapped_column(Boolean, default=False)
    total: Mapped[int | None] = mapped_column(Integer)
    delivered: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    batches_total: Mapped[int] = mapped_column(Integer, default=0)
    batches_pending: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Last time a task took this up or the sweep republished it; the sweep's staleness clock.
    touched_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        _enum_check("state", DeliveryState),
        _enum_check("kind", DeliveryKind),
        # The sweep scans unfinished deliveries only.
        Index(
            "ix_delivery_unfinished",
            "touched_at",
            postgresql_where=text("state IN ('QUEUED', 'DELIVERING')"),
            sqlite_where=text("state IN ('QUEUED', 'DELIVERING')"),
        ),
    )


class DeliveryTarget(Base):
    """What a SEND delivery was addressed to; resolved to users in SQL, never in Python."""

    __tablename__ = "delivery_target"

    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("delivery.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    target_id: Mapped[int] = mapped_column(Integer, primary_key=True)

    __table_args__ = (_enum_check("kind", TargetKind),)


class DeliveryBatch(Base):
    """A slice of the recipients by user id, written in one transaction by one task."""

    __tablename__ = "delivery_batch"

    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("delivery.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    lo_user_id: Mapped[int] = mapped_column(Integer)
    hi_user_id: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(10), default=BatchState.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    rows: Mapped[int] = mapped_column(Integer, default=0)
    touched_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        _enum_check("state", BatchState),
        Index(
            "ix_delivery_batch_pending",
            "delivery_id",
            postgresql_where=text("state = 'PENDING'"),
            sqlite_where=text("state = 'PENDING'"),
        ),
    )


class ApiToken(Base):
    """A personal access token (DHIS2's `d2pat_…`). Only a SHA-256 hash of the key is kept; the
    key itself is shown once, when the token is made."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(primary_key=True)
    uid: Mapped[str] = mapped_column(String(11), unique=True, default=new_uid)
    user_id: Mapped[int] = mapped_column(ForeignKey("app_user.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str | None] = mapped_column(String(230))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())

    user: Mapped[User] = relationship()


class Later(FunctionElement[dt.datetime]):
    """The later of two times: GREATEST on PostgreSQL, the two-argument MAX on SQLite."""

    type = UTCDateTime()
    name = "later"
    inherit_cache = True


@compiles(Later)
def _later(element: Later, compiler: Any, **kw: Any) -> str:
    return f"greatest({compiler.process(element.clauses, **kw)})"


@compiles(Later, "sqlite")
def _later_sqlite(element: Later, compiler: Any, **kw: Any) -> str:
    return f"max({compiler.process(element.clauses, **kw)})"


def row_activity() -> ColumnElement[dt.datetime]:
    """The new `Inbox.last_activity_at` of the `inbox` row being updated: its conversation's
    latest activity as the row's reader may see it, read in the same statement — and never
    earlier than the row already holds (an update that waited for a lock evaluates it in its
    own, older snapshot, and must not move a row back behind a newer reply)."""
    latest = (
        select(
            case(
                (Inbox.as_handler, Conversation.last_message_at),
                else_=Conversation.public_last_message_at,
            )
        )
        .where(Conversation.id == Inbox.conversation_id)
        .scalar_subquery()
    )
    return Later(Inbox.last_activity_at, latest)


def inbox_row(conv: Conversation, user_id: int, *, read: bool, as_handler: bool = False) -> Inbox:
    """A new inbox row of a conversation written in this request: its type, and the latest
    activity the row's reader may see, taken from the conversation."""
    return Inbox(
        user_id=user_id,
        conversation_id=conv.id,
        read=read,
        as_handler=as_handler,
        last_activity_at=conv.last_message_at if as_handler else conv.public_last_message_at,
        message_type=conv.message_type,
    )


def conversation_activity(
    conversation_id: int | ColumnElement[int], as_handler: bool = False
) -> ScalarSelect[dt.datetime]:
    """`Inbox.last_activity_at` for a new row of a conversation, read in the inserting statement."""
    column = Conversation.last_message_at if as_handler else Conversation.public_last_message_at
    return select(column).where(Conversation.id == conversation_id).scalar_subquery()
