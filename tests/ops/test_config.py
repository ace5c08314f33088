"""Configuration: environment variables only; production mode refuses to start without its
required settings, at every entry point, with a message naming them; demo mode needs none."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service import logs
from service.config import ConfigError, load_settings
from tests.conftest import ROOT

VENV_BIN = Path(sys.executable).parent
REQUIRED = "SECRET_KEY, DATABASE_URL, CELERY_BROKER_URL"


def test_demo_mode_needs_nothing(tmp_path: Path) -> None:
    settings = load_settings({"DATA_DIR": str(tmp_path)})
    assert settings.env == "demo"
    assert settings.database_url == f"sqlite:///{tmp_path.resolve()}/messaging.db"
    assert settings.broker_url == f"redis+socket://{tmp_path.resolve()}/redis/redis.sock"
    assert len(settings.secret_key) > 40
    assert load_settings({"DATA_DIR": str(tmp_path)}).secret_key == settings.secret_key
    settings.check_flower()  # Flower without credentials is allowed outside production


def test_production_names_every_missing_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings({"APP_ENV": "production", "DATA_DIR": str(tmp_path)})
    assert str(err.value) == (
        f"production mode (APP_ENV=production) needs these settings: {REQUIRED}"
    )
    assert not (tmp_path / "secret_key").exists()  # nothing generated in production
    with pytest.raises(ConfigError, match=r"needs these settings: DATABASE_URL$"):
        load_settings(
            {"APP_ENV": "production", "SECRET_KEY": "k", "CELERY_BROKER_URL": "redis://r/0"}
        )


PRODUCTION = {
    "APP_ENV": "production",
    "SECRET_KEY": "a-long-random-secret",
    "DATABASE_URL": "postgresql+psycopg://u@db/x",
    "CELERY_BROKER_URL": "redis://r:6379/0",
}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "needs these settings: FLOWER_BASIC_AUTH"),
        ("admin", "FLOWER_BASIC_AUTH must be user:password"),
        ("admin:", "FLOWER_BASIC_AUTH must be user:password"),
        ("admin:pw,:x", "FLOWER_BASIC_AUTH must be user:password"),
    ],
)
def test_flower_needs_credentials_in_production(value: str, message: str) -> None:
    settings = load_settings({**PRODUCTION, "FLOWER_BASIC_AUTH": value})
    with pytest.raises(ConfigError, match=message):
        settings.check_flower()


def test_flower_credentials_accepted() -> None:
    load_settings({**PRODUCTION, "FLOWER_BASIC_AUTH": "admin:pw,ops:pw2"}).check_flower()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("LOG_FORMAT", "xml", "LOG_FORMAT must be one of text, json"),
        ("LOG_LEVEL", "loud", "LOG_LEVEL must be one of DEBUG"),
        ("HEALTH_TIMEOUT", "soon", "HEALTH_TIMEOUT must be a number"),
        ("APP_ENV", "staging", "APP_ENV must be demo, production or test"),
    ],
)
def test_malformed_settings_are_named(name: str, value: str, message: str, tmp_path) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings({"DATA_DIR": str(tmp_path), name: value})


def _run(cmd: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "SECRET_KEY", "FLOWER_BASIC_AUTH"}
    }
    return subprocess.run(
        cmd,
        env={**base, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


ENTRY_POINTS = {
    "web": ["gunicorn", "--bind=127.0.0.1:0", "web:create_app()"],
    "migrate": ["flask", "--app", "web", "db", "upgrade"],
    "worker": ["celery", "-A", "tasks", "worker", "-Q", "bulk"],
    "beat": ["celery", "-A", "tasks", "beat"],
    "flower": ["python", "-m", "tasks.flower", "--port=0"],
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_production_entry_points_refuse_to_start_without_settings(
    entry: str, tmp_path: Path
) -> None:
    cmd = ENTRY_POINTS[entry]
    result = _run([str(VENV_BIN / cmd[0]), *cmd[1:]], {"APP_ENV": "production"})
    assert result.returncode != 0, result.stdout + result.stderr
    assert f"production mode (APP_ENV=production) needs these settings: {REQUIRED}" in (
        result.stderr
    ), result.stderr[-3000:]


def test_flower_entry_point_refuses_to_start_without_credentials() -> None:
    result = _run([str(VENV_BIN / "python"), "-m", "tasks.flower", "--port=0"], PRODUCTION)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "configuration error: production mode (APP_ENV=production) needs these settings: "
        "FLOWER_BASIC_AUTH (user:password for Flower's basic authentication)"
    )


# --- logging ---------------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> object:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_json_logs_carry_the_bound_context(capsys, restore_logging) -> None:
    logs.configure("json", "INFO")
    log = logging.getLogger("tasks.delivery")
    with logs.bound(task_id="t-1", task_name="delivery.fan_out_batch", delivery_id=7, batch=2):
        with logs.bound(conversation_id=42):
            log.info("delivery %s batch %s wrote %s rows", 7, 2, 100)
        log.warning("after")
    log.info("outside")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["message"] == "delivery 7 batch 2 wrote 100 rows"
    assert lines[0]["level"] == "INFO" and lines[0]["logger"] == "tasks.delivery"
    assert {k: lines[0][k] for k in logs.CONTEXT_FIELDS} == {
        "task_id": "t-1",
        "task_name": "delivery.fan_out_batch",
        "delivery_id": 7,
        "batch": 2,
        "conversation_id": 42,
    }
    assert "conversation_id" not in lines[1] and lines[1]["delivery_id"] == 7
    assert not set(logs.CONTEXT_FIELDS) & set(lines[2])


def test_text_logs_append_the_context(capsys, restore_logging) -> None:
    logs.configure("text", "WARNING")
    log = logging.getLogger("x")
    with logs.bound(task_id="t-2", delivery_id=3):
        log.info("hidden: below the level")
        log.warning("shown")
    err = capsys.readouterr().err
    assert "hidden" not in err
    assert err.rstrip().endswith(f"WARNING x [{os.getpid()}] shown [task_id=t-2 delivery_id=3]")
