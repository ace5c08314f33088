"""The sign-in lockout's memory, on PostgreSQL and SQLite: counts per window, locks that end by
themselves, rows forgotten once over."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from service import login_throttle as throttle
from service.models import LoginFailure

T0 = dt.datetime(2026, 12, 4, 8, 0, tzinfo=dt.UTC)


def _fail(db: Session, times: int, at: dt.datetime, username: str = "ama", ip: str = "10.0.0.1"):
    for _ in range(times):
        throttle.record_failure(db, username, ip, at)


def test_the_username_locks_at_its_limit_and_unlocks_after(db: Session) -> None:
    _fail(db, throttle.USER_LIMIT - 1, T0)
    assert throttle.locked_for(db, "ama", "10.0.0.2", T0) is None
    _fail(db, 1, T0, ip="10.0.0.3")  # from anywhere: the username's count
    assert throttle.locked_for(db, "ama", "10.0.0.2", T0) == throttle.LOCK
    assert throttle.locked_for(db, "musa", "10.0.0.2", T0) is None
    later = T0 + throttle.LOCK - dt.timedelta(minutes=1)
    assert throttle.locked_for(db, "ama", None, later) == dt.timedelta(minutes=1)
    assert throttle.locked_for(db, "ama", None, T0 + throttle.LOCK) is None


def test_failures_outside_the_window_start_a_new_count(db: Session) -> None:
    _fail(db, throttle.USER_LIMIT - 1, T0)
    after = T0 + throttle.WINDOW + dt.timedelta(seconds=1)
    _fail(db, throttle.USER_LIMIT - 1, after)
    assert throttle.locked_for(db, "ama", None, after) is None
    row = db.get(LoginFailure, "user:ama", populate_existing=True)
    assert row is not None and row.failures == throttle.USER_LIMIT - 1
    assert row.window_start == after


def test_the_address_locks_every_username(db: Session) -> None:
    for i in range(throttle.IP_LIMIT):
        throttle.record_failure(db, f"guess{i}", "10.0.0.9", T0)
    assert throttle.locked_for(db, "anyone", "10.0.0.9", T0) == throttle.LOCK
    assert throttle.locked_for(db, "anyone", "10.0.0.8", T0) is None


def test_success_clears_the_username_and_old_rows_are_forgotten(db: Session) -> None:
    _fail(db, 2, T0)
    throttle.record_success(db, "ama")
    assert db.get(LoginFailure, "user:ama", populate_existing=True) is None
    assert db.get(LoginFailure, "ip:10.0.0.1", populate_existing=True) is not None
    # A failure long after forgets every finished row but its own.
    _fail(db, 1, T0 + dt.timedelta(hours=2), username="musa", ip="10.0.0.5")
    db.expire_all()
    keys = set(db.scalars(select(LoginFailure.key)))
    assert keys == {"user:musa", "ip:10.0.0.5"}
