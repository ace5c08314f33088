"""The `flask --app web ...` commands, run through Flask's CLI runner against real databases.

Commands commit, so these tests cannot use the rolled-back `db` session: each gets its own
migrated SQLite file (copied from one migrated template), and one test runs on a PostgreSQL
database of its own.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from click.testing import Result
from flask import Flask
from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session

from service.config import Settings
from service.db import make_engine
from service.models import OrgUnit, User, UserGroup
from service.passwords import verify_password
from tests.conftest import ROOT, create_pg_database, migrate, run_db_name
from web import create_app

DATA = ROOT / "data" / "dhis2"
SL_FILES = [
    str(DATA / "sierra_leone_organisation_units.json.gz"),
    str(DATA / "sierra_leone_users_and_groups.json"),
]
PERF = ROOT.parent / "shared" / "data" / "dhis2" / "synthetic_dhis2_perf"
HEAD = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini"))).get_current_head()

A, B = "Aaaaaaaaaa1", "Bbbbbbbbbb1"
G1, G2 = "Gggggggggg1", "Gggggggggg2"


def make_app(url: str, tmp_path: Path) -> Flask:
    settings = Settings(
        env="test", data_dir=tmp_path, database_url=url, broker_url="memory://", secret_key="x"
    )
    return create_app(settings)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli-template") / "template.db"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture
def app(template: Path, tmp_path: Path) -> Iterator[Flask]:
    """An app on a freshly migrated SQLite file of its own (overrides the web conftest's app)."""
    target = tmp_path / "cli.db"
    for suffix in ("", "-wal", "-shm"):
        source = template.with_name(template.name + suffix)
        if source.exists():
            shutil.copy(source, target.with_name(target.name + suffix))
    app = make_app(f"sqlite:///{target}", tmp_path)
    yield app
    app.extensions["engine"].dispose()


def run(app: Flask, *args: str, typed: str | None = None) -> Result:
    return app.test_cli_runner().invoke(args=list(args), input=typed)


def session(app: Flask) -> Session:
    return app.extensions["session_factory"]()  # type: ignore[no-any-return]


def count(app: Flask, model: Any) -> int:
    with session(app) as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def write(tmp_path: Path, name: str, document: dict[str, Any]) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return str(path)


@pytest.fixture
def places(app: Flask, tmp_path: Path) -> None:
    document = {
        "organisationUnits": [
            {"id": A, "name": "Root"},
            {"id": B, "name": "Leaf", "parent": {"id": A}},
        ],
        "userGroups": [{"id": G1, "name": "One"}, {"id": G2, "name": "Two"}],
    }
    result = run(app, "import-metadata", write(tmp_path, "places.json", document))
    assert result.exit_code == 0, result.output


# --- import-metadata -----------------------------------------------------------------------


def test_import_metadata_imports_and_commits(app: Flask) -> None:
    result = run(app, "import-metadata", *SL_FILES)

    assert result.exit_code == 0, result.output
    assert "organisation units: 1332 created" in result.stdout
    assert "users: 67 created" in result.stdout
    assert (count(app, OrgUnit), count(app, User), count(app, UserGroup)) == (1332, 67, 35)


def test_import_metadata_reports_progress_on_stderr(app: Flask) -> None:
    if not PERF.is_dir():
        pytest.fail(f"the synthetic DHIS2 performance set is missing from {PERF}", pytrace=False)

    result = run(app, "import-metadata", str(PERF / "orgunits_0000.json.gz"))

    assert result.exit_code == 0, result.output
    assert "organisationUnits: 1000/10000" in result.stderr
    assert "organisationUnits: 10000/10000" in result.stderr
    assert "/10000" not in result.stdout
    assert count(app, OrgUnit) == 10_000


def test_import_metadata_failure_writes_nothing(app: Flask, tmp_path: Path) -> None:
    bad = write(
        tmp_path,
        "bad.json",
        {
            "users": [
                {"id": "Uuuuuuuuuu1", "username": "x", "organisationUnits": [{"id": "XYZXYZXYZ00"}]}
            ]
        },
    )

    result = run(app, "import-metadata", SL_FILES[0], bad)

    assert result.exit_code == 1
    assert (
        "Error: bad.json: users[0] (id Uuuuuuuuuu1, username x): organisationUnits references "
        "unknown organisation unit XYZXYZXYZ00"
    ) in result.stderr
    assert count(app, OrgUnit) == 0


def test_import_metadata_refuses_a_file_that_is_not_json(app: Flask, tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{nope")

    result = run(app, "import-metadata", str(path))

    assert result.exit_code == 1
    assert "broken.json: cannot read a JSON document" in result.stderr


# --- create-user and set-password ----------------------------------------------------------


def test_create_user_creates_then_updates(app: Flask, places: None) -> None:
    created = run(
        app, "create-user", "amina", "--password", "first password", "--org-unit", B,
        "--group", G1, "--broadcaster",
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    assert "user amina" in created.stdout and "created" in created.stdout

    updated = run(app, "create-user", "amina", "--admin", "--no-broadcaster", "--group", G2)
    assert updated.exit_code == 0, updated.output
    assert "updated" in updated.stdout

    with session(app) as s:
        user = s.scalars(select(User).where(User.username == "amina")).one()
        assert (user.is_admin, user.is_broadcaster) == (True, False)
        assert [ou.uid for ou in user.org_units] == [B]
        assert sorted(g.uid for g in user.groups) == [G1, G2]
        assert verify_password("first password", user.password_hash)


def test_create_user_without_password_says_how_to_set_one(app: Flask) -> None:
    result = run(app, "create-user", "recipient")
    assert result.exit_code == 0, result.output
    assert "set-password recipient" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--password", "short"], "Password must be at least 8 characters."),
        (["--org-unit", "Nooooooooo1"], "Unknown organisation unit: Nooooooooo1"),
        (["--group", "Nogggggggg1"], "Unknown user group: Nogggggggg1"),
    ],
)
def test_create_user_errors_write_nothing(
    app: Flask, places: None, args: list[str], message: str
) -> None:
    result = run(app, "create-user", "amina", *args)
    assert result.exit_code == 1
    assert message in result.stderr
    assert count(app, User) == 0


def test_set_password_prompts_twice(app: Flask) -> None:
    run(app, "create-user", "amina")

    result = run(app, "set-password", "amina", typed="short\nlong enough\nlong enough\n")

    assert result.exit_code == 0, result.output
    assert "at least 8 characters" in result.output  # the short one was refused and re-asked
    with session(app) as s:
        stored = s.scalar(select(User.password_hash).where(User.username == "amina"))
    assert verify_password("long enough", stored)


def test_set_password_accepts_an_option_and_refuses_unknown_users(app: Flask) -> None:
    run(app, "create-user", "amina")

    assert run(app, "set-password", "amina", "--password", "scripted pw").exit_code == 0
    unknown = run(app, "set-password", "nobody", "--password", "scripted pw")
    mismatch = run(app, "set-password", "amina", typed="long enough\ndifferent one\n")

    assert unknown.exit_code == 1 and "no user named nobody" in unknown.stderr
    assert mismatch.exit_code == 1  # the confirmation never matched; input ran out
    with session(app) as s:
        stored = s.scalar(select(User.password_hash).where(User.username == "amina"))
    assert verify_password("scripted pw", stored)


# --- seed-demo -----------------------------------------------------------------------------


def test_seed_demo_imports_seeds_and_is_idempotent(app: Flask) -> None:
    first = run(app, "seed-demo")
    again = run(app, "seed-demo")

    assert first.exit_code == 0, first.output
    assert "organisation units: 1332 created" in first.stdout
    assert "demo users: 1587 created, 1588 in all" in first.stdout
    for login in ("admin / district", "national1 / district", "bo_me / district"):
        assert login in first.stdout
    assert again.exit_code == 0, again.output
    assert "demo users: 0 created, 1588 in all" in again.stdout
    assert count(app, User) == 67 + 1587


# --- db upgrade / downgrade ----------------------------------------------------------------


def test_db_upgrade_and_downgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'not-yet' / 'fresh.db'}"
    app = make_app(url, tmp_path)
    try:
        upgraded = run(app, "db", "upgrade")
        assert upgraded.exit_code == 0, upgraded.output
        assert f"database at revision {HEAD}" in upgraded.stdout
        assert "app_user" in inspect(app.extensions["engine"]).get_table_names()

        downgraded = run(app, "db", "downgrade", "base")
        assert downgraded.exit_code == 0, downgraded.output
        assert "base (empty)" in downgraded.stdout
        app.extensions["engine"].dispose()
        assert "app_user" not in inspect(app.extensions["engine"]).get_table_names()

        unknown = run(app, "db", "upgrade", "no-such-revision")
        assert unknown.exit_code == 1
        assert "migration failed" in unknown.stderr
    finally:
        app.extensions["engine"].dispose()


def test_commands_on_postgresql(tmp_path: Path) -> None:
    url = create_pg_database(run_db_name(f"cli_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"))
    app = make_app(url, tmp_path)
    try:
        assert run(app, "db", "upgrade").exit_code == 0
        seeded = run(app, "seed-demo")
        assert seeded.exit_code == 0, seeded.output
        created = run(app, "create-user", "amina", "--password", "first password", "--admin")
        assert created.exit_code == 0, created.output
    finally:
        app.extensions["engine"].dispose()

    engine = make_engine(url, pool=False)
    try:
        with Session(engine) as s:
            assert s.scalar(select(func.count()).select_from(User)) == 67 + 1587 + 1
            admin = s.scalars(select(User).where(User.username == "admin")).one()
            assert admin.is_admin and verify_password("district", admin.password_hash)
    finally:
        engine.dispose()


def test_create_and_revoke_api_token(app: Flask) -> None:
    assert run(app, "create-user", "scripter", "--password", "a-long-password").exit_code == 0
    result = run(app, "create-api-token", "scripter", "--days", "7", "--name", "nightly")
    assert result.exit_code == 0, result.output
    key = result.stdout.strip().splitlines()[-1]
    client = app.test_client()
    r = client.get("/api/apiToken", headers={"Authorization": f"ApiToken {key}"})
    assert r.status_code == 200
    (listed,) = r.json["apiToken"]
    assert listed["name"] == "nightly"
    assert run(app, "revoke-api-token", listed["id"]).exit_code == 0
    r = client.get("/api/me", headers={"Authorization": f"ApiToken {key}"})
    assert r.status_code == 401
    assert run(app, "create-api-token", "nobody").exit_code == 1
