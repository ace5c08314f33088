"""Demo users on the real Sierra Leone hierarchy (the recipe in data/dhis2/SOURCES.md).

`seed_demo(session)` imports the Sierra Leone files from data/dhis2 when they are not stored yet,
then adds 1,587 synthetic users next to the real `admin`, 1,588 in all, on open units only:

======== ================================================== =========================== =======
tier     users                                              username                    count
======== ================================================== =========================== =======
national the real admin John Traore `xE7jOejl9FI` + 5 staff ``admin``, ``national1``-5        6
district an M&E officer and a DHMT officer per district     ``bo_me``, ``bo_dhmt``, ...      26
chiefdom a supervisor per chiefdom                          ``badjia_sup``, ...             152
facility Hospital 3, CHC 2, any other 1 per open facility   ``ngelehun_chc1``, ...        1,404
======== ================================================== =========================== =======

Every demo user's password is ``district`` (the Sierra Leone demo's own). The logins to try:

* ``admin``: John Traore, administrator, on Sierra Leone, feedback recipient.
* ``national1``: National Communications Officer, the broadcaster (may send to everyone), and a
  feedback recipient like all national staff.
* ``national2`` .. ``national5``: national staff on Sierra Leone, feedback recipients.
* ``bo_me`` / ``bo_dhmt``: Bo district M&E officer and DHMT officer, in "Bo District M&E officers".
* ``badjia_sup``: supervisor of Badjia chiefdom (Bo), the chiefdom of Ngelehun CHC.
* ``ngelehun_chc1`` / ``ngelehun_chc2``: staff at Ngelehun CHC `DiszpKrYNg8`.

Usernames are the unit's name in lower case with `_` for anything not a letter or digit
(`Port Loko` -> `port_loko_me`); a facility adds its staff number (`bo_govt_hosp_1` where the slug
ends in a digit). Two units whose names give the same slug keep it apart with their chiefdom's slug.
Display names say what the user is ("Bo District M&E Officer", "Ngelehun CHC Staff 1"): none of
them is a real person.

Groups: *Feedback Message Recipients* `QYrzIjSfI8z` (configured as the feedback group when none
is) holds the national staff and admin; each district's M&E group (the real `ZoHNWQajIoe` for Bo
and `th4S6ovwcr8` for Bonthe, new deterministic ones for the other 11) holds its two district
users; the four real programme groups each get a fixed-seed random 10-20% of the facility users.

UIDs are derived from a hash of (org unit uid, role, number), so every run and every database
makes the same users. Seeding is idempotent: users, groups and memberships already there are
left as they are (a changed password stays changed), only what is missing is added. One bcrypt
hash of the password is computed per run and shared, since each costs about a quarter second.
"""

from __future__ import annotations

import hashlib
import random
import re
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from service import system_settings
from service.db import insert_ignore, utcnow
from service.dhis2_import import ImportReport, import_metadata, load_file
from service.errors import Conflict
from service.models import OrgUnit, User, UserGroup, user_group_members, user_org_units
from service.passwords import hash_password

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "dhis2"
DATA_FILES = ("sierra_leone_organisation_units.json.gz", "sierra_leone_users_and_groups.json")
DEMO_PASSWORD = "district"  # noqa: S105  (the published password of every demo login)
# The random programme-group picks depend on this seed only.
DEMO_SEED = 20140601

SIERRA_LEONE = "ImspTQPwCqd"
ADMIN = "xE7jOejl9FI"
FEEDBACK_GROUP = "QYrzIjSfI8z"
DISTRICT_ME_GROUPS = {"O6uvpzGd5pu": "ZoHNWQajIoe", "lc3eMKXaEfw": "th4S6ovwcr8"}
PROGRAM_GROUPS = ("jvrEwEJ2yZn", "hj0nnsVsPLU", "Rg8wusV7QYi", "sZRhXMPbcWc")
NATIONAL_ROLES = (
    "Communications Officer",
    "M&E Officer",
    "HMIS Officer",
    "Programme Manager",
    "Feedback Coordinator",
)
# Staff per open facility by type; anything not a hospital or CHC (MCHP, CHP, clinic, other) has 1.
STAFF_BY_TYPE = {"Hospital": 3, "CHC": 2}

_USER = cast(Table, User.__table__)
_USER_GROUP = cast(Table, UserGroup.__table__)
_CHUNK = 1000


@dataclass(frozen=True)
class DemoLogin:
    username: str
    password: str
    role: str
    org_unit: str


@dataclass(frozen=True)
class DemoReport:
    """What seeding found and did. `users_total` counts the demo users now stored (admin too)."""

    users_created: int
    users_total: int
    groups_created: int
    memberships_added: int
    feedback_group_set: bool
    imported: ImportReport | None
    logins: tuple[DemoLogin, ...]


@dataclass
class _Person:
    uid: str
    username: str
    first_name: str
    surname: str
    org_unit: str
    role: str
    broadcaster: bool = False


def demo_uid(*parts: str | int) -> str:
    """A DHIS2-format uid (a letter, then 10 letters or digits) derived from `parts`."""
    digest = int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest(), "big")
    digest, first = divmod(digest, len(string.ascii_letters))
    chars = [string.ascii_letters[first]]
    alphabet = string.ascii_letters + string.digits
    for _ in range(10):
        digest, index = divmod(digest, len(alphabet))
        chars.append(alphabet[index])
    return "".join(chars)


def facility_type(name: str) -> str:
    """Hospital, Clinic, CHC, MCHP, CHP or other, read from the name in that order.

    The order matters for "Bandajuma Clinic CHC", a clinic here, as in the recipe's counts.
    """
    words = set(re.findall(r"[a-z0-9]+", name.lower()))
    for word, kind in (
        ("hospital", "Hospital"),
        ("clinic", "Clinic"),
        ("chc", "CHC"),
        ("mchp", "MCHP"),
        ("chp", "CHP"),
    ):
        if word in words:
            return kind
    return "other"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _ensure_data(session: Session, data_dir: Path) -> ImportReport | None:
    """Import the Sierra Leone files unless every object the demo builds on is stored."""
    needed_groups = {FEEDBACK_GROUP, *DISTRICT_ME_GROUPS.values(), *PROGRAM_GROUPS}
    have_root = session.scalar(select(OrgUnit.id).where(OrgUnit.uid == SIERRA_LEONE)) is not None
    have_admin = session.scalar(select(User.id).where(User.uid == ADMIN)) is not None
    groups = set(session.scalars(select(UserGroup.uid).where(UserGroup.uid.in_(needed_groups))))
    if have_root and have_admin and groups == needed_groups:
        return None
    documents = [load_file(data_dir / name) for name in DATA_FILES]
    return import_metadata(session, documents, names=list(DATA_FILES))


def _people(session: Session) -> tuple[list[_Person], dict[str, list[str]]]:
    """The synthetic users, and for each district uid its two users' uids."""
    rows = session.execute(
        select(OrgUnit.uid, OrgUnit.name, OrgUnit.level, OrgUnit.path)
        .where(OrgUnit.path.like(f"/{SIERRA_LEONE}/%"), OrgUnit.closed_date.is_(None))
        .order_by(OrgUnit.path)
    ).all()
    name_of = {row.uid: row.name for row in rows}
    people: list[_Person] = []
    district_users: dict[str, list[str]] = {}
    taken: set[str] = {"admin"}

    def add(unit: str, role: str, n: int, username: str, first: str, surname: str) -> _Person:
        if username in taken:
            raise RuntimeError(f"demo username {username} would be given twice")
        taken.add(username)
        person = _Person(demo_uid(unit, role, n), username, first, surname, unit, role)
        people.append(person)
        return person

    for n, role in enumerate(NATIONAL_ROLES, start=1):
        person = add(SIERRA_LEONE, "national", n, f"national{n}", "National", role)
        person.broadcaster = n == 1

    # Unit slugs collide rarely (two "Sonkoya MCHP"); the later one by path adds its parent's slug.
    slugs: dict[str, str] = {}
    used: set[str] = set()
    for row in rows:
        slug = _slug(row.name) or row.uid.lower()
        if slug in used:
            parent = row.path.split("/")[-2]
            slug = f"{slug}_{_slug(name_of.get(parent, parent))}"
        used.add(slug)
        slugs[row.uid] = slug

    for row in rows:
        slug, name = slugs[row.uid], row.name.strip()
        if row.level == 2:
            me = add(row.uid, "district_me", 1, f"{slug}_me", name, "District M&E Officer")
            dhmt = add(row.uid, "district_dhmt", 1, f"{slug}_dhmt", name, "DHMT Officer")
            district_users[row.uid] = [me.uid, dhmt.uid]
        elif row.level == 3:
            add(row.uid, "chiefdom_supervisor", 1, f"{slug}_sup", name, "Chiefdom Supervisor")
        elif row.level == 4:
            sep = "_" if slug[-1].isdigit() else ""
            for n in range(1, STAFF_BY_TYPE.get(facility_type(row.name), 1) + 1):
                add(row.uid, "facility", n, f"{slug}{sep}{n}", name, f"Staff {n}")
    return people, district_users


def seed_demo(session: Session, data_dir: Path = DATA_DIR) -> DemoReport:
    """Make the demo users, groups and settings described in the module docstring.

    Idempotent: a second run adds nothing and changes nothing. Raises Conflict when a demo
    username is held by some other user. Never commits: the caller does.
    """
    imported = _ensure_data(session, data_dir)
    people, district_users = _people(session)
    uids = [p.uid for p in people]

    stored: dict[str, int] = {}
    for chunk in _chunks(uids):
        stored.update(session.execute(select(User.uid, User.id).where(User.uid.in_(chunk))).all())
    missing = [p for p in people if p.uid not in stored]
    for chunk in _chunks([p.username for p in missing]):
        clash = session.execute(select(User.username, User.uid).where(User.username.in_(chunk)))
        for username, holder in clash:
            raise Conflict(f"demo username {username} is already used by user {holder}")

    admin = session.execute(select(User).where(User.uid == ADMIN)).scalar_one()
    password_hash = hash_password(DEMO_PASSWORD) if missing or admin.password_hash is None else None
    if admin.password_hash is None:
        admin.password_hash = password_hash
    admin.is_admin = True
    session.flush()

    now = utcnow()
    created = 0
    for chunk in _chunks(missing):
        result = session.execute(
            insert_ignore(session, _USER).returning(_USER.c.uid, _USER.c.id),
            [
                {
                    "uid": p.uid,
                    "username": p.username,
                    "first_name": p.first_name,
                    "surname": p.surname,
                    "password_hash": password_hash,
                    "is_broadcaster": p.broadcaster,
                    "created_at": now,
                }
                for p in chunk
            ],
        )
        created += len(result.all())
    # Read the ids back rather than trusting RETURNING alone: a concurrent seed may have inserted
    # some of these rows first, and insert-or-ignore returns nothing for those.
    for chunk in _chunks([p.uid for p in missing]):
        stored.update(session.execute(select(User.uid, User.id).where(User.uid.in_(chunk))).all())
    stored[ADMIN] = admin.id

    groups_created, group_ids = _ensure_groups(session, district_users)
    unit_ids = dict(
        session.execute(
            select(OrgUnit.uid, OrgUnit.id).where(OrgUnit.path.like(f"/{SIERRA_LEONE}%"))
        ).all()
    )
    org_pairs = [(stored[p.uid], unit_ids[p.org_unit]) for p in people]
    org_pairs.append((admin.id, unit_ids[SIERRA_LEONE]))
    group_pairs = _group_pairs(people, district_users, stored, group_ids)
    added = _insert_pairs(
        session, user_org_units, [{"user_id": u, "org_unit_id": o} for u, o in org_pairs]
    ) + _insert_pairs(
        session, user_group_members, [{"group_id": g, "user_id": u} for g, u in group_pairs]
    )

    feedback_set = False
    if system_settings.feedback_group(session) is None:
        system_settings.set_feedback_group(
            session, session.get(UserGroup, group_ids[FEEDBACK_GROUP])
        )
        feedback_set = True
    return DemoReport(
        users_created=created,
        users_total=len(people) + 1,
        groups_created=groups_created,
        memberships_added=added,
        feedback_group_set=feedback_set,
        imported=imported,
        logins=demo_logins(),
    )


def _ensure_groups(
    session: Session, district_users: dict[str, list[str]]
) -> tuple[int, dict[str, int]]:
    """Mint the district M&E groups Sierra Leone lacks; return how many and uid -> id of all."""
    districts = dict(
        session.execute(
            select(OrgUnit.uid, OrgUnit.name).where(OrgUnit.uid.in_(list(district_users)))
        ).all()
    )
    minted = [
        {
            "uid": demo_uid(district, "district_me_group", 1),
            "name": f"{districts[district].strip()} District M&E officers",
        }
        for district in district_users
        if district not in DISTRICT_ME_GROUPS
    ]
    created = 0
    if minted:
        result = session.execute(
            insert_ignore(session, _USER_GROUP).returning(_USER_GROUP.c.id), minted
        )
        created = len(result.all())
    wanted = [FEEDBACK_GROUP, *PROGRAM_GROUPS, *DISTRICT_ME_GROUPS.values()]
    wanted += [g["uid"] for g in minted]
    ids = dict(
        session.execute(select(UserGroup.uid, UserGroup.id).where(UserGroup.uid.in_(wanted))).all()
    )
    return created, ids


def _group_pairs(
    people: list[_Person],
    district_users: dict[str, list[str]],
    user_ids: dict[str, int],
    group_ids: dict[str, int],
) -> list[tuple[int, int]]:
    """(group id, user id) for every demo membership."""
    pairs = [(group_ids[FEEDBACK_GROUP], user_ids[ADMIN])]
    pairs += [
        (group_ids[FEEDBACK_GROUP], user_ids[p.uid]) for p in people if p.org_unit == SIERRA_LEONE
    ]
    for district, members in district_users.items():
        group = DISTRICT_ME_GROUPS.get(district) or demo_uid(district, "district_me_group", 1)
        pairs += [(group_ids[group], user_ids[uid]) for uid in members]
    facility_staff = sorted(p.uid for p in people if p.role == "facility")
    rng = random.Random(DEMO_SEED)  # noqa: S311  (a reproducible sample, not a secret)
    for group in PROGRAM_GROUPS:
        count = round(len(facility_staff) * rng.uniform(0.10, 0.20))
        pairs += [(group_ids[group], user_ids[uid]) for uid in rng.sample(facility_staff, count)]
    return pairs


def _insert_pairs(session: Session, table: Table, rows: list[dict[str, int]]) -> int:
    added = 0
    first = next(iter(table.primary_key.columns))
    for chunk in _chunks(rows):
        result = session.execute(insert_ignore(session, table).returning(first), list(chunk))
        added += len(result.all())
    return added


def demo_logins() -> tuple[DemoLogin, ...]:
    """The memorable demo logins, for the README and the seed-demo command's output."""
    pw = DEMO_PASSWORD
    return (
        DemoLogin("admin", pw, "administrator (John Traore), feedback recipient", "Sierra Leone"),
        DemoLogin(
            "national1",
            pw,
            "national communications officer, broadcaster, feedback recipient",
            "Sierra Leone",
        ),
        DemoLogin("national2", pw, "national M&E officer, feedback recipient", "Sierra Leone"),
        DemoLogin("bo_me", pw, "district M&E officer", "Bo"),
        DemoLogin("bo_dhmt", pw, "district health management team officer", "Bo"),
        DemoLogin("badjia_sup", pw, "chiefdom supervisor", "Badjia (Bo)"),
        DemoLogin("ngelehun_chc1", pw, "facility staff", "Ngelehun CHC (Badjia, Bo)"),
        DemoLogin("ngelehun_chc2", pw, "facility staff", "Ngelehun CHC (Badjia, Bo)"),
    )
