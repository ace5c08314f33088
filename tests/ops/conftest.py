"""Operations fixtures: a private redis-server configured as docker-compose.yml configures the
broker (these tests read and fill its queues, so it is never the shared one)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from tests.conftest import ROOT, redis_server_binary


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
