"""Security fixtures: the real app on PostgreSQL (a rolled-back connection) and a small world with
every role that matters: a message's sender, another participant, a non-participant, a feedback
handler, a feedback sender and an administrator, plus conversations of each kind between them."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service import feedback as fb
from service import messaging as msg
from service.config import Settings
from service.models import (
    Conversation,
    Delivery,
    DeliveryTarget,
    Inbox,
    Message,
    SystemSetting,
    User,
    user_group_members,
)
from service.passwords import hash_password
from tests import factories as f
from tests.helpers import deliver
from web import create_app

PASSWORD = "security-pass"
PASSWORD_HASH = hash_password(PASSWORD, rounds=4)
ROLES = ("sender", "participant", "outsider", "handler", "feedback_sender", "admin")

# Every table a request may write to: counted before and after a refused request.
WRITTEN = (Conversation, Message, Inbox, Delivery, DeliveryTarget, SystemSetting)


@dataclass
class RecordingPublisher:
    """Stands in for the broker (a true boundary) and records what would have been published."""

    sent: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)

    def publish(self, name: str, *args: int) -> bool:
        self.sent.append((name, args))
        return True


@pytest.fixture
def db(pg_db: Session) -> Session:
    """These tests run on PostgreSQL only: it is what production runs and the stricter one."""
    return pg_db


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def app(db: Session, publisher: RecordingPublisher, tmp_path: Path) -> Flask:
    settings = Settings(
        env="test",
        data_dir=tmp_path,
        database_url="sqlite://",
        broker_url="memory://",
        secret_key="security-secret",
    )
    app = create_app(
        settings,
        session_factory=lambda: Session(
            bind=db.connection(), join_transaction_mode="create_savepoint", expire_on_commit=False
        ),
        publisher=publisher,
    )
    app.config.update(TESTING=True, WTF_CSRF_ENABLED=False)
    return app


def basic(username: str, password: str = PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@dataclass
class World:
    users: dict[str, User]
    private: Conversation  # sender -> participant
    ticket: Conversation  # feedback_sender -> the feedback team, with an internal reply
    announcement: Conversation  # admin -> many, participant among them
    internal_text: str
    public_reply_text: str
    extra: dict[str, Any] = field(default_factory=dict)

    def auth(self, role: str) -> dict[str, str]:
        return basic(self.users[role].username)

    def client(self, app: Flask, role: str) -> FlaskClient:
        """A page client signed in as `role` through the sign-in form."""
        client = app.test_client()
        if role != "anonymous":
            resp = client.post(
                "/login", data={"username": self.users[role].username, "password": PASSWORD}
            )
            assert resp.status_code == 302, resp.text
        return client


@pytest.fixture
def world(db: Session) -> World:
    country = f.org_unit(db, "Country")
    district = f.org_unit(db, "District", country)
    facility = f.org_unit(db, "Facility", district)
    users = {
        "sender": f.user(db, "sec_sender", units=(district,), first_name="Sia", surname="Sender"),
        "participant": f.user(db, "sec_participant", units=(facility,)),
        "outsider": f.user(db, "sec_outsider", units=(facility,)),
        "handler": f.user(db, "sec_handler", units=(country,)),
        "feedback_sender": f.user(db, "sec_fbsender", units=(facility,)),
        "admin": f.user(db, "sec_admin", admin=True, units=(country,)),
    }
    for u in users.values():
        u.password_hash = PASSWORD_HASH
    crowd = [f.user(db, units=(facility,)) for _ in range(3)]
    db.flush()
    f.feedback_team(db, users["handler"])

    sent = msg.send_message(
        db,
        users["sender"],
        "Private stock report",
        "Secret private text",
        msg.Recipients(users=[users["participant"].uid]),
    )
    deliver(db, sent.delivery.id)
    private = sent.conversation
    public_reply = "Participant public reply"
    msg.reply(db, users["participant"], private.uid, public_reply)

    ticket = fb.send_feedback(db, users["feedback_sender"], "Fridge broken", "Fridge text")
    internal = "INTERNAL-ONLY handler note"
    msg.reply(db, users["handler"], ticket.uid, internal, internal=True)

    ann = msg.send_message(
        db,
        users["admin"],
        "Announcement to all",
        "Everyone read this",
        msg.Recipients(users=[users["participant"].uid, *(u.uid for u in crowd)]),
        announcement_threshold=2,
    )
    deliver(db, ann.delivery.id)
    db.flush()
    return World(
        users=users,
        private=private,
        ticket=ticket,
        announcement=ann.conversation,
        internal_text=internal,
        public_reply_text=public_reply,
        extra={"crowd": crowd, "district": district, "facility": facility},
    )


def row_counts(db: Session) -> dict[str, int]:
    db.expire_all()
    counts = {m.__tablename__: db.scalar(select(func.count()).select_from(m)) for m in WRITTEN}
    counts["user_group_member"] = db.scalar(select(func.count()).select_from(user_group_members))
    return counts  # type: ignore[return-value]


@pytest.fixture
def unchanged(db: Session) -> Iterator[Callable[..., None]]:
    """Call the returned function to assert nothing was written since the fixture was set up
    (or since the last call); `unchanged(accepted=True)` takes the current counts as the new
    starting point after a request that was meant to write."""
    before = row_counts(db)

    def check(accepted: bool = False) -> None:
        nonlocal before
        after = row_counts(db)
        if not accepted:
            assert after == before, f"rows changed: {before} -> {after}"
        before = after

    yield check
