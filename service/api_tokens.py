"""Personal access tokens, as DHIS2 has them: `Authorization: ApiToken d2pat_…`.

A key is `d2pat_`, 32 random letters and digits, and the zero-padded 10-digit CRC32 of those 32
characters, as DHIS2 makes them (a typo is rejected before the database is asked). Only the key's
SHA-256 is stored; the key is shown once. Tokens expire (30 days unless asked otherwise, at most a
year) and can be revoked. Functions take the session first and never commit.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import string
import zlib

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db import utcnow
from service.errors import Conflict, InvalidInput, NotFound
from service.models import ApiToken, User

PREFIX = "d2pat_"
_ALPHABET = string.ascii_letters + string.digits
_RANDOM_LENGTH = 32
KEY_LENGTH = len(PREFIX) + _RANDOM_LENGTH + 10
DEFAULT_LIFETIME = dt.timedelta(days=30)
MAX_LIFETIME = dt.timedelta(days=365)
MAX_TOKENS_PER_USER = 100
MAX_NAME = 230


def _checksum(body: str) -> str:
    return f"{zlib.crc32(body.encode()):010d}"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def well_formed(key: str) -> bool:
    """Prefix, length, alphabet and checksum; says nothing about whether the key exists."""
    if len(key) != KEY_LENGTH or not key.startswith(PREFIX):
        return False
    secret_part, check = key[len(PREFIX) : -10], key[-10:]
    if not all(c in _ALPHABET for c in secret_part):
        return False
    return hmac.compare_digest(_checksum(secret_part), check)


def create(
    session: Session,
    user: User,
    *,
    expires_at: dt.datetime | None = None,
    name: object = None,
) -> tuple[ApiToken, str]:
    """Make a token for `user`; returns it and its key (the only time the key is known)."""
    now = utcnow()
    expires_at = expires_at or now + DEFAULT_LIFETIME
    if expires_at <= now:
        raise InvalidInput("The token's expiry must be in the future.", field="expire")
    if expires_at > now + MAX_LIFETIME:
        raise InvalidInput("A token may live at most 365 days.", field="expire")
    if name is not None and (not isinstance(name, str) or len(name) > MAX_NAME):
        raise InvalidInput(f"name must be text of at most {MAX_NAME} characters.", field="name")
    count = session.scalar(
        select(func.count()).select_from(ApiToken).where(ApiToken.user_id == user.id)
    )
    if (count or 0) >= MAX_TOKENS_PER_USER:
        raise Conflict(
            f"At most {MAX_TOKENS_PER_USER} tokens per user; revoke some first.", field="apiToken"
        )
    secret_part = "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_LENGTH))
    key = PREFIX + secret_part + _checksum(secret_part)
    token = ApiToken(
        user_id=user.id,
        key_hash=key_hash(key),
        name=name or None,
        created_at=now,
        expires_at=expires_at,
    )
    session.add(token)
    session.flush()
    return token, key


def authenticate(session: Session, key: str) -> User | None:
    """The enabled user whose unexpired token this is, or None."""
    if not well_formed(key):
        return None
    return session.scalar(
        select(User)
        .join(ApiToken, ApiToken.user_id == User.id)
        .where(
            ApiToken.key_hash == key_hash(key),
            ApiToken.expires_at > utcnow(),
            User.disabled.is_(False),
        )
    )


def tokens_of(session: Session, user: User) -> list[ApiToken]:
    return list(
        session.scalars(
            select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.created_at)
        )
    )


def get(session: Session, actor: User, uid: str) -> ApiToken:
    """The caller's own token (administrators: anyone's); NotFound otherwise."""
    token = session.scalar(select(ApiToken).where(ApiToken.uid == uid))
    if token is None or not (actor.is_admin or token.user_id == actor.id):
        raise NotFound(f"ApiToken does not exist: {uid}", field="id")
    return token


def revoke(session: Session, actor: User, uid: str) -> None:
    session.delete(get(session, actor, uid))
    session.flush()
