"""DHIS2 metadata import, on the real Sierra Leone files, the synthetic performance set and
hand-made documents. Every test runs on PostgreSQL and SQLite (the `db` fixture)."""

from __future__ import annotations

import collections
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, aliased

from service.dhis2_import import import_metadata, load_file
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
from service.passwords import hash_password, verify_password

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "dhis2"
# CI checks the shared data folder out beside the clone; the perf set is too big to ship.
PERF = ROOT.parent / "shared" / "data" / "dhis2" / "synthetic_dhis2_perf"
# The test password of the synthetic users: the default of dhis2-core's
# dhis-test-performance/scripts/generate_users.py, which hashed it into every record.
PERF_PASSWORD = "Test123!"

BO = "O6uvpzGd5pu"
ROOT_UID = "ImspTQPwCqd"


@pytest.fixture(scope="module")
def sierra_leone() -> list[dict[str, Any]]:
    return [
        load_file(DATA / "sierra_leone_organisation_units.json.gz"),
        load_file(DATA / "sierra_leone_users_and_groups.json"),
    ]


@pytest.fixture(scope="module")
def perf_documents() -> list[dict[str, Any]]:
    files = ["orgunits_0000.json.gz", "users_0000.json.gz", "usergroups.json"]
    missing = [name for name in files if not (PERF / name).is_file()]
    if missing:
        pytest.fail(
            f"the synthetic DHIS2 performance set is missing from {PERF} ({', '.join(missing)}); "
            "check out the shared data folder beside the repository",
            pytrace=False,
        )
    return [load_file(PERF / name) for name in files]


def count(db: Session, what: Any) -> int:
    return db.scalar(select(func.count()).select_from(what)) or 0


def counts(db: Session) -> dict[str, int]:
    tables = {
        "org_units": OrgUnit,
        "org_unit_groups": OrgUnitGroup,
        "user_groups": UserGroup,
        "users": User,
        "org_unit_group_members": org_unit_group_members,
        "user_group_members": user_group_members,
        "user_org_units": user_org_units,
    }
    return {name: count(db, table) for name, table in tables.items()}


def assert_paths_agree_with_parents(db: Session) -> None:
    parent = aliased(OrgUnit)
    bad_children = db.scalar(
        select(func.count())
        .select_from(OrgUnit)
        .join(parent, OrgUnit.parent_id == parent.id)
        .where(
            (OrgUnit.path != parent.path + "/" + OrgUnit.uid) | (OrgUnit.level != parent.level + 1)
        )
    )
    bad_roots = db.scalar(
        select(func.count())
        .select_from(OrgUnit)
        .where(OrgUnit.parent_id.is_(None))
        .where((OrgUnit.path != "/" + OrgUnit.uid) | (OrgUnit.level != 1))
    )
    assert (bad_children, bad_roots) == (0, 0)


# --- the real Sierra Leone files ---------------------------------------------------------------


def test_import_sierra_leone_hierarchy(db: Session, sierra_leone: list[dict[str, Any]]) -> None:
    report = import_metadata(db, sierra_leone)

    assert report.org_units_created == 1332
    assert count(db, OrgUnit) == 1332
    levels = dict(db.execute(select(OrgUnit.level, func.count()).group_by(OrgUnit.level)).all())
    assert levels == {1: 1, 2: 13, 3: 152, 4: 1166}
    bo_levels = dict(
        db.execute(
            select(OrgUnit.level, func.count())
            .where(OrgUnit.path.like(f"/{ROOT_UID}/{BO}/%"))
            .group_by(OrgUnit.level)
        ).all()
    )
    assert bo_levels == {3: 15, 4: 125}
    assert_paths_agree_with_parents(db)
    closed = db.scalars(select(OrgUnit.uid).where(OrgUnit.closed_date.is_not(None))).all()
    assert sorted(closed) == sorted(
        ["gfk1TNPI4wN", "G5FuODAbH6X", "mepHuAA9l51", "OuwX8H2CcRO", "uNEhNuBUr0i"]
    )
    names = set(db.scalars(select(OrgUnit.name)))
    assert " Panderu MCHP" in names
    assert "Tainkatopa Makama Safrokoh " in names
    ngelehun = db.scalars(select(OrgUnit).where(OrgUnit.uid == "DiszpKrYNg8")).one()
    assert ngelehun.path == "/ImspTQPwCqd/O6uvpzGd5pu/YuQRtpLP10I/DiszpKrYNg8"
    assert ngelehun.code == "OU_559"
    assert ngelehun.opening_date is not None and ngelehun.opening_date.year == 1970


def test_import_sierra_leone_users_and_groups(
    db: Session, sierra_leone: list[dict[str, Any]]
) -> None:
    report = import_metadata(db, sierra_leone)

    assert (report.users_created, report.user_groups_created) == (67, 35)
    assert report.ignored == ("_note",)
    admin = db.scalars(select(User).where(User.username == "admin")).one()
    assert (admin.uid, admin.first_name, admin.surname) == ("xE7jOejl9FI", "John", "Traore")
    assert [ou.uid for ou in admin.org_units] == [ROOT_UID]
    assert len(admin.groups) == 16
    assert "QYrzIjSfI8z" in {g.uid for g in admin.groups}
    # Only displayName is known for most users: split at the first space.
    aa = db.scalars(select(User).where(User.uid == "midj5s9UM1H")).one()
    assert (aa.first_name, aa.surname, aa.email) == ("Aa", "new user", "a_new_user@dhis2.org")
    # The one record without a username gets one derived from its uid.
    malai = db.scalars(select(User).where(User.uid == "EZtxytGsq8F")).one()
    assert malai.username == "dhis2-EZtxytGsq8F"
    # users_known_subset on the groups counts as membership, as do the users' own userGroups.
    sysadmins = db.scalars(select(UserGroup).where(UserGroup.uid == "zz6XckBrLlj")).one()
    members = db.scalar(
        select(func.count())
        .select_from(user_group_members)
        .where(user_group_members.c.group_id == sysadmins.id)
    )
    assert members == 10


def test_reimport_is_idempotent(db: Session, sierra_leone: list[dict[str, Any]]) -> None:
    import_metadata(db, sierra_leone)
    before = counts(db)
    paths_before = dict(db.execute(select(OrgUnit.uid, OrgUnit.path)).all())

    report = import_metadata(db, sierra_leone)

    assert counts(db) == before
    assert dict(db.execute(select(OrgUnit.uid, OrgUnit.path)).all()) == paths_before
    assert (report.org_units_created, report.org_units_updated, report.users_created) == (0, 0, 0)
    assert (report.users_updated, report.user_groups_updated, report.org_units_repathed) == (
        0,
        0,
        0,
    )
    assert report.user_group_members_added == report.user_org_units_added == 0
    assert report.unchanged == 1332 + 35 + 67


# --- the synthetic performance set ---------------------------------------------------------


class StatementCounter:
    def __init__(self) -> None:
        self.statements = 0

    def __call__(self, *_args: Any) -> None:
        self.statements += 1


@pytest.fixture
def statements(db: Session) -> Iterator[StatementCounter]:
    counter = StatementCounter()
    engine = db.get_bind().engine
    event.listen(engine, "before_cursor_execute", counter)
    yield counter
    event.remove(engine, "before_cursor_execute", counter)


def test_import_synthetic_perf_set(
    db: Session, perf_documents: list[dict[str, Any]], statements: StatementCounter
) -> None:
    seen: list[tuple[str, int, int]] = []
    report = import_metadata(db, perf_documents, progress=lambda *a: seen.append(a))

    # Set-based: a few statements per thousand rows, never one per record.
    assert statements.statements < 200
    assert (report.org_units_created, report.users_created) == (10_000, 5_000)
    levels = dict(db.execute(select(OrgUnit.level, func.count()).group_by(OrgUnit.level)).all())
    assert levels == {1: 1, 2: 10, 3: 200, 4: 5000, 5: 4789}
    assert_paths_agree_with_parents(db)

    units, users, usergroups = perf_documents
    assert count(db, OrgUnitGroup) == len(units["organisationUnitGroups"]) == 18
    assert count(db, org_unit_group_members) == sum(
        len(g["organisationUnits"]) for g in units["organisationUnitGroups"]
    )
    assert count(db, UserGroup) == len(usergroups["userGroups"]) == 10
    assert count(db, user_org_units) == sum(len(u["organisationUnits"]) for u in users["users"])
    assert count(db, user_group_members) == sum(len(u["userGroups"]) for u in users["users"])

    # A user uid may equal an organisation unit group's uid: ids are unique per kind only.
    first = db.scalars(select(User).where(User.username == "perftest_0000001")).one()
    assert first.uid == "OgTpigTHKbf"
    assert db.scalar(select(OrgUnitGroup.name).where(OrgUnitGroup.uid == "OgTpigTHKbf"))
    source_hash = users["users"][0]["password"]
    assert first.password_hash == source_hash
    assert verify_password(PERF_PASSWORD, first.password_hash)

    # Progress: every stage ends with done == total, and units and users report along the way.
    finals = {stage: (done, total) for stage, done, total in seen}
    assert finals["organisationUnits"] == (10_000, 10_000)
    assert finals["users"] == (5_000, 5_000)
    assert sum(1 for stage, _, _ in seen if stage == "organisationUnits") >= 10
    assert len(seen) == len(set(seen))


# --- malformed documents -------------------------------------------------------------------

A, B, C, D = "Aaaaaaaaaa1", "Bbbbbbbbbb1", "Cccccccccc1", "Dddddddddd1"
U1, U2, G1, G2 = "Uuuuuuuuuu1", "Uuuuuuuuuu2", "Gggggggggg1", "Gggggggggg2"


def unit(uid: str, name: str, parent: str | None = None, **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"id": uid, "name": name, **extra}
    if parent is not None:
        record["parent"] = {"id": parent}
    return record


def user(uid: str, username: str | None, **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"id": uid, **extra}
    if username is not None:
        record["username"] = username
    return record


GOOD_UNITS = [unit(A, "Root"), unit(B, "Child", A), unit(C, "Grandchild", B)]


@pytest.mark.parametrize(
    ("documents", "message"),
    [
        (
            [{"organisationUnits": [*GOOD_UNITS, {"name": "No id"}]}],
            "organisationUnits[3] (no id, name No id): id is missing",
        ),
        (
            [{"organisationUnits": [*GOOD_UNITS, unit("1abcdefghij", "Digit first")]}],
            "organisationUnits[3] (id 1abcdefghij, name Digit first): id '1abcdefghij' is not",
        ),
        (
            [{"organisationUnits": [*GOOD_UNITS, unit(D, "Orphan", "Zzzzzzzzzz9")]}],
            "organisationUnits[3] (id Dddddddddd1, name Orphan): parent references unknown "
            "organisation unit Zzzzzzzzzz9",
        ),
        (
            [{"organisationUnits": [*GOOD_UNITS, {"id": D}]}],
            "organisationUnits[3] (id Dddddddddd1): name is missing",
        ),
        (
            [{"organisationUnits": [*GOOD_UNITS, unit(D, 42)]}],  # type: ignore[arg-type]
            "organisationUnits[3] (id Dddddddddd1): name must be a string, got int",
        ),
        (
            [
                {
                    "organisationUnits": [
                        unit(A, "Loop top", C),
                        unit(B, "Loop mid", A),
                        unit(C, "Loop end", B),
                    ]
                }
            ],
            "organisationUnits[0] (id Aaaaaaaaaa1, name Loop top): the parent chain loops back",
        ),
        (
            [{"organisationUnits": [*GOOD_UNITS, unit(D, "Wrong path", A, path=f"/{B}/{D}")]}],
            f"organisationUnits[3] (id {D}, name Wrong path): path /{B}/{D} disagrees",
        ),
        (
            [{"organisationUnits": [*GOOD_UNITS, unit(D, "Wrong level", A, level=3)]}],
            f"organisationUnits[3] (id {D}, name Wrong level): level 3 disagrees",
        ),
        (
            [{"organisationUnits": [*GOOD_UNITS, unit(A, "Again")]}],
            "organisationUnits[3] (id Aaaaaaaaaa1, name Again): id Aaaaaaaaaa1 is given twice",
        ),
        (
            [{"organisationUnits": {"id": A}}],
            "organisationUnits must be a list, got dict",
        ),
        (
            [
                {"organisationUnits": GOOD_UNITS},
                {
                    "users": [
                        user(U1, "ok", organisationUnits=[{"id": A}]),
                        user(U2, "x", organisationUnits=[{"id": C}, {"id": "XYZXYZXYZ00"}]),
                    ]
                },
            ],
            "document 2: users[1] (id Uuuuuuuuuu2, username x): organisationUnits references "
            "unknown organisation unit XYZXYZXYZ00",
        ),
        (
            [{"organisationUnits": GOOD_UNITS, "users": [user(U1, "x", userGroups=[{"id": G1}])]}],
            "users[0] (id Uuuuuuuuuu1, username x): userGroups references unknown user group "
            "Gggggggggg1",
        ),
        (
            [{"userGroups": [{"id": G1, "name": "G", "users": [{"id": U2}]}]}],
            "userGroups[0] (id Gggggggggg1, name G): users references unknown user Uuuuuuuuuu2",
        ),
        (
            [
                {
                    "organisationUnitGroups": [
                        {"id": G1, "name": "G", "organisationUnits": [{"id": A}]}
                    ]
                }
            ],
            "organisationUnitGroups[0] (id Gggggggggg1, name G): organisationUnits references "
            "unknown organisation unit Aaaaaaaaaa1",
        ),
        (
            [{"users": [user(U1, "x", organisationUnits=["Aaaaaaaaaa1"])]}],
            "users[0] (id Uuuuuuuuuu1, username x): organisationUnits must hold objects",
        ),
        (
            [{"users": [user(U1, "has space")]}],
            "users[0] (id Uuuuuuuuuu1, username has space): username 'has space': Username must "
            "not contain spaces",
        ),
        (
            [{"users": [user(U1, "x", password="district")]}],
            "users[0] (id Uuuuuuuuuu1, username x): password is not a bcrypt hash",
        ),
        (
            [{"users": [user(U1, "x", disabled="no")]}],
            "users[0] (id Uuuuuuuuuu1, username x): disabled must be true or false",
        ),
        (
            [{"users": [user(U1, "same"), user(U2, "same")]}],
            "users[1] (id Uuuuuuuuuu2, username same): username same is also given to users[0]",
        ),
        (
            [{"organisationUnits": [*GOOD_UNITS, unit(D, "Bad date", openingDate="last year")]}],
            "organisationUnits[3] (id Dddddddddd1, name Bad date): openingDate 'last year' is not",
        ),
        (["not an object"], "a DHIS2 metadata document must be an object"),
    ],
    ids=lambda value: None if isinstance(value, list) else value.split(": ")[-1][:40],
)
def test_malformed_documents_fail_naming_the_record_and_write_nothing(
    db: Session, documents: list[Any], message: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        import_metadata(db, documents)

    assert message in caught.value.message
    assert set(counts(db).values()) == {0}


def test_error_names_the_file_when_names_are_given(db: Session) -> None:
    with pytest.raises(InvalidInput, match=r"^b\.json: users\[0\] \(no id\): id is missing$"):
        import_metadata(
            db, [{"organisationUnits": GOOD_UNITS}, {"users": [{}]}], names=["a.json", "b.json"]
        )
    assert count(db, OrgUnit) == 0


def test_reference_to_stored_objects_resolves(db: Session) -> None:
    import_metadata(db, [{"organisationUnits": GOOD_UNITS}])
    report = import_metadata(
        db,
        [
            {"organisationUnits": [unit(D, "New leaf", C)]},
            {"users": [user(U1, "later", organisationUnits=[{"id": A}, {"id": D}])]},
        ],
    )
    assert (report.org_units_created, report.users_created, report.user_org_units_added) == (
        1,
        1,
        2,
    )
    leaf = db.scalars(select(OrgUnit).where(OrgUnit.uid == D)).one()
    assert (leaf.path, leaf.level) == (f"/{A}/{B}/{C}/{D}", 4)


def test_moving_a_unit_repaths_stored_descendants(db: Session) -> None:
    import_metadata(db, [{"organisationUnits": [*GOOD_UNITS, unit(D, "Other root")]}])

    report = import_metadata(db, [{"organisationUnits": [unit(B, "Child", D)]}])

    assert (report.org_units_updated, report.org_units_repathed) == (1, 1)
    paths = dict(db.execute(select(OrgUnit.uid, OrgUnit.path)).all())
    assert paths[B] == f"/{D}/{B}"
    assert paths[C] == f"/{D}/{B}/{C}"
    assert_paths_agree_with_parents(db)


def test_moving_a_unit_under_its_own_descendant_is_a_cycle(db: Session) -> None:
    import_metadata(db, [{"organisationUnits": GOOD_UNITS}])

    with pytest.raises(InvalidInput, match="loops back on itself"):
        import_metadata(db, [{"organisationUnits": [unit(A, "Root", C)]}])
    assert db.scalar(select(OrgUnit.path).where(OrgUnit.uid == A)) == f"/{A}"


def test_update_changes_fields_and_keeps_what_dhis2_does_not_carry(db: Session) -> None:
    pw_hash = hash_password("first-password", rounds=4)
    import_metadata(
        db,
        [
            {
                "organisationUnits": [
                    unit(A, "Root", code="OLD", closedDate="2016-10-01T00:00:00.000")
                ]
            },
            {
                "users": [
                    user(U1, "jo", firstName="Jo", password=pw_hash, organisationUnits=[{"id": A}])
                ]
            },
        ],
    )
    stored = db.scalars(select(User).where(User.uid == U1)).one()
    stored.is_admin = True
    db.flush()

    report = import_metadata(
        db,
        [
            {"organisationUnits": [unit(A, "Root renamed")]},
            {"users": [{"id": U1, "firstName": "Joanna", "disabled": True}]},
        ],
    )

    assert (report.org_units_updated, report.users_updated) == (1, 1)
    root = db.scalars(select(OrgUnit).where(OrgUnit.uid == A)).one()
    assert (root.name, root.code, root.closed_date) == ("Root renamed", None, None)
    stored = db.scalars(select(User).where(User.uid == U1)).one()
    assert (stored.username, stored.first_name, stored.disabled) == ("jo", "Joanna", True)
    assert stored.password_hash == pw_hash
    assert stored.is_admin
    assert [ou.uid for ou in stored.org_units] == [A]  # memberships are never removed


def test_memberships_are_the_union_of_both_sides(db: Session) -> None:
    import_metadata(
        db,
        [
            {
                "users": [user(U1, "one", userGroups=[{"id": G1}]), user(U2, "two")],
                "userGroups": [
                    {"id": G1, "name": "First"},
                    {
                        "id": G2,
                        "name": "Second",
                        "users": [{"id": U1}],
                        "users_known_subset": [{"id": U2}, {"id": U1}],
                    },
                ],
            }
        ],
    )
    pairs = db.execute(
        select(UserGroup.uid, User.uid)
        .join(user_group_members, user_group_members.c.group_id == UserGroup.id)
        .join(User, User.id == user_group_members.c.user_id)
    ).all()
    assert sorted(pairs) == [(G1, U1), (G2, U1), (G2, U2)]


def test_usernames_may_be_swapped_in_one_import(db: Session) -> None:
    import_metadata(db, [{"users": [user(U1, "alpha"), user(U2, "beta")]}])

    import_metadata(db, [{"users": [user(U1, "beta"), user(U2, "alpha")]}])

    names = dict(db.execute(select(User.uid, User.username)).all())
    assert names == {U1: "beta", U2: "alpha"}


def test_username_taken_by_a_stored_user_outside_the_documents(db: Session) -> None:
    import_metadata(db, [{"users": [user(U1, "alpha")]}])

    with pytest.raises(
        InvalidInput,
        match=r"users\[0\] \(id Uuuuuuuuuu2, username alpha\): "
        r"username alpha is taken by stored user Uuuuuuuuuu1",
    ):
        import_metadata(db, [{"users": [user(U2, "alpha")]}])


def test_bcrypt_2y_hashes_are_kept_as_2b(db: Session) -> None:
    pw_hash = bcrypt.hashpw(b"secret-password", bcrypt.gensalt(rounds=4)).decode()
    import_metadata(db, [{"users": [user(U1, "php", password="$2y$" + pw_hash[4:])]}])

    stored = db.scalar(select(User.password_hash).where(User.uid == U1))
    assert stored == pw_hash
    assert verify_password("secret-password", stored)


def test_references_to_kinds_not_kept_are_ignored(db: Session) -> None:
    record = user(
        U1,
        "x",
        userRoles=[{"id": "Rrrrrrrrrr1"}],
        dataViewOrganisationUnits=[{"id": "Nowhere0000"}],
        teiSearchOrganisationUnits=[{"id": "Nowhere0000"}],
    )
    report = import_metadata(db, [{"users": [record], "userRoles": [{"id": "Rrrrrrrrrr1"}]}])
    assert report.users_created == 1
    assert report.ignored == ("userRoles",)


def test_legacy_user_credentials_are_read(db: Session) -> None:
    record = {
        "id": U1,
        "firstName": "Old",
        "userCredentials": {"username": "legacy", "disabled": True},
    }
    import_metadata(db, [{"users": [record]}])
    stored = db.scalars(select(User).where(User.uid == U1)).one()
    assert (stored.username, stored.disabled) == ("legacy", True)


# --- files ---------------------------------------------------------------------------------


def test_load_file_reads_json_and_gzip(tmp_path: Path) -> None:
    document = {"organisationUnits": [unit(A, "Root")]}
    plain = tmp_path / "m.json"
    plain.write_text(json.dumps(document))
    packed = tmp_path / "m.json.gz"
    with gzip.open(packed, "wt") as fh:
        json.dump(document, fh)

    assert load_file(plain) == load_file(packed) == document


@pytest.mark.parametrize(
    ("content", "message"), [(b"{not json", "cannot read"), (b"[1, 2]", "must be a JSON object")]
)
def test_load_file_refuses_what_is_not_a_json_object(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(InvalidInput, match=message) as caught:
        load_file(path)
    assert str(path) in caught.value.message


def test_level_counts_of_the_shipped_file_match_sources() -> None:
    # The shipped copy is the shared file, gzipped: same records, same counts as SOURCES.md.
    units = load_file(DATA / "sierra_leone_organisation_units.json.gz")["organisationUnits"]
    assert collections.Counter(u["level"] for u in units) == {1: 1, 2: 13, 3: 152, 4: 1166}
