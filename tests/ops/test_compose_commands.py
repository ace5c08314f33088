"""Every application service of docker-compose.yml, run as a plain process with the command,
environment and health check the compose file gives it (there is no Docker engine here).

Only what a container provides is substituted: the `postgres` and `redis` hosts become a
PostgreSQL database and a private redis-server (started with the compose file's own flags) on
127.0.0.1, published ports become free loopback ports, the container's /tmp a temporary folder,
the hostname this machine's. Everything else — APP_ENV=production, the shared settings, the
secrets (interpolated as compose interpolates `${NAME:?...}`), each command's arguments — is the
compose file's. The migration runs first and must succeed (service_completed_successfully); the
long-running services must then pass their own health checks, do their jobs (web answers ready,
each worker consumes its queue, beat schedules the sweep and the interactive worker runs it,
Flower shows it behind basic auth, a message sent to gunicorn is delivered by worker-bulk) and
stop on SIGTERM, as `docker compose stop` sends it, with exit code 0.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text

from service.config import Settings
from service.db import make_engine
from tasks.celery_app import make_celery
from tests.conftest import ROOT, create_pg_database, run_db_name
from tests.e2e.conftest import VENV_BIN, Proc
from tests.faults.conftest import wait_until
from tests.ops.conftest import compose_file, free_port, start_broker, stop_broker

HOST = socket.gethostname()
LONG_RUNNING = ("web", "worker-bulk", "worker-interactive", "beat", "flower")
FLOWER_AUTH = ("operator", "compose-flower-password")
# What an operator exports before `docker compose up` (the compose file's header says so).
OPERATOR_ENV = {
    "SECRET_KEY": "compose-test-secret-key-that-is-long-enough-0123456789",
    "POSTGRES_PASSWORD": "compose-pw",
    "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH),
}
# Test clocks: the sweep every 2 s instead of 30 (a setting every service reads).
TEST_SETTINGS = {"SWEEP_INTERVAL": "2"}

_VAR = re.compile(
    r"\$(?:(?P<dollar>\$)|\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_]\w*))"
)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation of `$$`, `$NAME`, `${NAME}`, `${NAME:-default}`, `${NAME-default}`,
    `${NAME:?error}` and `${NAME?error}` in every string of a parsed compose document."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m["dollar"]:
            return "$"
        name = m["name"] or m["bare"]
        op, arg = m["op"], m["arg"]
        current = env.get(name)
        unset = current is None or (current == "" and op is not None and op.startswith(":"))
        if op and op.endswith("?") and unset:
            raise ValueError(f"required variable {name} is missing: {arg}")
        if op and op.endswith("-") and unset:
            return arg
        return current or ""

    return _VAR.sub(one, value)


def test_interpolation_follows_compose() -> None:
    env = {"A": "a", "E": ""}
    assert interpolate("$A ${A} ${E:-d} ${E-d} ${U:-d} $$A", env) == "a a d  d $A"
    with pytest.raises(ValueError, match="required variable U is missing: set U"):
        interpolate("${U:?set U}", env)
    with pytest.raises(ValueError, match="E is missing"):
        interpolate("${E:?no}", env)
    # Without the operator's secrets the compose file does not even load.
    for name in OPERATOR_ENV:
        partial = {k: v for k, v in OPERATOR_ENV.items() if k != name}
        with pytest.raises(ValueError, match=name):
            interpolate(compose_file(), partial)


@dataclass
class Local:
    """How this machine stands in for the containers' network and file system."""

    db_url: str
    broker_port: int
    tmp: Path
    ports: dict[str, int] = field(default_factory=dict)

    def replacements(self) -> dict[str, str]:
        web, flower = self.ports["web"], self.ports["flower"]
        return {
            "0.0.0.0:8000": f"127.0.0.1:{web}",
            "127.0.0.1:8000": f"127.0.0.1:{web}",
            "--port=5555": f"--port={flower}",
            "127.0.0.1:5555": f"127.0.0.1:{flower}",
            # the container's /tmp, replaced by this test's own folder
            "/tmp/celerybeat-schedule": str(self.tmp / "celerybeat-schedule"),  # noqa: S108
        }

    def localise(self, arg: str) -> str:
        for old, new in self.replacements().items():
            arg = arg.replace(old, new)
        return arg

    def argv(self, command: list[str]) -> list[str]:
        """The command with its program taken from the virtualenv (the image's installation)."""
        program = shutil.which(command[0], path=str(VENV_BIN))
        assert program, command[0]
        return [program, *(self.localise(a) for a in command[1:])]

    def env(self, service: dict[str, Any]) -> dict[str, str]:
        settings = {k: str(v) for k, v in service["environment"].items()}
        # The hosts the compose network provides.
        expected_db = "postgresql+psycopg://messaging:compose-pw@postgres:5432/messaging"
        assert settings["DATABASE_URL"] == expected_db
        settings["DATABASE_URL"] = self.db_url
        assert settings["CELERY_BROKER_URL"] == "redis://redis:6379/0"
        settings["CELERY_BROKER_URL"] = f"redis://127.0.0.1:{self.broker_port}/0"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWER_", "APP_"))}
        for name in ("DATABASE_URL", "CELERY_BROKER_URL", "SECRET_KEY", "DATA_DIR"):
            base.pop(name, None)
        return {
            **base,
            "PATH": f"{VENV_BIN}{os.pathsep}{base.get('PATH', '')}",
            "HOSTNAME": HOST,
            "DATA_DIR": str(self.tmp / "data"),
            "PYTHONUNBUFFERED": "1",
            **settings,
            **TEST_SETTINGS,
        }

    def healthcheck(self, service: dict[str, Any]) -> tuple[list[str], float]:
        """The health check's command, as Docker would run it, and its timeout in seconds."""
        test = service["healthcheck"]["test"]
        if test[0] == "CMD-SHELL":
            argv = ["/bin/sh", "-c", self.localise(test[1])]
        else:
            assert test[0] == "CMD", test
            argv = self.argv(test[1:])
        timeout = float(service["healthcheck"]["timeout"].removesuffix("s"))
        return argv, timeout


@dataclass
class Deployment:
    local: Local
    services: dict[str, Any]
    migrations: list[subprocess.CompletedProcess[str]]
    procs: dict[str, Proc]
    started_at: dict[str, float]

    def run_healthcheck(self, name: str, **env: str) -> subprocess.CompletedProcess[str]:
        argv, timeout = self.local.healthcheck(self.services[name])
        return subprocess.run(
            argv,
            env={**self.local.env(self.services[name]), **env},
            cwd=ROOT,
            capture_output=True,
            text=True,
            # Two shared cores: a health check gets three times its compose timeout here.
            timeout=3 * timeout,
            stdin=subprocess.DEVNULL,
        )

    def celery(self) -> Any:
        url = f"redis://127.0.0.1:{self.local.broker_port}/0"
        return make_celery(Settings(env="test", broker_url=url, secret_key="x"))

    def flower(self, path: str, auth: tuple[str, str] | None = FLOWER_AUTH) -> requests.Response:
        return requests.get(
            f"http://127.0.0.1:{self.local.ports['flower']}{path}", auth=auth, timeout=15
        )

    def web(self, path: str) -> str:
        return f"http://127.0.0.1:{self.local.ports['web']}{path}"


def run_one_shot(local: Local, service: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        local.argv(service["command"]),
        env=local.env(service),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )


def start_order(services: dict[str, Any]) -> list[str]:
    """The application services in an order their depends_on allows (compose's own order)."""
    order: list[str] = []
    todo = [n for n in services if n not in ("postgres", "redis")]
    while todo:
        ready = [
            n
            for n in todo
            if set(services[n].get("depends_on", {})) - {"postgres", "redis"} <= set(order)
        ]
        assert ready, f"depends_on has a cycle among {todo}"
        order += ready
        todo = [n for n in todo if n not in ready]
    return order


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("compose")
    (tmp / "data").mkdir()
    doc = interpolate(compose_file(), OPERATOR_ENV)
    services = doc["services"]
    db_url = create_pg_database(run_db_name("ops_compose"))  # empty: migrate creates the schema
    broker_proc, broker_url = start_broker(tmp)
    local = Local(
        db_url=db_url, broker_port=int(broker_url.rsplit(":", 1)[1].split("/")[0]), tmp=tmp
    )
    local.ports = {"web": free_port(), "flower": free_port()}
    dep = Deployment(local, services, [], {}, {})
    try:
        order = start_order(services)
        assert order[0] == "migrate"
        # The one-shot migration, twice: a restarted migrate container must succeed too.
        for _ in range(2):
            dep.migrations.append(run_one_shot(local, services["migrate"]))
            if dep.migrations[-1].returncode != 0:
                break
        if all(m.returncode == 0 for m in dep.migrations):
            for name in order[1:]:
                argv = local.argv(services[name]["command"])
                if name == "flower":
                    argv.append("--address=127.0.0.1")  # the container binds all its interfaces
                dep.procs[name] = Proc(name, argv, local.env(services[name]), tmp)
                dep.started_at[name] = time.monotonic()
        yield dep
    finally:
        for proc in dep.procs.values():
            proc.stop(signal.SIGKILL)
        stop_broker(broker_proc)


def test_migrate_creates_the_schema_and_succeeds_again(deployment: Deployment) -> None:
    for result in deployment.migrations:
        assert result.returncode == 0, result.stdout + result.stderr
    assert len(deployment.migrations) == 2
    assert "database at revision" in deployment.migrations[-1].stdout
    script = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini")))
    engine = make_engine(deployment.local.db_url, pool=False)
    with engine.connect() as conn:
        current = conn.scalar(text("SELECT version_num FROM alembic_version"))
    engine.dispose()
    assert current == script.get_current_head()


def test_every_long_running_service_was_started(deployment: Deployment) -> None:
    assert set(deployment.procs) == set(LONG_RUNNING)
    for name in LONG_RUNNING:
        assert "healthcheck" in deployment.services[name], f"{name} has no health check"


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_service_passes_its_own_compose_healthcheck(deployment: Deployment, name: str) -> None:
    proc = deployment.procs[name]
    last: list[subprocess.CompletedProcess[str]] = []

    def healthy() -> bool:
        assert proc.popen.poll() is None, f"{name} exited:\n{proc.log()[-4000:]}"
        last.append(deployment.run_healthcheck(name))
        return last[-1].returncode == 0

    try:
        wait_until(healthy, 180, f"{name}'s health check to pass", 1.0)
    except AssertionError:
        out = last[-1].stdout + last[-1].stderr if last else ""
        raise AssertionError(f"{name} unhealthy: {out[-2000:]}\n{proc.log()[-3000:]}") from None
    took = time.monotonic() - deployment.started_at[name]
    print(f"\n[measure] {name} healthy {took:.1f}s after its start")


def test_healthchecks_fail_for_what_is_not_there(deployment: Deployment, tmp_path: Path) -> None:
    """The checks are not vacuous: a worker node that does not exist does not answer the ping,
    and beat's check fails when no schedule file was written."""
    for name in ("worker-bulk", "worker-interactive"):
        assert deployment.run_healthcheck(name, HOSTNAME="elsewhere").returncode != 0
    argv, _ = deployment.local.healthcheck(deployment.services["beat"])
    script = argv[-1].replace(str(deployment.local.tmp), str(tmp_path))
    assert subprocess.run([*argv[:-1], script], timeout=60).returncode == 1


def test_web_is_ready_and_serves_metrics(deployment: Deployment) -> None:
    resp = requests.get(deployment.web("/health/ready"), timeout=10)
    assert resp.status_code == 200, resp.text
    checks = resp.json()["checks"]
    assert checks["database"]["ok"] and checks["broker"]["ok"]
    metrics = requests.get(deployment.web("/metrics"), timeout=10)
    assert metrics.status_code == 200 and "messaging_queue_depth" in metrics.text


@pytest.mark.parametrize(
    ("name", "queue"), [("worker-bulk", "bulk"), ("worker-interactive", "interactive")]
)
def test_each_worker_consumes_its_own_queue(deployment: Deployment, name: str, queue: str) -> None:
    node = f"{queue}@{HOST}"
    inspect = deployment.celery().control.inspect(destination=[node], timeout=10)
    replies = wait_until(inspect.active_queues, 60, f"{node} to list its queues", 1.0)
    assert [q["name"] for q in replies[node]] == [queue]
    stats = inspect.stats()[node]
    assert stats["prefetch_count"] == stats["pool"]["max-concurrency"]  # multiplier 1


def test_beat_schedules_the_sweep_and_worker_interactive_runs_it(deployment: Deployment) -> None:
    beat, worker = deployment.procs["beat"], deployment.procs["worker-interactive"]
    beat.wait_for_log(r"Sending due task delivery-sweep \(delivery\.sweep\)", timeout=120)
    worker.wait_for_log(r"Task delivery\.sweep\[[0-9a-f-]+\] succeeded", timeout=120)
    # The bulk worker knows the task (its banner lists it) but never receives one: the sweep is
    # routed to the interactive queue.
    assert not re.search(r"delivery\.sweep\[[0-9a-f-]+\]", deployment.procs["worker-bulk"].log())


def test_flower_shows_the_sweeps_behind_basic_auth(deployment: Deployment) -> None:
    assert deployment.flower("/healthcheck", auth=None).text == "OK"
    assert deployment.flower("/api/tasks", auth=None).status_code == 401

    def sweeps() -> list[dict[str, Any]]:
        tasks = deployment.flower("/api/tasks?taskname=delivery.sweep").json().values()
        return [t for t in tasks if t["state"] == "SUCCESS"]

    done = wait_until(sweeps, 120, "Flower to show a finished sweep", 1.0)
    assert {t["worker"] for t in done} == {f"interactive@{HOST}"}


def test_a_message_sent_to_gunicorn_is_delivered_by_worker_bulk(deployment: Deployment) -> None:
    """`docker compose run --rm web flask --app web create-user ...` twice, then the API."""
    web = deployment.services["web"]
    uids = {}
    for username in ("composer", "reader"):
        cli = {
            **web,
            "command": [
                "flask",
                "--app",
                "web",
                "create-user",
                username,
                "--password",
                "a-long-password",
            ],
        }
        result = run_one_shot(deployment.local, cli)
        assert result.returncode == 0, result.stdout + result.stderr
        uids[username] = re.search(r"\((\w{11})\) created", result.stdout)[1]  # type: ignore[index]
    resp = requests.post(
        deployment.web("/api/messageConversations"),
        json={"subject": "Through compose", "text": "Hello", "users": [{"id": uids["reader"]}]},
        auth=("composer", "a-long-password"),
        timeout=30,
    )
    assert resp.status_code == 201, resp.text
    conversation = resp.json()["id"]

    def delivered() -> dict[str, Any] | None:
        body = requests.get(
            deployment.web(f"/api/messageConversations/{conversation}/delivery"),
            auth=("composer", "a-long-password"),
            timeout=30,
        ).json()
        return body if body["state"] == "DELIVERED" else None

    assert wait_until(delivered, 120, "the delivery", 0.5)["delivered"] == 1
    deployment.procs["worker-bulk"].wait_for_log(
        r"Task delivery\.plan\[[0-9a-f-]+\] succeeded", timeout=30
    )
    inbox = requests.get(
        deployment.web("/api/messageConversations"), auth=("reader", "a-long-password"), timeout=30
    ).json()
    assert [c["subject"] for c in inbox["messageConversations"]] == ["Through compose"]


def test_services_stop_on_sigterm_with_exit_code_0(deployment: Deployment) -> None:
    """`docker compose stop`: SIGTERM to each container's main process, then a kill after the
    service's stop_grace_period (Docker's default 10 s)."""
    codes = {}
    for name in LONG_RUNNING:
        proc = deployment.procs[name]
        grace = float(
            str(deployment.services[name].get("stop_grace_period", "10s")).removesuffix("s")
        )
        t = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.popen.pid, signal.SIGTERM)
        try:
            codes[name] = proc.popen.wait(grace)
        except subprocess.TimeoutExpired:
            codes[name] = f"still running after {grace}s"  # type: ignore[assignment]
        print(f"\n[measure] {name} stopped in {time.monotonic() - t:.1f}s")
    assert codes == dict.fromkeys(LONG_RUNNING, 0), {
        n: deployment.procs[n].log()[-1500:] for n in codes if codes[n] != 0
    }
