"""Small builders for test data. Each flushes and returns the ORM object; nothing commits."""

from __future__ import annotations

import itertools

from sqlalchemy import insert
from sqlalchemy.orm import Session

from service.db import new_uid
from service.models import (
    OrgUnit,
    OrgUnitGroup,
    User,
    UserGroup,
    org_unit_group_members,
    user_group_members,
    user_org_units,
)
from service.system_settings import set_feedback_group

_seq = itertools.count(1)


def org_unit(db: Session, name: str | None = None, parent: OrgUnit | None = None) -> OrgUnit:
    uid = new_uid()
    ou = OrgUnit(
        uid=uid,
        name=name or f"Unit {next(_seq)}",
        level=(parent.level + 1) if parent else 1,
        path=f"{parent.path if parent else ''}/{uid}",
        parent_id=parent.id if parent else None,
    )
    db.add(ou)
    db.flush()
    return ou


def user(
    db: Session,
    username: str | None = None,
    *,
    units: tuple[OrgUnit, ...] = (),
    groups: tuple[UserGroup, ...] = (),
    disabled: bool = False,
    admin: bool = False,
    broadcaster: bool = False,
    first_name: str | None = None,
    surname: str | None = None,
) -> User:
    u = User(
        username=username or f"user{next(_seq)}",
        disabled=disabled,
        is_admin=admin,
        is_broadcaster=broadcaster,
        first_name=first_name,
        surname=surname,
    )
    db.add(u)
    db.flush()
    for ou in units:
        db.execute(insert(user_org_units).values(user_id=u.id, org_unit_id=ou.id))
    for g in groups:
        db.execute(insert(user_group_members).values(user_id=u.id, group_id=g.id))
    db.flush()
    db.refresh(u)
    return u


def user_group(db: Session, name: str | None = None, members: tuple[User, ...] = ()) -> UserGroup:
    g = UserGroup(name=name or f"Group {next(_seq)}")
    db.add(g)
    db.flush()
    for m in members:
        db.execute(insert(user_group_members).values(user_id=m.id, group_id=g.id))
    db.flush()
    return g


def org_unit_group(
    db: Session, units: tuple[OrgUnit, ...], name: str | None = None
) -> OrgUnitGroup:
    g = OrgUnitGroup(name=name or f"OU group {next(_seq)}")
    db.add(g)
    db.flush()
    for ou in units:
        db.execute(insert(org_unit_group_members).values(org_unit_id=ou.id, group_id=g.id))
    db.flush()
    return g


def add_to_group(db: Session, group: UserGroup, *members: User) -> None:
    for m in members:
        db.execute(insert(user_group_members).values(user_id=m.id, group_id=group.id))
    db.flush()


def feedback_team(db: Session, *members: User) -> UserGroup:
    group = user_group(db, "Feedback Message Recipients", members)
    set_feedback_group(db, group)
    return group
