"""Personal access tokens: only a hash is stored; expiry, revocation and disabled users count."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from service import api_tokens
from service.db import utcnow
from service.errors import InvalidInput, NotFound
from service.models import ApiToken
from tests import factories as f


def test_key_is_shown_once_and_only_its_hash_is_stored(db: Session) -> None:
    user = f.user(db)
    token, key = api_tokens.create(db, user, name="sync script")
    assert key.startswith("d2pat_") and len(key) == 48 and api_tokens.well_formed(key)
    stored = db.scalar(select(ApiToken).where(ApiToken.id == token.id))
    assert key not in (stored.key_hash, stored.name, stored.uid)
    assert stored.key_hash == api_tokens.key_hash(key)
    assert api_tokens.authenticate(db, key).id == user.id
    assert (token.expires_at - utcnow()).days in (29, 30)


def test_tampered_expired_revoked_and_disabled_keys_fail(db: Session) -> None:
    user, other = f.user(db), f.user(db)
    token, key = api_tokens.create(db, user)
    flipped = key[:10] + ("A" if key[10] != "A" else "B") + key[11:]
    assert not api_tokens.well_formed(flipped)  # the checksum catches it
    assert api_tokens.authenticate(db, flipped) is None
    assert api_tokens.authenticate(db, "d2pat_" + "x" * 42) is None
    with pytest.raises(NotFound):
        api_tokens.revoke(db, other, token.uid)  # not theirs
    token.expires_at = utcnow() - dt.timedelta(seconds=1)
    db.flush()
    assert api_tokens.authenticate(db, key) is None
    _, key2 = api_tokens.create(db, user)
    user.disabled = True
    db.flush()
    assert api_tokens.authenticate(db, key2) is None
    user.disabled = False
    db.flush()
    assert api_tokens.authenticate(db, key2).id == user.id
    (second,) = [t for t in api_tokens.tokens_of(db, user) if t.id != token.id]
    api_tokens.revoke(db, user, second.uid)
    assert api_tokens.authenticate(db, key2) is None


@pytest.mark.parametrize(
    "expires",
    [dt.timedelta(seconds=-5), dt.timedelta(days=366)],
)
def test_expiry_must_be_within_a_year(db: Session, expires: dt.timedelta) -> None:
    with pytest.raises(InvalidInput):
        api_tokens.create(db, f.user(db), expires_at=utcnow() + expires)
