"""Import DHIS2 metadata JSON: organisation units, organisation unit groups, user groups, users.

What is read, from any number of documents (the top-level objects of DHIS2 metadata files, for
example `/api/metadata` exports, `/api/organisationUnits` responses or the team's data files):

* `organisationUnits`: `id`, `name`, `shortName`, `code`, `parent {id}`, `openingDate`,
  `closedDate`, and optionally `level` and `path`. Level and path are always derived from the parent
  chain (the synthetic performance set has neither); when a record gives them they must agree.
* `organisationUnitGroups`: `id`, `name`, `code`, `organisationUnits [{id}]`.
* `userGroups`: `id`, `name`, `code`, members as `users [{id}]` and/or `users_known_subset [{id}]`.
* `users`: `id`, `username`, `firstName`, `surname` (or, when both are absent, `displayName` split
  at its first space), `email`, `disabled`, `password`, `organisationUnits [{id}]`,
  `userGroups [{id}]`. The pre-2.38 nesting under `userCredentials` (username, password, disabled)
  is read too. Group membership may be given on the user, on the group, or both: the union counts.

Everything else is ignored: other top-level kinds (listed in `ImportReport.ignored`) and references
to kinds the service does not keep (`userRoles`, `programs`, `dataViewOrganisationUnits`, a
group's `owner`, ...). A reference to an organisation unit, group or user that is neither in the
documents nor already stored is an error.

Rules, chosen so a re-import is safe:

* DHIS2 `id` becomes our `uid`; records are upserted by uid (ids are unique per kind of object, so
  a user and an organisation unit may share one). A record is authoritative for the fields it
  describes: an absent `code` clears the stored code, an absent `parent` makes a root. Three
  exceptions: an absent `username` or `password` keeps the stored one (DHIS2 never exports
  passwords), and `is_admin`/`is_broadcaster` are ours, not DHIS2's, so an import never touches
  them.
* Memberships are only ever added (insert-or-ignore), never removed: the user-group files carry
  partial member lists (`users_known_subset`), and an import must not silently drop members.
* A user without a username gets `dhis2-<uid>` (deterministic and unique, because uids are); a
  re-import of such a record keeps whatever username the stored user has by then.
* `password` must be a bcrypt hash (`$2a$`, `$2b$` or `$2y$`, as DHIS2 stores them); `$2y$` is
  stored as the equivalent `$2b$`, which the bcrypt library verifies. Anything else is refused:
  storing a plain-text password would be a breach and dropping it silently would leave the user
  unable to sign in with no hint why. Set such passwords with `flask --app web set-password`.
* Moving an organisation unit to a new parent re-derives the path and level of every stored
  descendant too, and a move that would make a cycle is refused.
* Everything is validated before anything is written: a malformed document raises InvalidInput
  naming the record (e.g. `users[12] (id abc, username x): ...`) and the session is left as it
  was. The caller commits, so nothing of a failed import is ever stored.

Writes are set-based (bulk INSERT ... RETURNING, bulk UPDATE by primary key, insert-or-ignore for
memberships) with uid -> id dictionaries, so 10,000 units and 5,000 users take seconds.
"""

from __future__ import annotations

import datetime as dt
import gzip
import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, insert, select, update
from sqlalchemy.orm import Session

from service.accounts import check_username
from service.db import insert_ignore, is_uid
from service.errors import InvalidInput
from service.models import (
    OrgUnit,
    OrgUnitGroup,
    User,
    UserGroup,
    org_unit_group_members,
    user_group_members,
    user_org_units,
)

Progress = Callable[[str, int, int], None]

# Rows per INSERT/UPDATE statement and uids per IN list: small enough for SQLite's bound-parameter
# limit and for memory, large enough that round trips do not dominate. Progress is reported after
# each such statement of organisation units and users.
CHUNK = 1000
DERIVED_USERNAME_PREFIX = "dhis2-"

KINDS = ("organisationUnits", "organisationUnitGroups", "userGroups", "users")

_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12]\d|3[01])\$[./A-Za-z0-9]{53}")

_ORG_UNIT = cast(Table, OrgUnit.__table__)
_ORG_UNIT_GROUP = cast(Table, OrgUnitGroup.__table__)
_USER_GROUP = cast(Table, UserGroup.__table__)
_USER = cast(Table, User.__table__)

# Column lengths, checked here so an over-long value is named like any other fault (SQLite would
# store it silently and PostgreSQL would fail on the whole batch).
_NAME_MAX = 230
_SHORT_NAME_MAX = 50
_CODE_MAX = 50
_PERSON_NAME_MAX = 160
_EMAIL_MAX = 255
_PATH_MAX = 400


@dataclass(frozen=True)
class ImportReport:
    """What an import did. `updated` counts stored objects whose fields changed; memberships count
    rows actually inserted. A re-import of the same documents reports zero of everything but
    `unchanged`."""

    org_units_created: int = 0
    org_units_updated: int = 0
    # Stored units outside the documents whose path and level changed because an ancestor moved.
    org_units_repathed: int = 0
    org_unit_groups_created: int = 0
    org_unit_groups_updated: int = 0
    user_groups_created: int = 0
    user_groups_updated: int = 0
    users_created: int = 0
    users_updated: int = 0
    org_unit_group_members_added: int = 0
    user_group_members_added: int = 0
    user_org_units_added: int = 0
    unchanged: int = 0
    # Top-level keys of the documents that hold kinds of object the service does not keep.
    ignored: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line per kind, for command-line output."""
        return "\n".join(
            [
                f"organisation units: {self.org_units_created} created, "
                f"{self.org_units_updated} updated, {self.org_units_repathed} re-pathed",
                f"organisation unit groups: {self.org_unit_groups_created} created, "
                f"{self.org_unit_groups_updated} updated, "
                f"{self.org_unit_group_members_added} members added",
                f"user groups: {self.user_groups_created} created, "
                f"{self.user_groups_updated} updated, "
                f"{self.user_group_members_added} members added",
                f"users: {self.users_created} created, {self.users_updated} updated, "
                f"{self.user_org_units_added} organisation unit assignments added",
                f"unchanged: {self.unchanged}",
            ]
            + ([f"ignored: {', '.join(self.ignored)}"] if self.ignored else [])
        )


def load_file(path: str | Path) -> dict[str, Any]:
    """Read one DHIS2 metadata document from `.json` or `.json.gz`.

    Raises InvalidInput naming the file when it is not JSON or not a JSON object.
    """
    path = Path(path)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                data = json.load(fh)
        else:
            with path.open(encoding="utf-8") as fh:
                data = json.load(fh)
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"{path}: cannot read a JSON document: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: a DHIS2 metadata document must be a JSON object")
    return data


# ---------------------------------------------------------------------------------------------
# Validated records


@dataclass
class _Unit:
    where: str
    order: int
    uid: str
    name: str
    short_name: str | None
    code: str | None
    parent_uid: str | None
    level: int | None
    path: str | None
    opening_date: dt.datetime | None
    closed_date: dt.datetime | None


@dataclass
class _Group:
    """An organisation unit group (members are units) or a user group (members are users)."""

    where: str
    uid: str
    name: str
    code: str | None
    members: list[str]


@dataclass
class _User:
    where: str
    uid: str
    username: str | None
    first_name: str | None
    surname: str | None
    email: str | None
    disabled: bool
    password_hash: str | None
    org_units: list[str]
    groups: list[str]


@dataclass
class _Parsed:
    units: dict[str, _Unit] = field(default_factory=dict)
    unit_groups: dict[str, _Group] = field(default_factory=dict)
    user_groups: dict[str, _Group] = field(default_factory=dict)
    users: dict[str, _User] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)


def _fail(where: str, message: str) -> InvalidInput:
    return InvalidInput(f"{where}: {message}")


def _describe(prefix: str, kind: str, index: int, rec: object) -> str:
    """How an error names a record: position, and id and name/username where they are usable."""
    head = f"{prefix}{kind}[{index}]"
    if not isinstance(rec, dict):
        return head
    parts = []
    rid = rec.get("id")
    parts.append(f"id {rid}" if isinstance(rid, str) else "no id")
    label_key = "username" if kind == "users" else "name"
    label = rec.get(label_key)
    if isinstance(label, str):
        parts.append(f"{label_key} {label!r}" if label != label.strip() else f"{label_key} {label}")
    return f"{head} ({', '.join(parts)})"


def _uid(rec: dict[str, Any], where: str) -> str:
    value = rec.get("id")
    if value is None:
        raise _fail(where, "id is missing")
    if not is_uid(value):
        raise _fail(where, f"id {value!r} is not a DHIS2 uid (a letter, then 10 letters or digits)")
    return cast(str, value)


def _str(rec: dict[str, Any], key: str, where: str, limit: int, *, required: bool) -> str | None:
    value = rec.get(key)
    if value is None:
        if required:
            raise _fail(where, f"{key} is missing")
        return None
    if not isinstance(value, str):
        raise _fail(where, f"{key} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise _fail(where, f"{key} must not be blank")
    if len(value) > limit:
        raise _fail(where, f"{key} is longer than {limit} characters")
    return value


def _bool(rec: dict[str, Any], key: str, where: str) -> bool | None:
    value = rec.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise _fail(where, f"{key} must be true or false, got {value!r}")


def _date(rec: dict[str, Any], key: str, where: str) -> dt.datetime | None:
    value = rec.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _fail(where, f"{key} must be an ISO date string, got {type(value).__name__}")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise _fail(where, f"{key} {value!r} is not an ISO date") from None
    # DHIS2 writes server-local timestamps without a zone; UTC is the only honest reading here.
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)


def _ref(value: object, key: str, where: str) -> str:
    if not isinstance(value, dict):
        raise _fail(where, f'{key} must hold objects like {{"id": ...}}, got {value!r}')
    rid = value.get("id")
    if not is_uid(rid):
        raise _fail(where, f"{key} holds id {rid!r}, which is not a DHIS2 uid")
    return cast(str, rid)


def _refs(rec: dict[str, Any], key: str, where: str) -> list[str]:
    value = rec.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(where, f"{key} must be a list, got {type(value).__name__}")
    return [_ref(item, key, where) for item in value]


def _password(value: object, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _BCRYPT.fullmatch(value):
        raise _fail(
            where,
            "password is not a bcrypt hash; plain-text passwords are not imported "
            "(set them with `flask --app web set-password`)",
        )
    # $2y$ (PHP's name) and $2b$ are the same algorithm; the bcrypt library only accepts $2b$.
    return "$2b$" + value[4:] if value.startswith("$2y$") else value


def _parse_unit(rec: dict[str, Any], where: str, order: int) -> _Unit:
    parent = rec.get("parent")
    level = rec.get("level")
    if level is not None and (type(level) is not int or level < 1):
        raise _fail(where, f"level must be a positive whole number, got {level!r}")
    path = rec.get("path")
    if path is not None and not isinstance(path, str):
        raise _fail(where, f"path must be a string, got {type(path).__name__}")
    return _Unit(
        where=where,
        order=order,
        uid=_uid(rec, where),
        name=cast(str, _str(rec, "name", where, _NAME_MAX, required=True)),
        short_name=_str(rec, "shortName", where, _SHORT_NAME_MAX, required=False),
        code=_str(rec, "code", where, _CODE_MAX, required=False),
        parent_uid=None if parent is None else _ref(parent, "parent", where),
        level=level,
        path=path,
        opening_date=_date(rec, "openingDate", where),
        closed_date=_date(rec, "closedDate", where),
    )


def _parse_unit_group(rec: dict[str, Any], where: str) -> _Group:
    return _Group(
        where=where,
        uid=_uid(rec, where),
        name=cast(str, _str(rec, "name", where, _NAME_MAX, required=True)),
        code=_str(rec, "code", where, _CODE_MAX, required=False),
        members=list(dict.fromkeys(_refs(rec, "organisationUnits", where))),
    )


def _parse_user_group(rec: dict[str, Any], where: str) -> _Group:
    members = _refs(rec, "users", where) + _refs(rec, "users_known_subset", where)
    return _Group(
        where=where,
        uid=_uid(rec, where),
        name=cast(str, _str(rec, "name", where, _NAME_MAX, required=True)),
        code=_str(rec, "code", where, _CODE_MAX, required=False),
        members=list(dict.fromkeys(members)),
    )


def _parse_user(rec: dict[str, Any], where: str) -> _User:
    uid = _uid(rec, where)
    creds = rec.get("userCredentials")
    if creds is not None and not isinstance(creds, dict):
        raise _fail(where, "userCredentials must be an object")
    creds = creds or {}
    username = rec.get("username", creds.get("username"))
    if username is not None:
        problem = check_username(username)
        if problem is not None:
            raise _fail(where, f"username {username!r}: {problem}")
    first_name = _str(rec, "firstName", where, _PERSON_NAME_MAX, required=False)
    surname = _str(rec, "surname", where, _PERSON_NAME_MAX, required=False)
    if first_name is None and surname is None:
        display = _str(rec, "displayName", where, 2 * _PERSON_NAME_MAX, required=False)
        if display is not None and display.strip():
            head, _, tail = display.strip().partition(" ")
            first_name, surname = head[:_PERSON_NAME_MAX], (tail.strip() or None)
            if surname is not None and len(surname) > _PERSON_NAME_MAX:
                raise _fail(where, f"displayName is longer than {2 * _PERSON_NAME_MAX} characters")
    email = _str(rec, "email", where, _EMAIL_MAX, required=False) or None
    disabled = _bool(rec, "disabled", where)
    if disabled is None:
        disabled = _bool(creds, "disabled", where)
    return _User(
        where=where,
        uid=uid,
        username=username,
        first_name=first_name,
        surname=surname,
        email=email,
        disabled=bool(disabled),
        password_hash=_password(rec.get("password", creds.get("password")), where),
        org_units=list(dict.fromkeys(_refs(rec, "organisationUnits", where))),
        groups=list(dict.fromkeys(_refs(rec, "userGroups", where))),
    )


def _parse(documents: Sequence[object], names: Sequence[str] | None) -> _Parsed:
    parsed = _Parsed()
    ignored: dict[str, None] = {}
    first_seen: dict[tuple[str, str], str] = {}
    order = 0
    for doc_index, doc in enumerate(documents):
        if names is not None:
            prefix = f"{names[doc_index]}: "
        else:
            prefix = f"document {doc_index + 1}: " if len(documents) > 1 else ""
        if not isinstance(doc, dict):
            raise InvalidInput(
                f"{prefix or 'document: '}a DHIS2 metadata document must be an object"
            )
        for key in doc:
            if key not in KINDS:
                ignored[key] = None
        for kind in KINDS:
            records = doc.get(kind)
            if records is None:
                continue
            if not isinstance(records, list):
                raise InvalidInput(f"{prefix}{kind} must be a list, got {type(records).__name__}")
            for index, rec in enumerate(records):
                where = _describe(prefix, kind, index, rec)
                if not isinstance(rec, dict):
                    raise _fail(where, f"must be an object, got {type(rec).__name__}")
                uid = _uid(rec, where)
                earlier = first_seen.get((kind, uid))
                if earlier is not None:
                    raise _fail(where, f"id {uid} is given twice (first at {earlier})")
                first_seen[(kind, uid)] = where
                if kind == "organisationUnits":
                    parsed.units[uid] = _parse_unit(rec, where, order)
                    order += 1
                elif kind == "organisationUnitGroups":
                    parsed.unit_groups[uid] = _parse_unit_group(rec, where)
                elif kind == "userGroups":
                    parsed.user_groups[uid] = _parse_user_group(rec, where)
                else:
                    parsed.users[uid] = _parse_user(rec, where)
    parsed.ignored = list(ignored)
    return parsed


# ---------------------------------------------------------------------------------------------
# Reading what is stored


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _rows_by_uid(
    session: Session, table: Table, columns: Iterable[str], uids: Iterable[str]
) -> dict[str, Any]:
    """Stored rows of `table` whose uid is in `uids`, keyed by uid (chunked IN lists)."""
    wanted = sorted(set(uids))
    cols = [table.c.uid, *(table.c[name] for name in columns)]
    found: dict[str, Any] = {}
    for chunk in _chunks(wanted):
        for row in session.execute(select(*cols).where(table.c.uid.in_(chunk))):
            found[row.uid] = row
    return found


# ---------------------------------------------------------------------------------------------
# The tree


@dataclass
class _Tree:
    """Stored units merged with the documents' units: the tree as it will be after the import."""

    parent_of: dict[str, str | None]
    path_of: dict[str, str]
    stored: dict[str, Any]


def _build_tree(session: Session, units: dict[str, _Unit]) -> _Tree:
    # The whole stored tree is read (four small columns): a unit moved by the documents changes
    # the path of stored descendants the documents may not mention.
    stored: dict[str, Any] = {
        row.uid: row
        for row in session.execute(
            select(
                _ORG_UNIT.c.id,
                _ORG_UNIT.c.uid,
                _ORG_UNIT.c.parent_id,
                _ORG_UNIT.c.path,
                _ORG_UNIT.c.level,
                _ORG_UNIT.c.name,
                _ORG_UNIT.c.short_name,
                _ORG_UNIT.c.code,
                _ORG_UNIT.c.opening_date,
                _ORG_UNIT.c.closed_date,
            )
        )
    }
    uid_of_id = {row.id: uid for uid, row in stored.items()}
    parent_of: dict[str, str | None] = {
        uid: (None if row.parent_id is None else uid_of_id[row.parent_id])
        for uid, row in stored.items()
    }
    for unit in units.values():
        parent_of[unit.uid] = unit.parent_uid
    for unit in units.values():
        if unit.parent_uid is not None and unit.parent_uid not in parent_of:
            raise _fail(
                unit.where, f"parent references unknown organisation unit {unit.parent_uid}"
            )

    path_of: dict[str, str] = {}
    for start in parent_of:
        if start in path_of:
            continue
        chain: list[str] = []
        on_chain: set[str] = set()
        node: str | None = start
        while node is not None and node not in path_of:
            if node in on_chain:
                loop = chain[chain.index(node) :]
                # Stored data is a tree, so the loop holds at least one unit from the documents.
                culprit = min((units[u] for u in loop if u in units), key=lambda u: u.order)
                shown = " -> ".join([*loop, node])
                raise _fail(culprit.where, f"the parent chain loops back on itself: {shown}")
            on_chain.add(node)
            chain.append(node)
            node = parent_of[node]
        base = "" if node is None else path_of[node]
        for uid in reversed(chain):
            base = f"{base}/{uid}"
            path_of[uid] = base
    return _Tree(parent_of=parent_of, path_of=path_of, stored=stored)


def _level(path: str) -> int:
    return path.count("/")


# ---------------------------------------------------------------------------------------------
# The import


def _deduplicated(callback: Progress | None) -> Progress:
    """The callback, told each (stage, done, total) once: a stage's end may be reported twice."""
    last: list[tuple[str, int, int]] = []

    def report(stage: str, done: int, total: int) -> None:
        if callback is None or last == [(stage, done, total)]:
            return
        last[:] = [(stage, done, total)]
        callback(stage, done, total)

    return report


def _insert_returning(session: Session, table: Table, rows: list[dict[str, Any]]) -> dict[str, int]:
    """Insert `rows` in one statement per CHUNK and return uid -> new id."""
    ids: dict[str, int] = {}
    for chunk in _chunks(rows):
        result = session.execute(insert(table).returning(table.c.uid, table.c.id), list(chunk))
        ids.update((uid, pk) for uid, pk in result)
    return ids


def _bulk_update(session: Session, model: type[Any], rows: list[dict[str, Any]]) -> None:
    """UPDATE by primary key, one executemany per CHUNK (rows carry "id")."""
    for chunk in _chunks(rows):
        session.execute(update(model), list(chunk))


def _insert_pairs(session: Session, table: Table, rows: list[dict[str, int]]) -> int:
    """Insert-or-ignore membership rows; returns how many were really new."""
    added = 0
    first = next(iter(table.primary_key.columns))
    for chunk in _chunks(rows):
        result = session.execute(insert_ignore(session, table).returning(first), list(chunk))
        added += len(result.all())
    return added


def import_metadata(
    session: Session,
    documents: Sequence[dict[str, Any]],
    progress: Progress | None = None,
    *,
    names: Sequence[str] | None = None,
) -> ImportReport:
    """Validate all `documents`, then upsert their units, groups and users (see the module doc).

    `progress(stage, done, total)` is called every CHUNK records written and at the end of each
    stage (stages: organisationUnits, organisationUnitGroups, userGroups, users, memberships).
    `names` (one per document, e.g. file names) prefix error messages. Raises
    InvalidInput naming the faulty record, before anything is written. Never commits: the caller
    does, once, so a failed import leaves nothing behind.
    """
    if names is not None and len(names) != len(documents):
        raise ValueError("names must have one entry per document")
    # Pending ORM changes go out first: the bulk statements below bypass the identity map.
    session.flush()
    parsed = _parse(documents, names)
    tree = _build_tree(session, parsed.units)
    plan = _plan(session, parsed, tree)
    report = _write(session, parsed, tree, plan, _deduplicated(progress))
    # Objects the caller holds may describe rows just rewritten in bulk.
    session.expire_all()
    return report


@dataclass
class _Plan:
    unit_groups_stored: dict[str, Any]
    user_groups_stored: dict[str, Any]
    users_stored: dict[str, Any]
    final_username: dict[str, str]


def _plan(session: Session, parsed: _Parsed, tree: _Tree) -> _Plan:
    """Every check that needs the database, before any write."""
    for unit in parsed.units.values():
        path = tree.path_of[unit.uid]
        if unit.path is not None and unit.path != path:
            raise _fail(unit.where, f"path {unit.path} disagrees with the parent chain ({path})")
        if unit.level is not None and unit.level != _level(path):
            raise _fail(
                unit.where, f"level {unit.level} disagrees with the parent chain ({_level(path)})"
            )
        if len(path) > _PATH_MAX:
            raise _fail(unit.where, f"the hierarchy is too deep (path over {_PATH_MAX} characters)")
    for group in parsed.unit_groups.values():
        for ref in group.members:
            if ref not in tree.parent_of:
                raise _fail(
                    group.where, f"organisationUnits references unknown organisation unit {ref}"
                )

    referenced_groups = {g for user in parsed.users.values() for g in user.groups}
    user_groups_stored = _rows_by_uid(
        session, _USER_GROUP, ("id", "name", "code"), set(parsed.user_groups) | referenced_groups
    )
    referenced_users = {u for group in parsed.user_groups.values() for u in group.members}
    users_stored = _rows_by_uid(
        session,
        _USER,
        ("id", "username", "first_name", "surname", "email", "disabled", "password_hash"),
        set(parsed.users) | referenced_users,
    )
    unit_groups_stored = _rows_by_uid(
        session, _ORG_UNIT_GROUP, ("id", "name", "code"), parsed.unit_groups
    )

    for user in parsed.users.values():
        for ref in user.org_units:
            if ref not in tree.parent_of:
                raise _fail(
                    user.where, f"organisationUnits references unknown organisation unit {ref}"
                )
        for ref in user.groups:
            if ref not in parsed.user_groups and ref not in user_groups_stored:
                raise _fail(user.where, f"userGroups references unknown user group {ref}")
    for group in parsed.user_groups.values():
        for ref in group.members:
            if ref not in parsed.users and ref not in users_stored:
                raise _fail(group.where, f"users references unknown user {ref}")

    final_username: dict[str, str] = {}
    owner: dict[str, str] = {}
    for user in parsed.users.values():
        stored = users_stored.get(user.uid)
        if user.username is not None:
            name = user.username
        elif stored is not None:
            name = stored.username
        else:
            name = DERIVED_USERNAME_PREFIX + user.uid
        if name in owner:
            earlier = parsed.users[owner[name]].where
            raise _fail(user.where, f"username {name} is also given to {earlier}")
        owner[name] = user.uid
        final_username[user.uid] = name
    # A stored user keeps its name unless the documents rename it, so a clash with a stored user
    # outside the documents is a conflict; a clash with one inside is a rename and is fine.
    for chunk in _chunks(sorted(owner)):
        taken = session.execute(
            select(_USER.c.username, _USER.c.uid).where(_USER.c.username.in_(chunk))
        )
        for username, holder in taken:
            if holder not in parsed.users:
                user = parsed.users[owner[username]]
                raise _fail(user.where, f"username {username} is taken by stored user {holder}")
    return _Plan(
        unit_groups_stored=unit_groups_stored,
        user_groups_stored=user_groups_stored,
        users_stored=users_stored,
        final_username=final_username,
    )


def _write(
    session: Session, parsed: _Parsed, tree: _Tree, plan: _Plan, progress: Progress
) -> ImportReport:
    counts: dict[str, int] = dict.fromkeys(
        (
            "org_units_created",
            "org_units_updated",
            "org_units_repathed",
            "org_unit_groups_created",
            "org_unit_groups_updated",
            "user_groups_created",
            "user_groups_updated",
            "users_created",
            "users_updated",
            "org_unit_group_members_added",
            "user_group_members_added",
            "user_org_units_added",
            "unchanged",
        ),
        0,
    )
    unit_ids = _write_units(session, parsed, tree, progress, counts)
    _write_unit_groups(session, parsed, plan, unit_ids, progress, counts)
    group_ids = _write_named(
        session,
        _USER_GROUP,
        UserGroup,
        parsed.user_groups,
        plan.user_groups_stored,
        "user_groups",
        counts,
    )
    progress("userGroups", len(parsed.user_groups), len(parsed.user_groups))
    user_ids = _write_users(session, parsed, plan, progress, counts)

    pairs = {(g, u.uid) for u in parsed.users.values() for g in u.groups}
    pairs.update((g.uid, m) for g in parsed.user_groups.values() for m in g.members)
    total = len(pairs) + sum(len(u.org_units) for u in parsed.users.values())
    counts["user_group_members_added"] = _insert_pairs(
        session,
        user_group_members,
        [{"group_id": group_ids[g], "user_id": user_ids[u]} for g, u in sorted(pairs)],
    )
    progress("memberships", len(pairs), total)
    counts["user_org_units_added"] = _insert_pairs(
        session,
        user_org_units,
        [
            {"user_id": user_ids[u.uid], "org_unit_id": unit_ids[ou]}
            for u in parsed.users.values()
            for ou in u.org_units
        ],
    )
    progress("memberships", total, total)
    return ImportReport(ignored=tuple(parsed.ignored), **counts)


def _write_units(
    session: Session, parsed: _Parsed, tree: _Tree, progress: Progress, counts: dict[str, int]
) -> dict[str, int]:
    """Insert new units parents first, update changed ones, re-path moved stored descendants."""
    unit_ids = {uid: row.id for uid, row in tree.stored.items()}
    total = len(parsed.units)
    done = 0
    # New units by depth: a new unit's parent is stored or new and one level up, so inserting
    # level by level always knows the parent's id. A statement holds one level's units only.
    new = sorted(
        (u for u in parsed.units.values() if u.uid not in tree.stored),
        key=lambda u: (_level(tree.path_of[u.uid]), u.order),
    )
    for chunk in _chunks(new):
        for level, units in itertools.groupby(chunk, key=lambda u: _level(tree.path_of[u.uid])):
            rows = [
                {
                    "uid": unit.uid,
                    "name": unit.name,
                    "short_name": unit.short_name,
                    "code": unit.code,
                    "level": level,
                    "path": tree.path_of[unit.uid],
                    "parent_id": None if unit.parent_uid is None else unit_ids[unit.parent_uid],
                    "opening_date": unit.opening_date,
                    "closed_date": unit.closed_date,
                }
                for unit in units
            ]
            unit_ids.update(_insert_returning(session, _ORG_UNIT, rows))
        done += len(chunk)
        progress("organisationUnits", done, total)
    counts["org_units_created"] = done

    changes: list[dict[str, Any]] = []
    for unit in parsed.units.values():
        stored = tree.stored.get(unit.uid)
        if stored is None:
            continue
        path = tree.path_of[unit.uid]
        wanted = {
            "name": unit.name,
            "short_name": unit.short_name,
            "code": unit.code,
            "level": _level(path),
            "path": path,
            "parent_id": None if unit.parent_uid is None else unit_ids[unit.parent_uid],
            "opening_date": unit.opening_date,
            "closed_date": unit.closed_date,
        }
        diff = {k: v for k, v in wanted.items() if getattr(stored, k) != v}
        if diff:
            changes.append({"id": stored.id, **diff})
        else:
            counts["unchanged"] += 1
    counts["org_units_updated"] = len(changes)
    for uid, stored in tree.stored.items():
        if uid in parsed.units:
            continue
        path = tree.path_of[uid]
        if stored.path != path:
            changes.append({"id": stored.id, "path": path, "level": _level(path)})
            counts["org_units_repathed"] += 1
    _bulk_update(session, OrgUnit, changes)
    progress("organisationUnits", total, total)
    return unit_ids


def _write_named(
    session: Session,
    table: Table,
    model: type[Any],
    records: dict[str, _Group],
    stored: dict[str, Any],
    counter: str,
    counts: dict[str, int],
) -> dict[str, int]:
    """Upsert groups (uid, name, code); returns uid -> id for the documents' and stored groups."""
    ids = {uid: row.id for uid, row in stored.items()}
    new = [
        {"uid": g.uid, "name": g.name, "code": g.code}
        for g in records.values()
        if g.uid not in stored
    ]
    ids.update(_insert_returning(session, table, new))
    changes = []
    for group in records.values():
        row = stored.get(group.uid)
        if row is None:
            continue
        if (row.name, row.code) != (group.name, group.code):
            changes.append({"id": row.id, "name": group.name, "code": group.code})
        else:
            counts["unchanged"] += 1
    _bulk_update(session, model, changes)
    counts[f"{counter}_created"] = len(new)
    counts[f"{counter}_updated"] = len(changes)
    return ids


def _write_unit_groups(
    session: Session,
    parsed: _Parsed,
    plan: _Plan,
    unit_ids: dict[str, int],
    progress: Progress,
    counts: dict[str, int],
) -> None:
    group_ids = _write_named(
        session,
        _ORG_UNIT_GROUP,
        OrgUnitGroup,
        parsed.unit_groups,
        plan.unit_groups_stored,
        "org_unit_groups",
        counts,
    )
    counts["org_unit_group_members_added"] = _insert_pairs(
        session,
        org_unit_group_members,
        [
            {"group_id": group_ids[g.uid], "org_unit_id": unit_ids[ou]}
            for g in parsed.unit_groups.values()
            for ou in g.members
        ],
    )
    progress("organisationUnitGroups", len(parsed.unit_groups), len(parsed.unit_groups))


def _write_users(
    session: Session, parsed: _Parsed, plan: _Plan, progress: Progress, counts: dict[str, int]
) -> dict[str, int]:
    user_ids = {uid: row.id for uid, row in plan.users_stored.items()}
    total = len(parsed.users)
    new_rows = []
    changes = []
    renamed = []
    for user in parsed.users.values():
        wanted: dict[str, Any] = {
            "username": plan.final_username[user.uid],
            "first_name": user.first_name,
            "surname": user.surname,
            "email": user.email,
            "disabled": user.disabled,
        }
        # An absent password keeps the stored one: DHIS2 exports never carry passwords.
        if user.password_hash is not None:
            wanted["password_hash"] = user.password_hash
        stored = plan.users_stored.get(user.uid)
        if stored is None:
            new_rows.append({"uid": user.uid, **wanted})
            continue
        diff = {k: v for k, v in wanted.items() if getattr(stored, k) != v}
        if diff:
            changes.append({"id": stored.id, **diff})
            if "username" in diff:
                renamed.append({"id": stored.id, "username": f" renaming {user.uid}"})
        else:
            counts["unchanged"] += 1
    # Renames go through unique placeholders first (with a space, which no real username has), so
    # two users may swap names in one import without a transient unique-constraint violation.
    _bulk_update(session, User, renamed)
    _bulk_update(session, User, changes)
    done = 0
    for chunk in _chunks(new_rows):
        user_ids.update(_insert_returning(session, _USER, list(chunk)))
        done += len(chunk)
        progress("users", done, total)
    counts["users_created"] = len(new_rows)
    counts["users_updated"] = len(changes)
    progress("users", total, total)
    return user_ids
