"""Set-based recipient resolution: a delivery's targets become user ids inside the database.

Nothing here builds a list of recipients in Python. Every function returns a SELECT that the
caller embeds in an INSERT ... SELECT, a COUNT, or a window query, so the database does the joins
over organisation-unit paths and membership tables and removes duplicates itself.

The targets come from a delivery's recorded rows (its id) or, before anything is recorded (the
composer's live count), from internal ids by kind: the same joins either way, so a count shown
before sending follows the rules the fan-out applies.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    exists,
    func,
    literal,
    or_,
    select,
    union,
    union_all,
)
from sqlalchemy.orm import aliased

from service.models import (
    DeliveryTarget,
    Inbox,
    OrgUnit,
    OrgUnitGroup,
    TargetKind,
    User,
    UserGroup,
    org_unit_group_members,
    user_group_members,
    user_org_units,
)

# A delivery's id (its recorded targets), or internal ids by kind that are recorded nowhere yet.
TargetSource = int | Mapping[TargetKind, Collection[int]]

_MODELS: dict[TargetKind, type[User] | type[UserGroup] | type[OrgUnit] | type[OrgUnitGroup]] = {
    TargetKind.USER: User,
    TargetKind.USER_GROUP: UserGroup,
    TargetKind.ORG_UNIT: OrgUnit,
    TargetKind.ORG_UNIT_GROUP: OrgUnitGroup,
}


def _targets(delivery_id: TargetSource, kind: TargetKind) -> Select[tuple[int]]:
    if isinstance(delivery_id, int):
        return select(DeliveryTarget.target_id).where(
            DeliveryTarget.delivery_id == delivery_id, DeliveryTarget.kind == kind.value
        )
    model = _MODELS[kind]
    return select(model.id).where(model.id.in_(sorted(delivery_id.get(kind, ()))))


def target_org_units(delivery_id: TargetSource) -> Select[tuple[int]]:
    """Organisation units named directly or through an organisation-unit group."""
    via_groups = select(org_unit_group_members.c.org_unit_id).where(
        org_unit_group_members.c.group_id.in_(_targets(delivery_id, TargetKind.ORG_UNIT_GROUP))
    )
    return union(_targets(delivery_id, TargetKind.ORG_UNIT), via_groups)  # type: ignore[return-value]


def _reached_units(delivery_id: TargetSource, include_descendants: bool) -> Select[tuple[int]]:
    named = target_org_units(delivery_id).subquery()
    if not include_descendants:
        return select(named.c[0])
    root = aliased(OrgUnit)
    # UIDs have a fixed length, so the path prefix matches exactly the unit and its subtree.
    return (
        select(OrgUnit.id)
        .join(root, OrgUnit.path.startswith(root.path, autoescape=False))
        .where(root.id.in_(select(named.c[0])))
    )


def _routes(
    delivery_id: TargetSource, include_descendants: bool, user_range: tuple[int, int] | None
) -> list[Select[tuple[int]]]:
    """One SELECT of user ids per route (direct, user group, organisation unit)."""

    def bounded(col: ColumnElement[int]) -> ColumnElement[bool]:
        if user_range is None:
            return literal(True)
        return col.between(user_range[0], user_range[1])

    direct = _targets(delivery_id, TargetKind.USER)
    direct = direct.where(bounded(direct.selected_columns[0]))
    by_group = select(user_group_members.c.user_id).where(
        user_group_members.c.group_id.in_(_targets(delivery_id, TargetKind.USER_GROUP)),
        bounded(user_group_members.c.user_id),
    )
    if include_descendants and user_range is not None:
        # A batch starts from its own users' units and tests each against the named subtrees:
        # work in proportion to the batch, not to the whole hierarchy (which every batch would
        # otherwise walk again).
        root = aliased(OrgUnit)
        named = target_org_units(delivery_id).subquery()
        by_unit = (
            select(user_org_units.c.user_id)
            .join(OrgUnit, OrgUnit.id == user_org_units.c.org_unit_id)
            # UIDs have a fixed length: the prefix matches the unit and its subtree only. A unit
            # under two named roots comes twice; the union of the routes removes duplicates.
            .join(root, OrgUnit.path.startswith(root.path, autoescape=False))
            .where(bounded(user_org_units.c.user_id), root.id.in_(select(named.c[0])))
        )
    else:
        by_unit = select(user_org_units.c.user_id).where(
            user_org_units.c.org_unit_id.in_(_reached_units(delivery_id, include_descendants)),
            bounded(user_org_units.c.user_id),
        )
    return [direct, by_group, by_unit]


def _eligible(
    user_id: ColumnElement[int],
    exclude_user_id: int | None,
    user_range: tuple[int, int] | None = None,
) -> ColumnElement[bool]:
    """Active users other than the actor (disabled users receive nothing).

    With a user-id range the users table is read for that range only: without it, the planner
    hashes the whole table for every batch, which makes a fan-out quadratic in the user count.
    """
    cond = exists().where(User.id == user_id, User.disabled.is_(False))
    if user_range is not None:
        cond = exists().where(
            User.id == user_id,
            User.disabled.is_(False),
            User.id.between(user_range[0], user_range[1]),
        )
    if exclude_user_id is not None:
        cond = and_(cond, user_id != exclude_user_id)
    return cond


def recipients(
    delivery_id: TargetSource,
    include_descendants: bool,
    exclude_user_id: int | None,
    user_range: tuple[int, int] | None = None,
) -> Select[tuple[int]]:
    """Distinct ids of the users a SEND delivery reaches, optionally within a user-id range."""
    routes = union(*_routes(delivery_id, include_descendants, user_range)).subquery("routes")
    user_id = routes.c[0].label("user_id")
    return select(user_id).where(_eligible(routes.c[0], exclude_user_id, user_range))


def sample_count(
    delivery_id: int,
    include_descendants: bool,
    exclude_user_id: int | None,
    limit: int,
    not_in_conversation: int | None = None,
) -> Select[tuple[int, int]]:
    """(distinct recipients, routes read) among the first `limit` routes: bounded work. With
    `not_in_conversation`, only people who are not in that conversation yet count.

    When fewer than `limit` routes were read the distinct count is exact; otherwise the true
    number is at least the distinct count and there are at least `limit` routes.
    """
    routes = union_all(*_routes(delivery_id, include_descendants, None)).subquery("routes")
    cond = [_eligible(routes.c[0], exclude_user_id)]
    if not_in_conversation is not None:
        cond.append(
            ~exists().where(
                Inbox.user_id == routes.c[0], Inbox.conversation_id == not_in_conversation
            )
        )
    sample = select(routes.c[0].label("user_id")).where(*cond).limit(limit).subquery("sample")
    return select(func.count(func.distinct(sample.c.user_id)), func.count())


def _inside(allowed_paths: list[str]) -> ColumnElement[bool]:
    if not allowed_paths:
        return literal(False)
    return or_(*(OrgUnit.path.startswith(p, autoescape=True) for p in allowed_paths))


def units_outside(unit_ids: Select[tuple[int]], allowed_paths: list[str]) -> Select[tuple[str]]:
    """UIDs of units in `unit_ids` not inside any subtree whose root path is in `allowed_paths`."""
    return select(OrgUnit.uid).where(OrgUnit.id.in_(unit_ids), ~_inside(allowed_paths))


def named_units_outside(source: TargetSource, allowed_paths: list[str]) -> Select[tuple[str]]:
    """UIDs of the organisation units named directly that lie outside `allowed_paths`."""
    return units_outside(_targets(source, TargetKind.ORG_UNIT), allowed_paths)


def groups_outside(source: TargetSource, allowed_paths: list[str]) -> Select[tuple[str]]:
    """UIDs of the organisation-unit groups named that hold a unit outside `allowed_paths`."""
    outside = (
        select(org_unit_group_members.c.group_id)
        .join(OrgUnit, OrgUnit.id == org_unit_group_members.c.org_unit_id)
        .where(~_inside(allowed_paths))
    )
    return select(OrgUnitGroup.uid).where(
        OrgUnitGroup.id.in_(_targets(source, TargetKind.ORG_UNIT_GROUP)),
        OrgUnitGroup.id.in_(outside),
    )
