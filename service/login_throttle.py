"""The sign-in lockout: repeated failed sign-ins lock a username, and separately an address.

Why the database: the web runs as several gunicorn workers (and may run on several hosts); an
in-process counter would give an attacker a fresh allowance per worker. One small table keyed
`user:<username>` and `ip:<address>` holds a failure count per window and a lock end; every
change is one atomic upsert, so concurrent failures are all counted. Rows whose window and lock
are over are deleted as failures come in, so the table stays as small as the current attacks.

Two keys, because each alone falls short: the username key stops guessing one account's password
from many addresses; the address key stops trying a few passwords on many accounts. While either
is locked the password is not even checked (no answer to learn from), and the lock ends by itself.
A username lock can be set off by anyone who knows the username: that is the price of stopping
distributed guessing, and it lasts `LOCK` only. Behind a reverse proxy the address is the proxy's
unless the deployment trusts X-Forwarded-For (werkzeug's ProxyFix); `IP_LIMIT` is set high
enough that a proxy's shared address is not locked by ordinary mistakes.

Every function takes the session first and never commits: the caller does.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import case, delete, literal, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service.db import UTCDateTime, utcnow
from service.models import LoginFailure

USER_LIMIT = 5  # failures for one username within WINDOW, then locked for LOCK
IP_LIMIT = 30  # failures from one address within WINDOW, then locked for LOCK
WINDOW = dt.timedelta(minutes=15)
LOCK = dt.timedelta(minutes=15)


def _keys(username: str, address: str | None) -> list[tuple[str, int]]:
    keys = [(f"user:{username[:255]}", USER_LIMIT)]
    if address:
        keys.append((f"ip:{address[:64]}", IP_LIMIT))
    return keys


def locked_for(
    session: Session, username: str, address: str | None, now: dt.datetime | None = None
) -> dt.timedelta | None:
    """How long sign-in stays refused for this username or address, or None when it is open."""
    now = now or utcnow()
    until = session.scalar(
        select(LoginFailure.locked_until)
        .where(
            LoginFailure.key.in_([k for k, _ in _keys(username, address)]),
            LoginFailure.locked_until > now,
        )
        .order_by(LoginFailure.locked_until.desc())
        .limit(1)
    )
    return None if until is None else until - now


def _upsert(session: Session) -> Any:
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(LoginFailure)
    if name == "sqlite":
        return sqlite.insert(LoginFailure)
    raise RuntimeError(f"unsupported database dialect {name}")


def record_failure(
    session: Session, username: str, address: str | None, now: dt.datetime | None = None
) -> None:
    """Count one failed sign-in for the username and the address; lock whichever reaches its
    limit within the window. Atomic per key (one upsert each)."""
    now = now or utcnow()
    at = literal(now, UTCDateTime())
    expired = LoginFailure.window_start < literal(now - WINDOW, UTCDateTime())
    failures = case((expired, 1), else_=LoginFailure.failures + 1)
    for key, limit in _keys(username, address):
        stmt = _upsert(session).values(key=key, failures=1, window_start=now, locked_until=None)
        stmt = stmt.on_conflict_do_update(
            index_elements=[LoginFailure.key],
            set_={
                "failures": failures,
                "window_start": case((expired, at), else_=LoginFailure.window_start),
                "locked_until": case(
                    (failures >= limit, literal(now + LOCK, UTCDateTime())),
                    else_=LoginFailure.locked_until,
                ),
            },
        )
        session.execute(stmt)
    # Forget what is over: a window past and no lock running.
    session.execute(
        delete(LoginFailure).where(
            LoginFailure.window_start < literal(now - WINDOW, UTCDateTime()),
            or_(LoginFailure.locked_until.is_(None), LoginFailure.locked_until <= now),
        )
    )


def record_success(session: Session, username: str) -> None:
    """A correct sign-in clears the username's failures (not the address's: one valid account
    must not reset the allowance for guessing others)."""
    session.execute(delete(LoginFailure).where(LoginFailure.key == f"user:{username[:255]}"))
