"""Administrators' account functions and changing one's own password, on PostgreSQL and SQLite."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from service import accounts
from service.errors import Conflict, Forbidden, InvalidInput, NotFound
from service.passwords import hash_password, verify_password
from tests import factories as f


def test_only_enabled_administrators_manage_users(db: Session) -> None:
    target = f.user(db)
    for actor in (f.user(db), f.user(db, broadcaster=True), f.user(db, admin=True, disabled=True)):
        with pytest.raises(Forbidden):
            accounts.find_users(db, actor)
        with pytest.raises(Forbidden):
            accounts.get_user_by_uid(db, actor, target.uid)
        with pytest.raises(Forbidden):
            accounts.set_access(db, actor, target, disabled=True)
        with pytest.raises(Forbidden):
            accounts.reset_password(db, actor, target, "long enough 1")
    assert not target.disabled and target.password_hash is None


def test_find_users_matches_every_word_and_pages(db: Session) -> None:
    admin = f.user(db, "zz-admin", admin=True)
    hawa = f.user(db, "hbangura", first_name="Hawa", surname="Bangura")
    f.user(db, "hawa2", first_name="Hawa", surname="Kamara", disabled=True)
    for i in range(5):
        f.user(db, f"x100_{i}")
    assert [u.uid for u in accounts.find_users(db, admin, "hawa bang").items] == [hawa.uid]
    assert accounts.find_users(db, admin, "HAWA").total == 2  # the disabled one too
    assert accounts.find_users(db, admin, hawa.uid).items == [hawa]
    # LIKE wildcards are literal characters.
    assert accounts.find_users(db, admin, "x100_").total == 5
    assert accounts.find_users(db, admin, "%").total == 0
    page = accounts.find_users(db, admin, "x100", page=2, page_size=2)
    assert [u.username for u in page.items] == ["x100_2", "x100_3"]
    assert (page.total, page.page_count) == (5, 3)
    with pytest.raises(NotFound):
        accounts.get_user_by_uid(db, admin, "nosuchuser1")


def test_set_access_and_the_guards_on_oneself(db: Session) -> None:
    admin, other = f.user(db, admin=True), f.user(db)
    accounts.set_access(db, admin, other, admin=True, broadcaster=True)
    assert other.is_admin and other.is_broadcaster
    accounts.set_access(db, admin, other, disabled=True)
    assert other.disabled
    with pytest.raises(Conflict) as exc:
        accounts.set_access(db, admin, admin, disabled=True)
    assert exc.value.field == "disabled"
    with pytest.raises(Conflict):
        accounts.set_access(db, admin, admin, admin=False)
    assert admin.is_admin and not admin.disabled
    accounts.set_access(db, admin, admin, broadcaster=True)  # anything else is fine
    assert admin.is_broadcaster


def test_passwords_reset_and_changed(db: Session) -> None:
    admin, other = f.user(db, admin=True), f.user(db)
    with pytest.raises(InvalidInput) as exc:
        accounts.reset_password(db, admin, other, "short")
    assert exc.value.field == "password"
    accounts.reset_password(db, admin, other, "long enough 1")
    assert verify_password("long enough 1", other.password_hash)
    other.password_hash = hash_password("current one 1", rounds=4)
    with pytest.raises(InvalidInput) as exc:
        accounts.change_own_password(db, other, "wrong", "brand new 22")
    assert exc.value.field == "current_password"
    with pytest.raises(InvalidInput) as exc:
        accounts.change_own_password(db, other, "current one 1", "current one 1")
    assert exc.value.field == "password"
    accounts.change_own_password(db, other, "current one 1", "brand new 22")
    assert verify_password("brand new 22", other.password_hash)
