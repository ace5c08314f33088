"""Fault-injection fixtures: a PostgreSQL database per module, a private redis-server that tests
may stop, restart or empty, real Celery worker processes, and the exactness check every fault test
ends with (inbox rows equal the recipient set, counters equal recounts)."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from service import messaging as msg
from service.config import load_settings
from service.db import make_engine, make_session_factory
from service.models import Conversation, Delivery, DeliveryBatch, Inbox, User
from tests import factories as f
from tests.conftest import create_pg_database, migrate, redis_server_binary, run_db_name
from tests.e2e.conftest import VENV_BIN, Proc, free_port, start_worker
from web.publisher import CeleryPublisher

# Short clocks so faults recover within seconds: soft < hard time limit < visibility timeout.
FAULT_SETTINGS = {
    "APP_ENV": "test",
    "SECRET_KEY": "faults-secret",
    "DELIVERY_BATCH_SIZE": "500",
    "TASK_SOFT_TIME_LIMIT": "10",
    "TASK_TIME_LIMIT": "12",
    "BROKER_VISIBILITY_TIMEOUT": "15",
    "SWEEP_INTERVAL": "1",
    "STALE_AFTER": "4",
    "BROKER_CONNECT_TIMEOUT": "1",
    "PYTHONUNBUFFERED": "1",
}


class RedisServer:
    """A redis-server of the test's own on a spare TCP port, without persistence, so that a
    restart loses every queued message (the worst case)."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.log_dir = log_dir
        self.proc: Proc | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.starts += 1
        self.proc = Proc(
            f"redis-{self.starts}",
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.log_dir),
            ],
            dict(os.environ),
            self.log_dir,
        )
        self.proc.wait_for_log(r"(?i)ready to accept connections", timeout=30)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(signal.SIGKILL)
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=5)

    def flushall(self) -> None:
        c = self.client()
        try:
            c.flushall()
        finally:
            c.close()


@dataclass
class Stack:
    """One module's world: database, private Redis, environment for workers and publishers."""

    env: dict[str, str]
    engine: Engine
    redis: RedisServer
    log_dir: Path
    workers: list[Proc]

    def session(self) -> Session:
        return make_session_factory(self.engine)()

    def worker(self, name: str, concurrency: int = 2, **extra: str) -> Proc:
        env = dict(self.env, **extra)
        proc = start_worker(env, self.log_dir, name=name, concurrency=concurrency, beat=False)
        self.workers.append(proc)
        return proc

    def beat(self) -> Proc:
        """The periodic sweep's scheduler, in a process of its own (workers may be killed)."""
        n = len(self.workers)
        proc = Proc(
            f"beat-{n}",
            [
                str(VENV_BIN / "celery"),
                "-A",
                "tasks",
                "beat",
                "--loglevel",
                "INFO",
                "-s",
                str(self.log_dir / f"beat-schedule-{n}"),
            ],
            self.env,
            self.log_dir,
        )
        proc.wait_for_log(r"beat: Starting", timeout=60)
        self.workers.append(proc)
        return proc

    def publisher(self, **extra: str) -> CeleryPublisher:
        return CeleryPublisher(load_settings(dict(self.env, **extra)))

    def stop_workers(self) -> None:
        for w in self.workers:
            w.stop()
        self.workers.clear()


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    db_url = create_pg_database(run_db_name(f"faults_{module}"))
    migrate(db_url)
    log_dir = tmp_path_factory.mktemp(f"faults-{module}")
    server = RedisServer(log_dir)
    server.start()
    env = dict(os.environ)
    env.update(FAULT_SETTINGS)
    env.update(DATA_DIR=str(log_dir), DATABASE_URL=db_url, CELERY_BROKER_URL=server.url)
    engine = make_engine(db_url, pool_size=4)
    s = Stack(env=env, engine=engine, redis=server, log_dir=log_dir, workers=[])
    yield s
    s.stop_workers()
    server.stop()
    engine.dispose()


@pytest.fixture
def live(stack: Stack) -> Iterator[Stack]:
    """The stack with the sweep's scheduler running; every process a test starts is stopped
    after it."""
    stack.beat()
    yield stack
    stack.stop_workers()


# ---------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Population:
    sender_id: int
    group_uid: str
    member_ids: frozenset[int]


def population(stack: Stack, size: int) -> Population:
    """`size` users in one user group plus a sender, inserted set-based (50,000 in about a
    second), committed."""
    tag = "".join(secrets.choice(string.ascii_uppercase) for _ in range(3))
    with stack.session() as s:
        sender = f.user(s, f"sender_{tag.lower()}")
        group = f.user_group(s, f"Faults {tag}")
        s.execute(
            text(
                "WITH u AS ("
                " INSERT INTO app_user (uid, username, created_at)"
                " SELECT 'P' || :tag || lpad(g::text, 7, '0'), :tag || '_' || g, now()"
                " FROM generate_series(1, :n) AS g RETURNING id)"
                " INSERT INTO user_group_member (group_id, user_id) SELECT :gid, id FROM u"
            ),
            {"tag": tag, "n": size, "gid": group.id},
        )
        members = frozenset(
            s.scalars(
                text("SELECT user_id FROM user_group_member WHERE group_id = :g"),
                {"g": group.id},
            )
        )
        s.commit()
        return Population(sender_id=sender.id, group_uid=group.uid, member_ids=members)


@dataclass(frozen=True)
class Broadcast:
    conversation_id: int
    delivery_id: int
    expected: frozenset[int]


def submit(stack: Stack, pop: Population, subject: str = "Broadcast") -> Broadcast:
    """Write a broadcast to the group and commit it, without publishing anything."""
    with stack.session() as s:
        sender = s.get_one(User, pop.sender_id)
        sent = msg.send_message(
            s, sender, subject, "Body", msg.Recipients(user_groups=[pop.group_uid])
        )
        assert sent.delivery is not None
        s.commit()
        return Broadcast(
            conversation_id=sent.conversation.id,
            delivery_id=sent.delivery.id,
            expected=pop.member_ids | {pop.sender_id},
        )


def broadcast(stack: Stack, pop: Population, subject: str = "Broadcast") -> Broadcast:
    """Submit and publish `delivery.plan` after the commit, as the web app does."""
    b = submit(stack, pop, subject)
    assert stack.publisher().publish("delivery.plan", b.delivery_id)
    return b


def delivery(stack: Stack, delivery_id: int) -> Delivery:
    with stack.session() as s:
        return s.get_one(Delivery, delivery_id)


def wait_until(pred, timeout: float, what: str, interval: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_finished(stack: Stack, b: Broadcast, timeout: float = 120.0) -> Delivery:
    def done() -> Delivery | None:
        d = delivery(stack, b.delivery_id)
        return d if d.state in ("DELIVERED", "FAILED") else None

    try:
        return wait_until(done, timeout, f"delivery {b.delivery_id} to finish", 0.2)  # type: ignore[no-any-return]
    except AssertionError:
        d = delivery(stack, b.delivery_id)
        logs = "\n".join(f"--- {w.name} ---\n{w.log()[-3000:]}" for w in stack.workers)
        raise AssertionError(
            f"delivery stuck: state={d.state} delivered={d.delivered}/{d.total} "
            f"pending={d.batches_pending}\n{logs}"
        ) from None


def assert_exact(stack: Stack, b: Broadcast) -> None:
    """Inbox rows equal the recipient set exactly; the counters equal recounts."""
    with stack.session() as s:
        rows = s.execute(
            select(Inbox.user_id, Inbox.read).where(Inbox.conversation_id == b.conversation_id)
        ).all()
        users = [r.user_id for r in rows]
        assert len(users) == len(set(users)), "an inbox row is doubled"
        missing = b.expected - set(users)
        extra = set(users) - b.expected
        assert not missing, f"{len(missing)} recipients have no inbox row"
        assert not extra, f"{len(extra)} inbox rows for users who are not recipients"
        conv = s.get_one(Conversation, b.conversation_id)
        d = s.get_one(Delivery, b.delivery_id)
        assert conv.participant_count == len(users)
        assert (d.state, d.total, d.delivered, d.failed, d.batches_pending) == (
            "DELIVERED",
            len(b.expected) - 1,
            len(b.expected) - 1,
            0,
            0,
        )
        # Every recipient's copy is unread, the sender's read; unread counts equal a recount.
        unread = {r.user_id for r in rows if not r.read}
        assert unread == b.expected - {s.get_one(Conversation, b.conversation_id).created_by_id}
        sample = sorted(b.expected)[:: max(1, len(b.expected) // 20)]
        for uid in sample:
            user = s.get_one(User, uid)
            recount = s.scalar(
                select(func.count())
                .select_from(Inbox)
                .where(Inbox.user_id == uid, Inbox.read.is_(False), Inbox.removed.is_(False))
            )
            assert msg.unread_count(s, user) == recount


def kill_group(proc: Proc) -> None:
    """SIGKILL a worker's whole process group: main process, pool children and beat at once."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.popen.pid, signal.SIGKILL)
    proc.popen.wait(10)


def children(pid: int) -> list[int]:
    """The direct children of `pid` (a worker's pool processes), read from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(stat.parent.name))
    return sorted(out)


def publish(stack: Stack, b: Broadcast) -> None:
    assert stack.publisher().publish("delivery.plan", b.delivery_id)


def lock_waiters(stack: Stack) -> int:
    """Backends of this database waiting on a lock."""
    with stack.engine.connect() as c:
        n = c.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = :d "
                "AND wait_event_type = 'Lock'"
            ),
            {"d": stack.engine.url.database},
        )
    return int(n or 0)


@contextlib.contextmanager
def conversation_held(stack: Stack, b: Broadcast) -> Iterator[Session]:
    """Hold the conversation row as a concurrent writer would (FOR NO KEY UPDATE): a batch then
    stops mid-way — its inbox rows written, its counter update waiting — until the block ends."""
    with stack.session() as locker:
        locker.execute(
            select(Conversation.id)
            .where(Conversation.id == b.conversation_id)
            .with_for_update(key_share=True)
        )
        yield locker
        locker.rollback()


def wait_lock_waiters(stack: Stack, n: int, timeout: float = 60) -> None:
    wait_until(lambda: lock_waiters(stack) >= n, timeout, f"{n} backends waiting mid-batch")


# ---------------------------------------------------------------------------------------------
# The workers' PostgreSQL backends, told apart from the test's own by their application name


def db_worker(stack: Stack, name: str, concurrency: int = 2, **extra: str) -> Proc:
    """A worker whose database connections carry `application_name=<name>`."""
    url = f"{stack.env['DATABASE_URL']}?application_name={name}"
    return stack.worker(name, concurrency=concurrency, DATABASE_URL=url, **extra)


def backends(stack: Stack, app: str, waiting_on_lock: bool = False) -> int:
    """How many PostgreSQL backends the worker named `app` has (only those waiting on a lock)."""
    with stack.engine.connect() as c:
        n = c.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = :app AND (NOT :lock OR wait_event_type = 'Lock')"
            ),
            {"app": app, "lock": waiting_on_lock},
        )
    return int(n or 0)


def terminate_backends(stack: Stack, app: str) -> int:
    """`pg_terminate_backend` every backend of the worker named `app`; how many were ended."""
    with stack.engine.connect() as c:
        n = c.scalar(
            text(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = :app"
            ),
            {"app": app},
        )
    return int(n or 0)


def max_attempts(stack: Stack, delivery_id: int) -> int:
    with stack.session() as s:
        return int(
            s.scalar(
                select(func.max(DeliveryBatch.attempts)).where(
                    DeliveryBatch.delivery_id == delivery_id
                )
            )
            or 0
        )


def delivered_exactly(stack: Stack, b: Broadcast, timeout: float = 120.0) -> float:
    """Wait for the delivery to finish: DELIVERED, rows and counters exact. Seconds waited."""
    t = time.monotonic()
    assert wait_finished(stack, b, timeout).state == "DELIVERED"
    assert_exact(stack, b)
    return time.monotonic() - t
