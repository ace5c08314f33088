"""Alembic migrations on real PostgreSQL and SQLite: every revision up from empty and back down
again, and each data-carrying migration's backfill checked on rows written before it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, column, inspect, select, table, text

from service.db import UTCDateTime, make_engine
from tests.conftest import ROOT, create_pg_database, run_db_name


def _config(url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", url)
    cfg.attributes["configure_logger"] = False
    return cfg


REVISIONS = [
    s.revision
    for s in reversed(list(ScriptDirectory.from_config(_config("sqlite://")).walk_revisions()))
]


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables, of each kind in turn."""
    if request.param == "postgresql":
        yield create_pg_database(run_db_name("migrations"))
    else:
        yield f"sqlite:///{tmp_path / 'migrations.db'}"


def aware(at: dt.datetime) -> dt.datetime:
    return at if at.tzinfo else at.replace(tzinfo=dt.UTC)


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def test_every_revision_upgrades_from_empty_and_downgrades_to_empty(empty_url: str) -> None:
    cfg = _config(empty_url)
    engine = make_engine(empty_url, pool=False)
    try:
        seen: list[set[str]] = [_tables(engine)]
        assert seen[0] == set()
        for rev in REVISIONS:
            command.upgrade(cfg, rev)
            seen.append(_tables(engine))
        assert {"app_user", "conversation", "inbox", "delivery"} <= seen[-1]
        for i in range(len(REVISIONS) - 1, -1, -1):
            command.downgrade(cfg, REVISIONS[i - 1] if i else "base")
            assert _tables(engine) == seen[i]
        # ... and up again, to the head, on what the downgrades left.
        command.upgrade(cfg, "head")
        assert _tables(engine) == seen[-1]
    finally:
        engine.dispose()


def test_inbox_rows_written_before_0004_take_their_type_and_the_activity_their_reader_may_see(
    empty_url: str,
) -> None:
    """A handler's row takes the last message including internal replies; every other row the
    last public message, so no reader's inbox order reveals an internal reply."""
    cfg = _config(empty_url)
    command.upgrade(cfg, "0003")
    engine = make_engine(empty_url, pool=False)
    t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    public, internal = t + dt.timedelta(hours=1), t + dt.timedelta(hours=2)
    if empty_url.startswith("sqlite"):  # SQLite holds the service's UTC times naive
        t, public, internal = (x.replace(tzinfo=None) for x in (t, public, internal))
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO app_user (id, uid, username, disabled, is_admin, is_broadcaster,"
                    " created_at) VALUES (1, 'aaaaaaaaaa1', 'sender', false, false, false, :t),"
                    " (2, 'aaaaaaaaaa2', 'handler', false, false, false, :t)"
                ),
                {"t": t},
            )
            conn.execute(
                text(
                    "INSERT INTO conversation (id, uid, subject, message_type, status, priority,"
                    " is_announcement, created_at, last_message_at, message_count,"
                    " public_last_message_at, public_message_count, participant_count)"
                    " VALUES (1, 'ccccccccccc', 'Feedback', 'TICKET', 'OPEN', 'NONE', false, :t,"
                    " :internal, 2, :public, 1, 2)"
                ),
                {"t": t, "internal": internal, "public": public},
            )
            conn.execute(
                text(
                    "INSERT INTO inbox (user_id, conversation_id, read, followup, removed,"
                    " as_handler) VALUES (1, 1, true, false, false, false),"
                    " (2, 1, false, false, false, true)"
                )
            )
        command.upgrade(cfg, "0004")
        inbox = table(
            "inbox",
            column("user_id"),
            column("last_activity_at", UTCDateTime()),
            column("message_type"),
        )
        with engine.connect() as conn:
            rows = {r[0]: tuple(r[1:]) for r in conn.execute(select(inbox))}
        assert rows == {1: (aware(public), "TICKET"), 2: (aware(internal), "TICKET")}
        columns = {c["name"]: c for c in inspect(engine).get_columns("inbox")}
        assert columns["last_activity_at"]["nullable"] is False
        assert columns["message_type"]["nullable"] is False
        assert "ix_inbox_user_activity" in {i["name"] for i in inspect(engine).get_indexes("inbox")}

        command.downgrade(cfg, "0003")
        names = {c["name"] for c in inspect(engine).get_columns("inbox")}
        assert not names & {"last_activity_at", "message_type"}
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM inbox")).scalar_one() == 2
    finally:
        engine.dispose()
