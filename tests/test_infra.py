"""The project's own machinery: Makefile, CI script, container files and the `make run` demo.

There is no Docker engine on the development and CI machines, so the compose file is checked
against the Compose specification's JSON schema (the copy check-jsonschema ships) plus the rules
this service adds: shared settings, no default secrets, every queue consumed, start-up order.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

from tasks.celery_app import TASK_QUEUES, celery_config
from tests.conftest import ROOT

APP_SERVICES = ("migrate", "web", "worker-bulk", "worker-interactive", "beat", "flower")
SECRETS = ("SECRET_KEY", "POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH")


def all_queues() -> set[str]:
    from service.config import Settings

    declared = {q.name for q in celery_config(Settings())["task_queues"]}
    return declared | set(TASK_QUEUES.values())


# --- docker-compose.yml ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    spec = importlib.util.find_spec("check_jsonschema")
    assert spec is not None and spec.submodule_search_locations, "check-jsonschema is not installed"
    path = Path(
        spec.submodule_search_locations[0], "builtin_schemas", "vendor", "compose-spec.json"
    )
    schema: dict[str, Any] = json.loads(path.read_text())
    jsonschema.validators.validator_for(schema).check_schema(schema)
    return schema


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # safe_load resolves the anchors and `<<` merges, as Compose does before validating.
    doc: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return doc


def schema_errors(schema: dict[str, Any], doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


def test_compose_file_matches_the_compose_specification(
    compose_schema: dict[str, Any], compose: dict[str, Any]
) -> None:
    assert schema_errors(compose_schema, compose) == []


def test_compose_schema_check_rejects_a_broken_file(
    compose_schema: dict[str, Any], compose: dict[str, Any]
) -> None:
    """The check above can fail: a misspelt condition and an unknown key are both caught."""
    broken = copy.deepcopy(compose)
    broken["services"]["web"]["depends_on"]["migrate"]["condition"] = "service_done"
    broken["services"]["redis"]["helthcheck"] = broken["services"]["redis"].pop("healthcheck")
    errors = schema_errors(compose_schema, broken)
    assert any(e.startswith("services.web.depends_on") for e in errors), errors
    assert any(e.startswith("services.redis") and "helthcheck" in e for e in errors), errors


def test_compose_has_the_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"postgres", "redis", *APP_SERVICES}
    assert compose["services"]["postgres"]["image"].startswith("postgres:16")
    assert compose["services"]["redis"]["image"].startswith("redis:7")


def test_compose_app_services_share_the_production_settings(compose: dict[str, Any]) -> None:
    shared = compose["x-settings"]
    assert shared["APP_ENV"] == "production"
    assert shared["DATABASE_URL"].startswith("postgresql+psycopg://")
    assert shared["DATABASE_URL"].endswith("@postgres:5432/messaging")
    assert shared["CELERY_BROKER_URL"] == "redis://redis:6379/0"
    for name in APP_SERVICES:
        env = compose["services"][name]["environment"]
        assert {k: env[k] for k in shared} == shared, name


def test_compose_secrets_have_no_defaults() -> None:
    """Every secret is required (`${NAME:?message}`); none has a fallback value."""
    text = (ROOT / "docker-compose.yml").read_text()
    for name in SECRETS:
        assert f"${{{name}:?" in text, name
        assert f"${{{name}:-" not in text and f"${{{name}-" not in text, name


def test_compose_every_queue_has_a_worker(compose: dict[str, Any]) -> None:
    consumed: set[str] = set()
    for service in compose["services"].values():
        command = service.get("command") or []
        if command[:4] == ["celery", "-A", "tasks", "worker"]:
            consumed |= set(command[command.index("-Q") + 1].split(","))
    assert consumed == all_queues()


def test_compose_starts_in_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"], name
    assert "--appendonly" in services["redis"]["command"]
    assert services["redis"]["command"][-2:] == ["--maxmemory-policy", "noeviction"]
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, (name, dependency)
            assert rule["condition"] in {"service_healthy", "service_completed_successfully"}
    assert services["migrate"]["command"] == ["flask", "--app", "web", "db", "upgrade"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("web", "worker-bulk", "worker-interactive", "beat"):
        rule = services[name]["depends_on"]["migrate"]["condition"]
        assert rule == "service_completed_successfully", name


def test_dockerfile_installs_the_prod_extra_and_ignores_local_state() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install -e '.[prod]'" in dockerfile
    assert "\nUSER " in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "var"} <= set(ignored)


# --- Makefile and CI ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("install", "pip install --quiet -e '.[test,dev,bench,load]'"),
        ("run", ".venv/bin/python scripts/run_demo.py"),
        ("test", ".venv/bin/pytest -k something"),
        ("lint", "ruff format --check ."),
        ("migrate", "alembic upgrade head"),
        ("clean", "rm -rf var .venv"),
    ],
)
def test_makefile_target(target: str, expected: str) -> None:
    """`make -n -B` prints what the target would run, as make itself reads the Makefile."""
    result = subprocess.run(
        ["make", "-n", "-B", target, "PYTEST_ARGS=-k something"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert expected in result.stdout


def test_ci_script_is_executable_and_runs_make_test() -> None:
    script = ROOT / ".ci" / "run"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "make test" in text
    # It starts and waits for both servers, and fails rather than skips without them.
    assert "pg_isready" in text and "redis-cli" in text
    assert "pg_ctlcluster --skip-systemctl-redirect" in text


# --- the demo (`make run`) ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_demo", ROOT / "scripts" / "run_demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_demo"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def test_embedded_redis_keeps_queued_work_across_a_restart(
    run_demo: ModuleType, tmp_path: Path
) -> None:
    """The demo broker: Unix socket only, no eviction, and an append-only file that SHUTDOWN
    flushes, so a task queued before a stop is still queued after the next start."""
    sock = tmp_path / "redis" / "redis.sock"
    env = dict(os.environ)
    child = run_demo.start_embedded_redis(sock, env)
    try:
        client = run_demo._redis_client(sock)
        assert client.config_get("port") == {"port": "0"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.lpush("interactive", "task-1")
        client.close()
    finally:
        run_demo.stop_redis(child, sock)
    assert child.proc.returncode == 0

    child = run_demo.start_embedded_redis(sock, env)
    try:
        client = run_demo._redis_client(sock)
        assert client.lrange("interactive", 0, -1) == [b"task-1"]
        client.close()
    finally:
        run_demo.stop_redis(child, sock)


def test_demo_worker_consumes_every_queue(run_demo: ModuleType) -> None:
    assert set(run_demo.WORKER_QUEUES.split(",")) == all_queues()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def processes_of(data_dir: Path) -> dict[int, str]:
    """pid -> command line of every live process started for this data folder: its environment
    names the folder, or (redis-server, which writes its title over its environment) its
    command line does."""
    marker = f"DATA_DIR={data_dir}".encode()
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone, or not ours to read
            continue
        if state != "Z" and (marker in environ or str(data_dir) in cmdline):
            found[int(entry.name)] = cmdline
    return found


class Demo:
    """`scripts/run_demo.py` in its own data folder and port, its output in a file."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.log = log
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"APP_ENV", "DATABASE_URL", "CELERY_BROKER_URL", "SECRET_KEY"}
        }
        env.update(DATA_DIR=str(data_dir), PORT=str(self.port))
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "scripts" / "run_demo.py")],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 300) -> int:
        """Wait for an HTTP answer and the supervisor's ready banner (the worker answered a ping
        through the broker); return the status of GET /login."""
        deadline = time.monotonic() + timeout
        status = None
        while status is None or "Press Ctrl-C to stop." not in self.output():
            assert self.proc.poll() is None, f"run_demo exited early:\n{self.output()[-6000:]}"
            assert time.monotonic() < deadline, f"not ready in {timeout}s:\n{self.output()[-6000:]}"
            status = status or http_status(f"http://127.0.0.1:{self.port}/login")
            time.sleep(0.5)
        return status

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"run_demo still running after {timeout}s:\n{self.output()[-6000:]}")

    def kill(self) -> None:
        """Last resort after a failed test: nothing of this demo may outlive it."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in processes_of(self.data_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def http_status(url: str) -> int | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


@pytest.fixture(scope="module")
def demo_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data folder for the demo tests: the first start seeds it, later ones reuse it."""
    return tmp_path_factory.mktemp("demo").resolve() / "var"


@pytest.fixture
def demo(demo_data_dir: Path, tmp_path: Path) -> Iterator[Demo]:
    started = Demo(demo_data_dir, tmp_path / "run_demo.log")
    try:
        yield started
    finally:
        started.kill()


@pytest.mark.e2e
def test_run_demo_starts_everything_and_stops_cleanly_on_ctrl_c(demo: Demo) -> None:
    status = demo.wait_ready()
    assert status < 500, demo.output()[-6000:]
    running = processes_of(demo.data_dir)
    commands = list(running.values())
    assert any("redis-server" in c for c in commands), commands
    assert any("celery -A tasks worker" in c for c in commands), commands
    assert any("flask --app web run" in c for c in commands), commands
    assert (demo.data_dir / "messaging.db").exists()

    redis_log = demo.data_dir / "redis" / "redis.log"
    logged_before = redis_log.stat().st_size

    demo.proc.send_signal(signal.SIGINT)
    assert demo.wait_exit(timeout=20) == 0, demo.output()[-6000:]
    assert processes_of(demo.data_dir) == {}
    # Redis was stopped with SHUTDOWN (AOF flushed, socket removed), not killed.
    assert not (demo.data_dir / "redis" / "redis.sock").exists()
    with redis_log.open() as log:
        log.seek(logged_before)
        assert "Redis is now ready to exit" in log.read()


@pytest.mark.e2e
def test_run_demo_stops_the_rest_when_a_child_dies(demo: Demo) -> None:
    demo.wait_ready()
    redis_pid = next(p for p, c in processes_of(demo.data_dir).items() if "redis-server" in c)
    os.kill(redis_pid, signal.SIGKILL)
    assert demo.wait_exit(timeout=20) == 1
    assert "redis (pid" in demo.output() and "exited unexpectedly" in demo.output()
    assert processes_of(demo.data_dir) == {}
