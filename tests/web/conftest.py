"""Web fixtures: the real app on the test's rolled-back connection; the broker is recorded."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from service.config import Settings
from service.models import User
from service.passwords import hash_password
from web import create_app

PASSWORD = "district-pass"
_HASH = hash_password(PASSWORD, rounds=4)


@dataclass
class RecordingPublisher:
    """Stands in for the broker (a true boundary) and records what would have been published."""

    sent: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)

    def publish(self, name: str, *args: int) -> bool:
        self.sent.append((name, args))
        return True


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def app(db: Session, publisher: RecordingPublisher, tmp_path) -> Flask:
    settings = Settings(
        env="test",
        data_dir=tmp_path,
        database_url="sqlite://",
        broker_url="memory://",
        secret_key="test-secret",
    )
    app = create_app(
        settings,
        session_factory=lambda: Session(
            bind=db.connection(), join_transaction_mode="create_savepoint", expire_on_commit=False
        ),
        publisher=publisher,
    )
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def basic(user: User, password: str = PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{user.username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def login_user(db: Session) -> Callable[[User], dict[str, str]]:
    """Give a factory-made user the test password; return Basic auth headers for them."""

    def _login(user: User) -> dict[str, str]:
        user.password_hash = _HASH
        db.flush()
        return basic(user)

    return _login
