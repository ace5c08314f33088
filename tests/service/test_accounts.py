"""User accounts: creation, updates, lookups; on PostgreSQL and SQLite (the `db` fixture)."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from service import accounts
from service.errors import Conflict, InvalidInput, UnknownReference
from service.models import OrgUnit, User, UserGroup
from service.passwords import verify_password

ROOT, DISTRICT = "Rooooooooo1", "Diiiiiiiii1"
GROUP, OTHER_GROUP = "Gggggggggg1", "Gggggggggg2"


@pytest.fixture
def places(db: Session) -> None:
    root = OrgUnit(uid=ROOT, name="Root", level=1, path=f"/{ROOT}")
    db.add(root)
    db.flush()
    db.add(OrgUnit(uid=DISTRICT, name="District", level=2, path=f"/{ROOT}/{DISTRICT}", parent=root))
    db.add_all([UserGroup(uid=GROUP, name="Group"), UserGroup(uid=OTHER_GROUP, name="Other")])
    db.flush()


def test_create_user_with_password_memberships_and_flags(db: Session, places: None) -> None:
    user = accounts.create_user(
        db,
        "amina",
        password="correct horse",
        org_unit_uids=[DISTRICT, ROOT, DISTRICT],
        group_uids=[GROUP],
        admin=True,
        broadcaster=True,
        first_name="Amina",
        surname="Kamara",
    )

    assert user.id is not None
    assert len(user.uid) == 11
    assert sorted(ou.uid for ou in user.org_units) == sorted([ROOT, DISTRICT])
    assert [g.uid for g in user.groups] == [GROUP]
    assert (user.is_admin, user.is_broadcaster, user.disabled) == (True, True, False)
    assert user.display_name == "Amina Kamara"
    assert verify_password("correct horse", user.password_hash)
    assert accounts.get_user_by_username(db, "amina") is user


def test_create_user_without_password_cannot_sign_in(db: Session) -> None:
    user = accounts.create_user(db, "recipient.only")
    assert user.password_hash is None
    assert not verify_password("anything at all", user.password_hash)


@pytest.mark.parametrize(
    ("username", "field"),
    [
        ("", "username"),
        ("has space", "username"),
        ("tab\tname", "username"),
        ("x" * 256, "username"),
    ],
)
def test_create_user_refuses_bad_usernames(db: Session, username: str, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        accounts.create_user(db, username)
    assert caught.value.field == field
    assert db.scalar(select(User.id)) is None


def test_create_user_accepts_the_longest_username(db: Session) -> None:
    assert accounts.create_user(db, "x" * 255).username == "x" * 255


def test_create_user_refuses_a_short_password(db: Session) -> None:
    with pytest.raises(InvalidInput) as caught:
        accounts.create_user(db, "amina", password="short")
    assert caught.value.field == "password"
    assert accounts.get_user_by_username(db, "amina") is None


def test_create_user_refuses_a_taken_username(db: Session) -> None:
    accounts.create_user(db, "amina")
    with pytest.raises(Conflict, match="amina"):
        accounts.create_user(db, "amina")
    # Usernames are case-sensitive, as in DHIS2.
    assert accounts.create_user(db, "Amina").username == "Amina"


@pytest.mark.parametrize(
    ("org_units", "groups", "missing"),
    [([ROOT, "Nooooooooo1"], [], "Nooooooooo1"), ([ROOT], [GROUP, "Nogggggggg1"], "Nogggggggg1")],
)
def test_create_user_names_an_unknown_reference(
    db: Session, places: None, org_units: list[str], groups: list[str], missing: str
) -> None:
    with pytest.raises(UnknownReference, match=missing):
        accounts.create_user(db, "amina", org_unit_uids=org_units, group_uids=groups)
    assert accounts.get_user_by_username(db, "amina") is None


def test_update_user_changes_only_what_is_given(db: Session, places: None) -> None:
    user = accounts.create_user(db, "amina", org_unit_uids=[ROOT], group_uids=[GROUP], admin=True)

    accounts.update_user(
        db,
        user,
        password="new password",
        add_org_unit_uids=[ROOT, DISTRICT],
        add_group_uids=[GROUP, OTHER_GROUP],
        broadcaster=True,
        disabled=True,
    )

    db.expire_all()
    stored = accounts.get_user_by_username(db, "amina")
    assert stored is not None
    assert (stored.is_admin, stored.is_broadcaster, stored.disabled) == (True, True, True)
    assert sorted(ou.uid for ou in stored.org_units) == sorted([ROOT, DISTRICT])
    assert sorted(g.uid for g in stored.groups) == sorted([GROUP, OTHER_GROUP])
    assert verify_password("new password", stored.password_hash)

    accounts.update_user(db, stored, admin=False, disabled=False)
    assert (stored.is_admin, stored.is_broadcaster, stored.disabled) == (False, True, False)


def test_update_user_checks_everything_before_changing_anything(db: Session, places: None) -> None:
    user = accounts.create_user(db, "amina")

    with pytest.raises(UnknownReference, match="Nooooooooo1"):
        accounts.update_user(db, user, admin=True, add_org_unit_uids=["Nooooooooo1"])
    with pytest.raises(InvalidInput):
        accounts.update_user(db, user, admin=True, password="short")

    db.expire_all()
    assert accounts.get_user_by_username(db, "amina").is_admin is False  # type: ignore[union-attr]


def test_get_user_by_username_is_exact(db: Session) -> None:
    accounts.create_user(db, "amina")
    assert accounts.get_user_by_username(db, "amina") is not None
    assert accounts.get_user_by_username(db, "AMINA") is None
    assert accounts.get_user_by_username(db, "amin") is None
