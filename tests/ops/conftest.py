"""Operations fixtures: a private redis-server configured as docker-compose.yml configures the
broker (these tests read and fill its queues, so it is never the shared one)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import yaml

from service.db import make_engine
from tests.conftest import ROOT, create_pg_database, migrate, redis_server_binary, run_db_name
from tests.e2e.conftest import Proc
from tests.faults.conftest import Stack


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def compose_file() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def start_broker(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """redis-server with the compose file's own broker flags, on a free loopback port."""
    command = compose_file()["services"]["redis"]["command"]
    assert command[0] == "redis-server"
    port = free_port()
    proc = subprocess.Popen(
        [
            redis_server_binary(),
            *command[1:],
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir),
            "--save",
            "",
        ],
        stdout=(data_dir / "redis.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert proc.poll() is None, (data_dir / "redis.log").read_text()
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    client.close()
    return proc, url


def stop_broker(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_broker(tmp_path_factory.mktemp("broker"))
    yield url
    stop_broker(proc)


@pytest.fixture
def broker(broker_url: str) -> Iterator[redis.Redis]:
    """A client of the private broker, emptied before each test."""
    client = redis.Redis.from_url(broker_url)
    client.flushdb()
    yield client
    client.close()


# --- real processes: a PostgreSQL database, the private broker, workers and Flower ------------

FLOWER_USER, FLOWER_PASSWORD = "ops", "flower-test-password"


def ops_stack(name: str, log_dir: Path, **settings: str) -> tuple[Stack, subprocess.Popen[bytes]]:
    """A migrated PostgreSQL database of its own and a private broker with the compose file's
    flags; the environment workers, beat, Flower and publishers share. Stop with `stop_stack`."""
    db_url = create_pg_database(run_db_name(name))
    migrate(db_url)
    broker_proc, url = start_broker(log_dir)
    env = dict(os.environ)
    env.update(
        APP_ENV="test",
        SECRET_KEY="ops-secret",
        DATA_DIR=str(log_dir),
        DATABASE_URL=db_url,
        CELERY_BROKER_URL=url,
        PYTHONUNBUFFERED="1",
        **settings,
    )
    engine = make_engine(db_url, pool_size=4)
    # Stack's `redis` is for fault tests that restart their broker; these never do.
    stack = Stack(env=env, engine=engine, redis=None, log_dir=log_dir, workers=[])  # type: ignore[arg-type]
    return stack, broker_proc


def stop_stack(stack: Stack, broker_proc: subprocess.Popen[bytes]) -> None:
    stack.stop_workers()
    stop_broker(broker_proc)
    stack.engine.dispose()


def wait_http(url: str, proc: Proc, timeout: float = 90) -> requests.Response:
    """Poll `url` until it answers 200 (the process must stay up meanwhile)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        assert proc.popen.poll() is None, f"{proc.name} exited:\n{proc.log()[-4000:]}"
        try:
            resp = requests.get(url, timeout=5)
            if resp.status_code == 200:
                return resp
            last = resp.status_code
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.3)
    raise AssertionError(f"{url}: no 200 in {timeout}s (last: {last})\n{proc.log()[-4000:]}")


def start_flower(
    env: dict[str, str], log_dir: Path, name: str = "flower", **settings: str
) -> tuple[Proc, str]:
    """`python -m tasks.flower` (the compose service's entry point) on a free loopback port,
    basic auth from the environment. Flower's own `enable_events` is off, so every event it
    shows was sent because the workers' configuration says so."""
    port = free_port()
    env = dict(
        env,
        FLOWER_BASIC_AUTH=f"{FLOWER_USER}:{FLOWER_PASSWORD}",
        FLOWER_ENABLE_EVENTS="false",
        **settings,
    )
    proc = Proc(
        name,
        [sys.executable, "-m", "tasks.flower", f"--port={port}", "--address=127.0.0.1"],
        env,
        log_dir,
    )
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/healthcheck", proc)
    return proc, base


def flower_tasks(base: str, **params: str) -> dict[str, dict[str, Any]]:
    """Flower's /api/tasks (uuid -> task), with basic auth."""
    resp = requests.get(
        f"{base}/api/tasks", params=params, auth=(FLOWER_USER, FLOWER_PASSWORD), timeout=10
    )
    assert resp.status_code == 200, resp.text[:500]
    return resp.json()  # type: ignore[no-any-return]
