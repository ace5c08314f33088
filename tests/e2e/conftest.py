"""End-to-end fixtures: committed data in a PostgreSQL database of its own, the shared Redis (a
database index of its own, never flushed), and real worker and web server processes."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, create_pg_database, migrate, redis_server_binary, run_db_name

# The shared Redis's database index for these tests; TEST_E2E_REDIS_DB lets checkouts differ.
E2E_REDIS_DB = int(os.environ.get("TEST_E2E_REDIS_DB", "5"))
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process with its output in a log file, stopped (and reaped) on exit."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            cmd,
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.log()):
                return
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited early:\n{self.log()[-3000:]}")
            time.sleep(0.2)
        raise AssertionError(f"{self.name}: no {pattern!r} in {timeout}s:\n{self.log()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        self._log.close()
        return self.popen.returncode


def start_redis(data_dir: Path) -> tuple[Proc, str]:
    """A private redis-server on a Unix socket (the embedded default's broker), with AOF on."""
    sock = data_dir / "redis.sock"
    proc = Proc(
        "redis",
        [
            redis_server_binary(),
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
            "--dir",
            str(data_dir),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
        ],
        dict(os.environ),
        data_dir,
    )
    proc.wait_for_log(r"(?i)ready to accept connections", timeout=30)
    return proc, f"redis+socket://{sock}"


@pytest.fixture(scope="module", params=["postgresql", "embedded"])
def e2e_env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[dict[str, str]]:
    """PostgreSQL with the shared Redis (a database index of its own), or the embedded default:
    SQLite with a private redis-server, as `make run` has it."""
    data_dir = tmp_path_factory.mktemp("e2e")
    redis_proc = None
    if request.param == "postgresql":
        suffix = os.environ.get("PYTEST_XDIST_WORKER", "main")
        db_url = create_pg_database(run_db_name(f"e2e_{suffix}"))
        broker = f"{redis_url.rsplit('/', 1)[0]}/{E2E_REDIS_DB}"
    else:
        db_url = f"sqlite:///{data_dir / 'messaging.db'}"
        redis_proc, broker = start_redis(data_dir)
    migrate(db_url)
    env = dict(os.environ)
    env.update(
        APP_ENV="test",
        DATA_DIR=str(data_dir),
        DATABASE_URL=db_url,
        CELERY_BROKER_URL=broker,
        SECRET_KEY="e2e-secret",
        DELIVERY_BATCH_SIZE="100",
        SWEEP_INTERVAL="2",
        STALE_AFTER="15",
        PYTHONUNBUFFERED="1",
    )
    yield env
    if redis_proc is not None:
        redis_proc.stop()


@pytest.fixture(scope="module")
def seeded(e2e_env: dict[str, str]) -> dict[str, str]:
    """The Sierra Leone hierarchy and demo users, committed."""
    from service.db import make_engine, make_session_factory
    from service.demo import seed_demo

    engine = make_engine(e2e_env["DATABASE_URL"], pool=False)
    with make_session_factory(engine)() as session:
        seed_demo(session)
        session.commit()
    engine.dispose()
    return e2e_env


def start_worker(
    env: dict[str, str],
    log_dir: Path,
    name: str = "worker",
    queues: str = "bulk,interactive",
    concurrency: int = 2,
    beat: bool = True,
) -> Proc:
    cmd = [
        str(VENV_BIN / "celery"),
        "-A",
        "tasks",
        "worker",
        "-Q",
        queues,
        "-c",
        str(concurrency),
        "--loglevel",
        "INFO",
        "-n",
        f"{name}@%h",
        "--without-mingle",
        "--without-gossip",
    ]
    if beat:
        cmd += ["-B", "-s", str(log_dir / f"{name}-beat-schedule")]
    proc = Proc(name, cmd, env, log_dir)
    proc.wait_for_log(r"ready\.", timeout=60)
    return proc


def purge_queues(env: dict[str, str]) -> None:
    subprocess.run(
        [str(VENV_BIN / "celery"), "-A", "tasks", "purge", "-f", "-Q", "bulk,interactive"],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def worker(seeded: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    purge_queues(seeded)
    proc = start_worker(seeded, tmp_path_factory.mktemp("worker"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def web_server(seeded: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    proc = Proc(
        "web",
        [
            str(VENV_BIN / "flask"),
            "--app",
            "web",
            "run",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-reload",
        ],
        seeded,
        tmp_path_factory.mktemp("web"),
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(base + "/api/me", timeout=2)
            break
        except requests.ConnectionError:
            if time.monotonic() > deadline or proc.popen.poll() is not None:
                raise AssertionError(f"web server did not start:\n{proc.log()[-3000:]}") from None
            time.sleep(0.2)
    yield base
    proc.stop()
