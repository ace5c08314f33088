"""Celery settings that the fault guarantees rest on, as Celery itself reads them: soft < hard time
limit < visibility timeout everywhere a visibility timeout is read; late acks and requeue on a
lost worker; no result backend, chords or groups (completion is counted in SQL); no countdown
anywhere near the visibility timeout (scheduled work is kept in the database)."""

from __future__ import annotations

import ast

import pytest
from sqlalchemy import text

from service.config import ConfigError, Settings, load_settings
from tasks import db as task_db
from tasks import delivery as task_module
from tasks.celery_app import TASK_QUEUES, make_celery
from tests.conftest import ROOT
from tests.faults.conftest import FAULT_SETTINGS
from web.publisher import CeleryPublisher

BASE = {
    "APP_ENV": "test",
    "SECRET_KEY": "k",
    "DATABASE_URL": "postgresql+psycopg://u@db/x",
    "CELERY_BROKER_URL": "redis://127.0.0.1:1/0",
}
LIMITS = ("TASK_SOFT_TIME_LIMIT", "TASK_TIME_LIMIT", "BROKER_VISIBILITY_TIMEOUT")
CONFIGURATIONS = {
    "defaults": {},
    "faults": {k: FAULT_SETTINGS[k] for k in LIMITS},
    "short": {
        "TASK_SOFT_TIME_LIMIT": "2",
        "TASK_TIME_LIMIT": "4",
        "BROKER_VISIBILITY_TIMEOUT": "8",
    },
    "long": {
        "TASK_SOFT_TIME_LIMIT": "1800",
        "TASK_TIME_LIMIT": "2000",
        "BROKER_VISIBILITY_TIMEOUT": "7200",
    },
}


def settings_for(name: str) -> Settings:
    return load_settings({**BASE, **CONFIGURATIONS[name]})


@pytest.mark.parametrize("name", sorted(CONFIGURATIONS))
def test_time_limits_and_visibility_timeout_agree_wherever_celery_reads_them(name: str) -> None:
    settings = settings_for(name)
    soft, hard, vis = (
        settings.task_soft_time_limit,
        settings.task_time_limit,
        settings.broker_visibility_timeout,
    )
    assert soft < hard < vis
    worker = make_celery(settings)
    publisher = CeleryPublisher(settings)._app()  # the web app's own Celery app
    for app in (worker, publisher):
        conf = app.conf
        assert (conf.task_soft_time_limit, conf.task_time_limit) == (soft, hard)
        assert conf.broker_transport_options["visibility_timeout"] == vis
        # Read again by some code paths (e.g. a Redis result backend, were one configured).
        assert conf.result_backend_transport_options["visibility_timeout"] == vis
        # What kombu's Redis transport is handed, for consuming and for publishing.
        assert app.connection_for_read().transport_options["visibility_timeout"] == vis
        assert app.connection_for_write().transport_options["visibility_timeout"] == vis


@pytest.mark.parametrize(
    ("soft", "hard", "vis"), [(300, 300, 600), (300, 240, 600), (240, 600, 600), (240, 700, 600)]
)
def test_misordered_limits_are_refused_at_start(soft: int, hard: int, vis: int) -> None:
    env = {
        **BASE,
        "TASK_SOFT_TIME_LIMIT": str(soft),
        "TASK_TIME_LIMIT": str(hard),
        "BROKER_VISIBILITY_TIMEOUT": str(vis),
    }
    with pytest.raises(ConfigError, match="TASK_SOFT_TIME_LIMIT < TASK_TIME_LIMIT < BROKER_VIS"):
        load_settings(env)


def test_tasks_ack_late_requeue_on_a_lost_worker_and_keep_no_results() -> None:
    app = task_module.app
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1  # a late-acked task is not hoarded
    assert conf.task_ignore_result is True
    assert conf.result_backend is None
    assert type(app.backend).__name__ == "DisabledBackend"
    assert set(TASK_QUEUES) <= set(app.tasks)
    for name in TASK_QUEUES:
        task = app.tasks[name]
        assert task.acks_late is True, name
        assert task.reject_on_worker_lost is True, name
        assert task.ignore_result is True, name
        # The bound task reads the limits from the configuration, never its own.
        assert (task.soft_time_limit, task.time_limit) == (
            conf.task_soft_time_limit,
            conf.task_time_limit,
        ), name
    # The only periodic work is the sweep, and it expires rather than piling up.
    schedule = conf.beat_schedule
    assert [entry["task"] for entry in schedule.values()] == ["delivery.sweep"]
    (entry,) = schedule.values()
    assert entry["options"]["expires"] <= entry["schedule"]


SOURCES = sorted(
    p for d in ("tasks", "service", "web") for p in (ROOT / d).rglob("*.py") if p.is_file()
)
CANVAS = {"chord", "group", "chain", "chunks", "GroupResult", "AsyncResult", "ResultSet"}


def test_no_chords_results_or_etas_anywhere() -> None:
    """Completion is counted in SQL (batches_pending), never awaited through a result backend;
    nothing is scheduled for a fixed time through the broker."""
    assert SOURCES
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("celery"):
                names = {a.name for a in node.names}
                assert not names & CANVAS, f"{path}: imports {names & CANVAS}"
            if isinstance(node, ast.Call):
                kw = {k.arg for k in node.keywords}
                assert "eta" not in kw, f"{path}:{node.lineno}: a task scheduled with eta"
                if "countdown" in kw:
                    # Countdowns come from the bounded backoff only.
                    value = next(k.value for k in node.keywords if k.arg == "countdown")
                    src = ast.unparse(value)
                    assert path.name == "delivery.py" and path.parent.name == "tasks", path
                    assert src in {"countdown", "_backoff(self.request.retries, settings)"}, src


@pytest.mark.parametrize("name", sorted(CONFIGURATIONS))
def test_retry_backoff_stays_well_inside_the_visibility_timeout(name: str) -> None:
    settings = settings_for(name)
    vis = settings.broker_visibility_timeout
    waits = [task_module._backoff(r, settings) for r in range(0, 60) for _ in range(20)]
    assert min(waits) >= 0.5 * min(1.0, vis / 3)
    # A countdown waits unacknowledged in the worker: it must end long before redelivery.
    assert max(waits) <= min(90.0, vis / 2)
    # And it does grow: the first retry is quick, a later one waits longer.
    assert max(task_module._backoff(0, settings) for _ in range(50)) <= 1.5
    if vis >= 30:
        assert min(task_module._backoff(4, settings) for _ in range(50)) >= 4


@pytest.mark.parametrize("name", ["short", "defaults"])
def test_workers_statements_end_before_the_soft_time_limit(name: str, pg_url: str) -> None:
    """PostgreSQL cancels a worker's statement before the soft limit could interrupt it."""
    settings = load_settings({**BASE, **CONFIGURATIONS[name], "DATABASE_URL": pg_url})
    try:
        task_db.configure(settings)
        with task_db.session_scope(settings) as session:
            ms = (
                session.scalar(
                    text(
                        "SELECT extract(epoch FROM current_setting('statement_timeout')::interval)"
                    )
                )
                * 1000
            )
    finally:
        if task_db._engine is not None:
            task_db._engine.dispose()
        task_db._engine = task_db._factory = None
    assert 0 < ms < settings.task_soft_time_limit * 1000
    assert ms == settings.task_soft_time_limit * 900
