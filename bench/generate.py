"""A deterministic data set of N users shaped like the real Sierra Leone hierarchy, loaded in bulk.

The shape comes from the real tree (data/dhis2, 1,332 units on 4 levels: national, 13 districts,
152 chiefdoms, 1,166 facilities) and the demo's roster recipe (service/demo.py): per district an
M&E officer and a DHMT officer, per chiefdom a supervisor, per open facility 3 staff at a
hospital, 2 at a CHC and 1 anywhere else. To reach N users the tree is scaled two ways at once,
so that both the number of units and the staff per unit grow like a bigger country would:

* `copies` copies of every district subtree hang under the one national root (copy 0 is the real
  tree with its real uids; the others get derived uids and `#k` names), keeping the branching of
  every level (chiefdoms per district, facilities per chiefdom) exactly;
* every tier's head count is multiplied by `staff` (a hospital has 3 x staff people, ...).

Both factors are about sqrt(N / 1,582); the last copy is cut off when N users are reached.
Users take ids in a fixed pseudo-random order (an affine permutation), as ids in a real database
bear little relation to where people work. Memberships follow the demo: the feedback group holds
the national staff, each district's M&E group its district officers, and the four real programme
groups each a fixed-seed 10-20 % of the facility staff. 0.5 % of facility staff are disabled.
Facility-type organisation-unit groups (Hospital, CHC, MCHP, CHP, Clinic) hold the facilities.

On top, fixed conversations for the latency measurements: `INBOX_CONVERSATIONS` two-person
conversations in the inbox of `national1` (30 % unread), and small conversations and feedback
tickets between the first few logins (`ACTORS`, password `district`).

PostgreSQL is loaded with COPY, SQLite with executemany in large transactions. Everything is a
function of N only: two runs at the same N make the same rows.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import math
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, text

from service.demo import (
    ADMIN,
    DEMO_PASSWORD,
    DISTRICT_ME_GROUPS,
    FEEDBACK_GROUP,
    PROGRAM_GROUPS,
    SIERRA_LEONE,
    STAFF_BY_TYPE,
    demo_uid,
    facility_type,
)
from service.models import (
    Conversation,
    Inbox,
    Message,
    OrgUnit,
    OrgUnitGroup,
    SystemSetting,
    User,
    UserGroup,
    org_unit_group_members,
    user_group_members,
    user_org_units,
)
from service.passwords import hash_password
from service.system_settings import FEEDBACK_RECIPIENTS

# Bump when the generated rows change, so cached bench databases are rebuilt.
GENERATOR_VERSION = "2"  # 2: inbox rows carry their type and latest activity
SEED = 20140601
DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "dhis2"
UNITS_FILE = DATA_DIR / "sierra_leone_organisation_units.json.gz"
GROUPS_FILE = DATA_DIR / "sierra_leone_users_and_groups.json"

NATIONAL = ("admin", "national1", "national2", "national3", "national4", "national5")
INBOX_USER = "national1"  # the user with many conversations
INBOX_CONVERSATIONS = 10_000
# Logins used for interactive work: the national staff and the first facility staff ids.
ACTORS = 16
SMALL_CONVERSATIONS = 40
TICKETS = 40
FACILITY_GROUP_TYPES = ("Hospital", "CHC", "MCHP", "CHP", "Clinic")
EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _b62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(B62[r])
    return "".join(reversed(out))


def serial_uid(prefix: str, n: int) -> str:
    """A DHIS2-format uid from a letter and a number: unique per prefix, cheap for millions."""
    return prefix + _b62(n, 10)


@dataclass
class Unit:
    id: int
    uid: str
    name: str
    code: str | None
    level: int
    path: str
    parent_id: int | None
    closed: dt.datetime | None
    kind: str  # facility type for level 4


@dataclass
class Dataset:
    size: int
    copies: int
    staff: int
    units: list[Unit] = field(default_factory=list)
    # (org unit id, role) per tier slot, in creation order; users take them via the permutation.
    slots: list[tuple[int, str]] = field(default_factory=list)
    districts: list[Unit] = field(default_factory=list)
    root_id: int = 1

    @property
    def users(self) -> int:
        return len(NATIONAL) + len(self.slots)

    def describe(self) -> dict[str, Any]:
        levels: dict[int, int] = {}
        for u in self.units:
            levels[u.level] = levels.get(u.level, 0) + 1
        return {
            "users": self.users,
            "district_copies": self.copies,
            "staff_multiplier": self.staff,
            "org_units_per_level": levels,
        }


def _parse_date(raw: str | None) -> dt.datetime | None:
    if not raw:
        return None
    return dt.datetime.fromisoformat(raw[:19]).replace(tzinfo=dt.UTC)


def factors(size: int) -> tuple[int, int]:
    """(district copies, staff multiplier) for `size` users."""
    per_tree = 2 * 13 + 152 + 1404  # users one copy of the real tree holds at staff 1
    scale = max(1.0, (size - len(NATIONAL)) / per_tree)
    staff = max(1, round(math.sqrt(scale)))
    copies = max(1, math.ceil((size - len(NATIONAL)) / (per_tree * staff)))
    return copies, staff


def build(size: int) -> Dataset:
    """The units and user slots for `size` users (at least the national staff)."""
    if size < len(NATIONAL) + 1:
        raise ValueError(f"size must be at least {len(NATIONAL) + 1}")
    copies, staff = factors(size)
    ds = Dataset(size=size, copies=copies, staff=staff)
    with gzip.open(UNITS_FILE, "rt", encoding="utf-8") as fh:
        real = json.load(fh)["organisationUnits"]
    real.sort(key=lambda r: (r["level"], r["path"]))
    root = next(r for r in real if r["level"] == 1)
    ds.units.append(
        Unit(1, root["id"], root["name"], root.get("code"), 1, f"/{root['id']}", None, None, "")
    )
    next_id = 2
    want = size - len(NATIONAL)
    for k in range(copies):
        uid_of: dict[str, str] = {root["id"]: root["id"]}
        id_of: dict[str, int] = {root["id"]: 1}
        path_of: dict[str, str] = {root["id"]: f"/{root['id']}"}
        for r in real[1:]:
            uid = r["id"] if k == 0 else demo_uid("bench", r["id"], k)
            parent = r["parent"]["id"]
            unit = Unit(
                id=next_id,
                uid=uid,
                name=r["name"] if k == 0 else f"{r['name'].strip()} #{k}",
                code=r.get("code") if k == 0 else None,
                level=r["level"],
                path=f"{path_of[parent]}/{uid}",
                parent_id=id_of[parent],
                closed=_parse_date(r.get("closedDate")),
                kind=facility_type(r["name"]) if r["level"] == 4 else "",
            )
            next_id += 1
            uid_of[r["id"]], id_of[r["id"]], path_of[r["id"]] = uid, unit.id, unit.path
            ds.units.append(unit)
            if unit.level == 2:
                ds.districts.append(unit)
            if unit.closed is not None:
                continue
            if unit.level == 2:
                roles = [("district_me", 1), ("district_dhmt", 1)]
            elif unit.level == 3:
                roles = [("chiefdom_supervisor", 1)]
            else:
                roles = [("facility", STAFF_BY_TYPE.get(unit.kind, 1))]
            for role, n in roles:
                ds.slots.extend([(unit.id, role)] * (n * staff))
        if len(ds.slots) >= want:
            break
    del ds.slots[want:]
    return ds


def _coprime_step(n: int) -> int:
    step = int(n * 0.6180339887) | 1
    while math.gcd(step, n) != 1:
        step += 2
    return step


def slot_user_id(ds: Dataset, k: int) -> int:
    """The user id of tier slot k: a fixed permutation of len(NATIONAL)+1 .. size."""
    n = len(ds.slots)
    return len(NATIONAL) + 1 + (k * _coprime_step(n)) % n


# ---------------------------------------------------------------------------------------------
# Rows, table by table


def _unit_rows(ds: Dataset) -> Iterator[tuple[Any, ...]]:
    for u in ds.units:
        yield (u.id, u.uid, u.name, None, u.code, u.level, u.path, u.parent_id, EPOCH, u.closed)


def _user_rows(ds: Dataset, password_hash: str) -> Iterator[tuple[Any, ...]]:
    names = {0: "admin"}
    for i, username in enumerate(NATIONAL):
        uid = ADMIN if i == 0 else demo_uid(SIERRA_LEONE, "national", i)
        yield (
            i + 1,
            uid,
            username,
            "National",
            username,
            None,
            password_hash,
            False,
            i == 0,
            i <= 1,
            EPOCH,
            None,
        )
    del names
    n = len(ds.slots)
    step = _coprime_step(n)
    base = len(NATIONAL) + 1
    # Emit in id order: invert the permutation on the fly (k -> id is a bijection).
    inverse = pow(step, -1, n)
    for offset in range(n):
        k = (offset * inverse) % n
        uid_id = base + offset
        _unit, role = ds.slots[k]
        actor = uid_id <= ACTORS
        disabled = role == "facility" and k % 200 == 7 and not actor
        yield (
            uid_id,
            serial_uid("U", uid_id),
            f"{role}_{uid_id}",
            role.split("_")[0].title(),
            f"User {uid_id}",
            None,
            password_hash if actor else None,
            disabled,
            False,
            False,
            EPOCH,
            None,
        )


def _user_org_unit_rows(ds: Dataset) -> Iterator[tuple[int, int]]:
    for i in range(len(NATIONAL)):
        yield (i + 1, ds.root_id)
    n = len(ds.slots)
    step = _coprime_step(n)
    inverse = pow(step, -1, n)
    base = len(NATIONAL) + 1
    for offset in range(n):
        k = (offset * inverse) % n
        yield (base + offset, ds.slots[k][0])


def _groups(ds: Dataset) -> tuple[list[tuple[Any, ...]], dict[str, int], dict[int, int]]:
    """user_group rows, uid -> id, and district unit id -> its M&E group id."""
    with GROUPS_FILE.open(encoding="utf-8") as fh:
        names = {g["id"]: g["name"] for g in json.load(fh)["userGroups"]}
    rows: list[tuple[Any, ...]] = []
    ids: dict[str, int] = {}
    for uid in (FEEDBACK_GROUP, *PROGRAM_GROUPS):
        ids[uid] = len(rows) + 1
        rows.append((ids[uid], uid, names.get(uid, uid), None))
    district_group: dict[int, int] = {}
    for d in ds.districts:
        uid = DISTRICT_ME_GROUPS.get(d.uid) or demo_uid(d.uid, "district_me_group", 1)
        gid = len(rows) + 1
        rows.append((gid, uid, f"{d.name.strip()} District M&E officers", None))
        district_group[d.id] = gid
    return rows, ids, district_group


def _member_rows(
    ds: Dataset, ids: dict[str, int], district_group: dict[int, int]
) -> Iterator[tuple[int, int]]:
    for i in (1, 3, 4, 5, 6):  # admin and national2..5 handle feedback
        yield (ids[FEEDBACK_GROUP], i)
    rng = random.Random(SEED)  # noqa: S311  (reproducible sample, not a secret)
    shares = [rng.uniform(0.10, 0.20) for _ in PROGRAM_GROUPS]
    n = len(ds.slots)
    step = _coprime_step(n)
    base = len(NATIONAL) + 1
    per_group: list[list[int]] = [[] for _ in PROGRAM_GROUPS]
    for k, (unit_id, role) in enumerate(ds.slots):
        user_id = base + (k * step) % n
        if role == "district_me":
            yield (district_group[unit_id], user_id)
        elif role == "facility":
            for g, share in enumerate(shares):
                # A fixed hash of (k, g) decides membership: reproducible, no big sample lists.
                if ((k * 2654435761 + g * 40503) % 1_000_003) / 1_000_003 < share:
                    per_group[g].append(user_id)
    for g, uid in enumerate(PROGRAM_GROUPS):
        for user_id in per_group[g]:
            yield (ids[uid], user_id)


def _unit_group_rows(ds: Dataset) -> tuple[list[tuple[Any, ...]], list[tuple[int, int]]]:
    groups = [
        (i + 1, demo_uid("bench_facility_type", kind), f"{kind} facilities", None)
        for i, kind in enumerate(FACILITY_GROUP_TYPES)
    ]
    gid = {kind: i + 1 for i, kind in enumerate(FACILITY_GROUP_TYPES)}
    members = [(gid[u.kind], u.id) for u in ds.units if u.level == 4 and u.kind in gid]
    return groups, members


@dataclass
class Conversations:
    conversations: list[tuple[Any, ...]]
    messages: list[tuple[Any, ...]]
    inbox: list[tuple[Any, ...]]


def _conversations(ds: Dataset) -> Conversations:
    """National1's 10,000 conversations, small private conversations and feedback tickets."""
    rng = random.Random(SEED + 1)  # noqa: S311
    out = Conversations([], [], [])
    inbox_user = NATIONAL.index(INBOX_USER) + 1
    n_users = ds.users

    def add(
        subject: str,
        kind: str,
        creator: int,
        other: int,
        at: dt.datetime,
        status: str = "NONE",
        unread_for_other: bool = True,
        other_as_handler: bool = False,
    ) -> None:
        cid = len(out.conversations) + 1
        out.conversations.append(
            (
                cid,
                serial_uid("C", cid),
                subject,
                kind,
                status,
                "NONE",
                None,
                creator,
                False,
                None,
                None,
                at,
                at,
                creator,
                1,
                at,
                creator,
                1,
                2 if other else 1,
            )
        )
        out.messages.append(
            (cid, serial_uid("M", cid), cid, creator, f"{subject}: text", False, at)
        )
        out.inbox.append((creator, cid, True, False, False, False, at, kind))
        if other:
            out.inbox.append(
                (other, cid, not unread_for_other, False, False, other_as_handler, at, kind)
            )

    for i in range(INBOX_CONVERSATIONS):
        sender = rng.randrange(len(NATIONAL) + 1, n_users + 1)
        at = EPOCH + dt.timedelta(minutes=rng.randrange(0, 525_600))
        add(f"Report {i}", "PRIVATE", sender, inbox_user, at, unread_for_other=rng.random() < 0.3)
    actors = list(range(len(NATIONAL) + 1, min(ACTORS, n_users) + 1))
    for i in range(SMALL_CONVERSATIONS):
        a = actors[i % len(actors)]
        b = 1 + i % len(NATIONAL)
        add(f"Small {i}", "PRIVATE", a, b, EPOCH + dt.timedelta(hours=i))
    for i in range(TICKETS):
        a = actors[i % len(actors)]
        add(f"Feedback {i}", "TICKET", a, 0, EPOCH + dt.timedelta(hours=i), status="OPEN")
    return out


# ---------------------------------------------------------------------------------------------
# Loading


def _table(model: Any) -> Table:
    return model if isinstance(model, Table) else model.__table__


TABLE_ORDER: list[Any] = [
    OrgUnit,
    OrgUnitGroup,
    org_unit_group_members,
    UserGroup,
    User,
    user_org_units,
    user_group_members,
    Conversation,
    Message,
    Inbox,
    SystemSetting,
]


def _columns(model: Any) -> list[str]:
    return [c.name for c in _table(model).columns]


def tables(ds: Dataset, password_hash: str) -> list[tuple[Any, Callable[[], Iterable[Any]]]]:
    """(table, rows) in load order; rows are produced lazily."""
    group_rows, group_ids, district_group = _groups(ds)
    unit_groups, unit_group_members = _unit_group_rows(ds)
    conv = _conversations(ds)
    return [
        (OrgUnit, lambda: _unit_rows(ds)),
        (OrgUnitGroup, lambda: unit_groups),
        (org_unit_group_members, lambda: unit_group_members),
        (UserGroup, lambda: group_rows),
        (User, lambda: _user_rows(ds, password_hash)),
        (user_org_units, lambda: _user_org_unit_rows(ds)),
        (user_group_members, lambda: _member_rows(ds, group_ids, district_group)),
        (Conversation, lambda: conv.conversations),
        (Message, lambda: conv.messages),
        (Inbox, lambda: conv.inbox),
        (SystemSetting, lambda: [(FEEDBACK_RECIPIENTS, str(group_ids[FEEDBACK_GROUP]))]),
    ]


SERIAL_TABLES = ("org_unit", "org_unit_group", "user_group", "app_user", "conversation", "message")


def load(engine: Engine, size: int, log: Callable[[str], None] = print) -> Dataset:
    """Generate `size` users into an empty, migrated database."""
    ds = build(size)
    password_hash = hash_password(DEMO_PASSWORD)
    raw = engine.raw_connection()
    try:
        dbapi = raw.driver_connection
        assert dbapi is not None
        if engine.dialect.name == "postgresql":
            with dbapi.cursor() as cur:
                for model, rows in tables(ds, password_hash):
                    t = _table(model)
                    cols = ", ".join(f'"{c}"' for c in _columns(model))
                    with cur.copy(f'COPY "{t.name}" ({cols}) FROM STDIN') as copy:
                        for row in rows():
                            copy.write_row(row)
                    log(f"  loaded {t.name}")
                for name in SERIAL_TABLES:
                    cur.execute(
                        f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "  # noqa: S608
                        f"(SELECT COALESCE(MAX(id), 1) FROM {name}))"
                    )
            dbapi.commit()
            dbapi.autocommit = True
            with dbapi.cursor() as cur:
                cur.execute("VACUUM ANALYZE")
            dbapi.autocommit = False
        else:
            cur = dbapi.cursor()
            cur.execute("PRAGMA foreign_keys=OFF")
            for model, rows in tables(ds, password_hash):
                t = _table(model)
                cols = _columns(model)
                sql = (
                    f'INSERT INTO "{t.name}" ({", ".join(cols)}) '  # noqa: S608
                    f"VALUES ({', '.join('?' for _ in cols)})"
                )
                cur.execute("BEGIN")
                chunk: list[Any] = []
                for row in rows():
                    chunk.append(tuple(_sqlite_value(v) for v in row))
                    if len(chunk) >= 50_000:
                        cur.executemany(sql, chunk)
                        chunk.clear()
                if chunk:
                    cur.executemany(sql, chunk)
                cur.execute("COMMIT")
                log(f"  loaded {t.name}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("ANALYZE")
            cur.close()
    finally:
        raw.close()
    return ds


def _sqlite_value(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        return v.astimezone(dt.UTC).replace(tzinfo=None).isoformat(sep=" ")
    return v


def mark(engine: Engine, size: int) -> None:
    """Record what this database holds, so a later run at the same size can reuse it."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS bench_meta (k VARCHAR(40) PRIMARY KEY, v VARCHAR(200))"
            )
        )
        conn.execute(text("DELETE FROM bench_meta"))
        max_conv = conn.execute(text("SELECT MAX(id) FROM conversation")).scalar_one()
        conn.execute(
            text(
                "INSERT INTO bench_meta (k, v) VALUES ('version', :v), ('size', :s), "
                "('max_conversation', :c)"
            ),
            {"v": GENERATOR_VERSION, "s": str(size), "c": str(max_conv)},
        )


def is_current(engine: Engine, size: int) -> bool:
    try:
        with engine.connect() as conn:
            meta = dict(conn.execute(text("SELECT k, v FROM bench_meta")).all())
    except Exception:
        return False
    return meta.get("version") == GENERATOR_VERSION and meta.get("size") == str(size)


def reset(engine: Engine) -> int:
    """Remove what earlier runs added (conversations after the generated ones); rows removed."""
    with engine.begin() as conn:
        max_conv = int(
            conn.execute(text("SELECT v FROM bench_meta WHERE k = 'max_conversation'")).scalar_one()
        )
        removed = conn.execute(
            text("DELETE FROM conversation WHERE id > :m"), {"m": max_conv}
        ).rowcount
        conn.execute(text("DELETE FROM delivery"))
    return int(removed or 0)
