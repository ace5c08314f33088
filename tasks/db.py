"""One engine per worker process, created lazily after the fork; a session scope per task."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from celery.signals import worker_process_init
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.db import make_engine, make_session_factory

_engine: Engine | None = None
_factory: sessionmaker[Session] | None = None


def configure(settings: Settings) -> None:
    global _engine, _factory
    if _engine is not None:
        _engine.dispose()
    if settings.is_sqlite:
        _engine = make_engine(settings.database_url)
    else:
        # PostgreSQL ends any statement before the task's soft time limit would interrupt it.
        # Interrupted mid-statement, the client drops the connection but the server goes on
        # running the statement, holding its locks (a lock wait never notices the client is
        # gone): every retry then queued behind the last one and left one more backend behind.
        timeout_ms = int(settings.task_soft_time_limit * 900)
        _engine = make_engine(
            settings.database_url,
            pool_size=2,
            max_overflow=2,
            connect_args={"options": f"-c statement_timeout={timeout_ms}"},
        )
    _factory = make_session_factory(_engine)


@worker_process_init.connect
def _after_fork(**_kwargs: object) -> None:
    # Connections must never be shared across a fork.
    if _engine is not None:
        _engine.dispose(close=False)


@contextmanager
def session_scope(settings: Settings) -> Iterator[Session]:
    """A session whose transaction the task owns: committed on success, rolled back on error."""
    if _factory is None:
        configure(settings)
    assert _factory is not None
    session = _factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
