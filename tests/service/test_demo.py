"""Demo seeding on the real Sierra Leone hierarchy; on PostgreSQL and SQLite (the `db` fixture)."""

from __future__ import annotations

import collections

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service import accounts, system_settings
from service.db import is_uid
from service.demo import (
    ADMIN,
    DATA_DIR,
    DEMO_PASSWORD,
    DISTRICT_ME_GROUPS,
    FEEDBACK_GROUP,
    PROGRAM_GROUPS,
    demo_uid,
    facility_type,
    seed_demo,
)
from service.dhis2_import import import_metadata, load_file
from service.errors import Conflict
from service.models import OrgUnit, User, UserGroup, user_group_members, user_org_units
from service.passwords import verify_password

ROOT_UID = "ImspTQPwCqd"
FACILITY_USERS = 3 * 29 + 2 * 185 + 947


def members(db: Session, group_uid: str) -> set[str]:
    return set(
        db.scalars(
            select(User.username)
            .join(user_group_members, user_group_members.c.user_id == User.id)
            .join(UserGroup, UserGroup.id == user_group_members.c.group_id)
            .where(UserGroup.uid == group_uid)
        )
    )


def demo_users_by_level(db: Session) -> dict[int, int]:
    """Users with a password (the demo's) per level of their organisation unit."""
    rows = db.execute(
        select(OrgUnit.level, func.count())
        .select_from(User)
        .join(user_org_units, user_org_units.c.user_id == User.id)
        .join(OrgUnit, OrgUnit.id == user_org_units.c.org_unit_id)
        .where(User.password_hash.is_not(None))
        .group_by(OrgUnit.level)
    ).all()
    return dict(rows)


def test_seed_demo_follows_the_recipe(db: Session) -> None:
    report = seed_demo(db)

    assert report.imported is not None and report.imported.org_units_created == 1332
    assert (report.users_created, report.users_total) == (1587, 1588)
    assert report.groups_created == 11
    assert report.feedback_group_set
    assert demo_users_by_level(db) == {1: 6, 2: 26, 3: 152, 4: FACILITY_USERS}
    # 67 real users from the Sierra Leone file (no passwords) sit beside the demo users.
    assert db.scalar(select(func.count()).select_from(User)) == 67 + 1587
    # Closed facilities get nobody.
    on_closed = db.scalar(
        select(func.count())
        .select_from(user_org_units)
        .join(OrgUnit, OrgUnit.id == user_org_units.c.org_unit_id)
        .where(OrgUnit.closed_date.is_not(None))
    )
    assert on_closed == 0


def test_seed_demo_logins(db: Session) -> None:
    report = seed_demo(db)

    admin = accounts.get_user_by_username(db, "admin")
    assert admin is not None
    assert (admin.uid, admin.display_name, admin.is_admin) == (ADMIN, "John Traore", True)
    assert [ou.uid for ou in admin.org_units] == [ROOT_UID]
    assert verify_password(DEMO_PASSWORD, admin.password_hash)
    # One hash of "district" is shared by every demo user (bcrypt costs ~250 ms per hash).
    hashes = db.scalars(select(User.password_hash).where(User.password_hash.is_not(None))).all()
    assert len(set(hashes)) == 1

    expected = {
        "national1": ("National Communications Officer", ROOT_UID),
        "bo_me": ("Bo District M&E Officer", "O6uvpzGd5pu"),
        "bo_dhmt": ("Bo DHMT Officer", "O6uvpzGd5pu"),
        "badjia_sup": ("Badjia Chiefdom Supervisor", "YuQRtpLP10I"),
        "ngelehun_chc1": ("Ngelehun CHC Staff 1", "DiszpKrYNg8"),
        "ngelehun_chc2": ("Ngelehun CHC Staff 2", "DiszpKrYNg8"),
    }
    for username, (display, unit) in expected.items():
        user = accounts.get_user_by_username(db, username)
        assert user is not None, username
        assert (user.display_name, [ou.uid for ou in user.org_units]) == (display, [unit])
        assert is_uid(user.uid)
    assert {login.username for login in report.logins} >= {"admin", *expected}
    assert all(login.password == DEMO_PASSWORD for login in report.logins)
    broadcasters = db.scalars(select(User.username).where(User.is_broadcaster)).all()
    assert broadcasters == ["national1"]
    # Ngelehun CHC is a CHC: 2 users, and no third.
    assert accounts.get_user_by_username(db, "ngelehun_chc3") is None


def test_seed_demo_uids_are_fixed(db: Session) -> None:
    seed_demo(db)
    user = accounts.get_user_by_username(db, "ngelehun_chc1")
    assert user is not None
    # Pinned: demo data on every machine (and in bug reports) names the same users.
    assert user.uid == demo_uid("DiszpKrYNg8", "facility", 1) == "Rk097VeNT5S"


def test_seed_demo_groups(db: Session) -> None:
    seed_demo(db)

    feedback = system_settings.feedback_group(db)
    assert feedback is not None and feedback.uid == FEEDBACK_GROUP
    assert members(db, FEEDBACK_GROUP) == {"admin", *(f"national{n}" for n in range(1, 6))}
    assert members(db, DISTRICT_ME_GROUPS["O6uvpzGd5pu"]) == {"bo_me", "bo_dhmt"}
    assert members(db, DISTRICT_ME_GROUPS["lc3eMKXaEfw"]) == {"bonthe_me", "bonthe_dhmt"}
    district_groups = db.scalars(
        select(UserGroup.uid).where(UserGroup.name.like("% District M&E%"))
    )
    sizes = {uid: len(members(db, uid)) for uid in district_groups}
    assert len(sizes) == 13 and set(sizes.values()) == {2}
    for group in PROGRAM_GROUPS:
        staff = members(db, group) - {"admin"}  # admin is in some of them in the real file
        assert 0.10 * FACILITY_USERS <= len(staff) <= 0.20 * FACILITY_USERS


def test_seed_demo_is_idempotent(db: Session) -> None:
    seed_demo(db)
    hashes = dict(db.execute(select(User.uid, User.password_hash)).all())
    memberships = db.scalar(select(func.count()).select_from(user_group_members))

    again = seed_demo(db)

    assert again.imported is None
    assert (again.users_created, again.groups_created, again.memberships_added) == (0, 0, 0)
    assert not again.feedback_group_set
    assert dict(db.execute(select(User.uid, User.password_hash)).all()) == hashes
    assert db.scalar(select(func.count()).select_from(user_group_members)) == memberships


def test_seed_demo_keeps_a_configured_admin_password_and_feedback_group(db: Session) -> None:
    import_metadata(db, [load_file(DATA_DIR / name) for name in sorted(DATA_DIR.glob("*.json*"))])
    admin = accounts.get_user_by_username(db, "admin")
    assert admin is not None
    accounts.update_user(db, admin, password="changed password")
    other = db.scalars(select(UserGroup).where(UserGroup.uid == "lFHP5lLkzVr")).one()
    system_settings.set_feedback_group(db, other)

    report = seed_demo(db)

    assert report.imported is None
    assert not report.feedback_group_set
    assert verify_password("changed password", admin.password_hash)
    assert system_settings.feedback_group(db) == other


def test_seed_demo_refuses_when_a_demo_username_is_taken(db: Session) -> None:
    accounts.create_user(db, "bo_me")
    with pytest.raises(Conflict, match="bo_me"):
        seed_demo(db)


def test_demo_uid_format() -> None:
    uids = {demo_uid("ou", "role", n) for n in range(2000)}
    assert len(uids) == 2000
    assert all(is_uid(uid) for uid in uids)


def test_facility_types_match_the_recipe() -> None:
    units = load_file(DATA_DIR / "sierra_leone_organisation_units.json.gz")["organisationUnits"]
    open_facilities = [u["name"] for u in units if u["level"] == 4 and "closedDate" not in u]
    kinds = collections.Counter(facility_type(name) for name in open_facilities)
    assert kinds == {"MCHP": 613, "CHP": 238, "CHC": 185, "Clinic": 53, "Hospital": 29, "other": 43}
