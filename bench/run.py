"""`make bench`: fan-out of one broadcast to a whole country, side by side with the database's own
limit (floor), the per-recipient way (naive), and django-postman (peer); plus latencies.

    python -m bench.run --size 1000000 --naive-size 100000 [--sqlite-size N] [--out DIR]

What is timed (see bench/README.md for the method):

* floor: one INSERT ... SELECT resolving the same recipients (org-unit path join, group
  membership, dedupe, active users but the sender) into the real inbox table with its indexes,
  committed; then removed again;
* ours: POST /api/messageConversations through a real web server process, until the delivery
  says DELIVERED (polled every 50 ms), with real Celery worker processes (bulk: 2 processes;
  interactive: 1 process with the beat); every inbox row is then counted;
* naive: the same recipients read into Python, then one ORM INSERT per recipient, each flushed
  on its own, all in one transaction;
* peer: django-postman's pm_broadcast (bench/peer_postman.py), largest N within the budget.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis
import requests
from sqlalchemy import Engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from bench import generate
from bench.procs import ROOT, LoadSampler, RssSampler, private_redis, start_web, start_worker
from service.db import make_engine, utcnow
from service.demo import ADMIN, DEMO_PASSWORD, SIERRA_LEONE
from service.models import Conversation, Inbox, User

ADMIN_URL = os.environ.get(
    "BENCH_DATABASE_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
DB_PREFIX = os.environ.get("BENCH_DB_PREFIX", "msg_bench")
MALARIA_GROUP = "jvrEwEJ2yZn"
RESULTS = ROOT / "bench" / "results"
REQUIRED_KEYS = (
    "size",
    "floor_s",
    "ours_s",
    "ratio_ours_to_floor",
    "naive_size",
    "naive_s",
    "ours_at_naive_size_s",
    "speedup_vs_naive",
    "postman_size",
    "postman_s",
    "sqlite_size",
    "sqlite_floor_s",
    "sqlite_ours_s",
    "sqlite_ratio_ours_to_floor",
    "worker_peak_rss_mb",
    "submit_p95_ms_one",
    "submit_p95_ms_size",
    "inbox_p95_ms",
    "unread_p95_ms",
    "inbox_html_p95_ms",
    "conversation_html_p95_ms",
    "interactive_p95_ms_during_broadcast",
)


def log(msg: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) in milliseconds of values in seconds."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return round(ordered[k] * 1000, 2)


# ---------------------------------------------------------------------------------------------
# Databases


def pg_database(name: str) -> str:
    """The URL of PostgreSQL database `name`, created when missing."""
    admin = make_engine(ADMIN_URL, pool=False, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
        if exists.first() is None:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(name: str) -> None:
    admin = make_engine(ADMIN_URL, pool=False, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :n AND pid <> pg_backend_pid()"
            ),
            {"n": name},
        )
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


def migrate(url: str) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", url)
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")


def prepare_pg(size: int, fresh: bool) -> str:
    """A PostgreSQL database holding the generated data set of `size` users (reused when the
    same generator made it before, after removing what earlier runs added)."""
    name = f"{DB_PREFIX}_{size}"
    url = pg_database(name)
    engine = make_engine(url, pool=False)
    try:
        if not fresh and generate.is_current(engine, size):
            migrate(url)
            removed = generate.reset(engine)
            log(f"reusing {name} (removed {removed} conversations of earlier runs)")
            vacuum(engine)
            return url
    finally:
        engine.dispose()
    drop_pg_database(name)
    url = pg_database(name)
    migrate(url)
    engine = make_engine(url, pool=False)
    t0 = time.perf_counter()
    log(f"generating {size:,} users into {name}")
    generate.load(engine, size, log=lambda m: log(m))
    generate.mark(engine, size)
    log(f"generated in {time.perf_counter() - t0:.1f}s")
    engine.dispose()
    return url


def prepare_sqlite(size: int, path: Path, fresh: bool) -> str:
    url = f"sqlite:///{path}"
    if path.exists() and not fresh:
        engine = make_engine(url)
        ok = generate.is_current(engine, size)
        if ok:
            migrate(url)
            removed = generate.reset(engine)
            log(f"reusing {path} (removed {removed} conversations of earlier runs)")
            vacuum(engine)
            engine.dispose()
            return url
        engine.dispose()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    migrate(url)
    engine = make_engine(url)
    t0 = time.perf_counter()
    log(f"generating {size:,} users into {path}")
    generate.load(engine, size, log=lambda m: log(m))
    generate.mark(engine, size)
    log(f"generated in {time.perf_counter() - t0:.1f}s")
    engine.dispose()
    return url


def vacuum(engine: Engine) -> None:
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE inbox"))
            conn.execute(text("VACUUM ANALYZE conversation"))
            conn.execute(text("CHECKPOINT"))
    else:
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            cur.close()
        finally:
            raw.close()


# ---------------------------------------------------------------------------------------------
# Floor and naive


FLOOR_SQL = """
INSERT INTO inbox
    (user_id, conversation_id, read, followup, removed, as_handler, last_activity_at, message_type)
SELECT r.user_id, :cid, false, false, false, false,
       (SELECT c.public_last_message_at FROM conversation c WHERE c.id = :cid), 'PRIVATE'
FROM (
    SELECT uou.user_id
    FROM org_unit root
    JOIN org_unit ou ON ou.path LIKE root.path || '%'
    JOIN user_org_unit uou ON uou.org_unit_id = ou.id
    WHERE root.uid = :root
    UNION
    SELECT ugm.user_id
    FROM user_group ug JOIN user_group_member ugm ON ugm.group_id = ug.id
    WHERE ug.uid = :grp
) r
JOIN app_user u ON u.id = r.user_id
WHERE NOT u.disabled AND u.id <> :sender
ON CONFLICT DO NOTHING
"""

RECIPIENTS_SQL = FLOOR_SQL.split("FROM (", 1)[1].rsplit("ON CONFLICT", 1)[0]
SELECT_RECIPIENTS = "SELECT r.user_id FROM (" + RECIPIENTS_SQL  # noqa: S608 - constant text


def _scratch_conversation(session: Session, sender_id: int, subject: str) -> int:
    now = utcnow()
    conv = Conversation(
        subject=subject,
        created_by_id=sender_id,
        created_at=now,
        last_message_at=now,
        public_last_message_at=now,
        message_count=1,
        public_message_count=1,
        participant_count=1,
    )
    session.add(conv)
    session.commit()
    return conv.id


def _params(cid: int, sender: int) -> dict[str, Any]:
    return {"cid": cid, "root": SIERRA_LEONE, "grp": MALARIA_GROUP, "sender": sender}


def run_floor(url: str) -> tuple[float, int]:
    """Seconds for the one-statement fan-out (committed), and its row count. Removed after."""
    engine = make_engine(url, pool=False)
    try:
        with Session(engine) as s:
            sender = s.scalar(select(User.id).where(User.uid == ADMIN))
            assert sender is not None
            cid = _scratch_conversation(s, sender, "floor")
        with engine.connect() as conn:
            t0 = time.perf_counter()
            with conn.begin():
                rows = conn.execute(text(FLOOR_SQL), _params(cid, sender)).rowcount
            elapsed = time.perf_counter() - t0
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM conversation WHERE id = :c"), {"c": cid})
        vacuum(engine)
        return elapsed, int(rows)
    finally:
        engine.dispose()


def run_naive(url: str) -> tuple[float, int]:
    """Recipients into Python, then one ORM INSERT per recipient, each flushed, one commit."""
    engine = make_engine(url, pool=False)
    try:
        with Session(engine) as s:
            sender = s.scalar(select(User.id).where(User.uid == ADMIN))
            assert sender is not None
            cid = _scratch_conversation(s, sender, "naive")
        t0 = time.perf_counter()
        with Session(engine) as s:
            at = s.get_one(Conversation, cid).public_last_message_at
            ids = [r[0] for r in s.execute(text(SELECT_RECIPIENTS), _params(cid, sender))]
            for user_id in ids:
                s.add(
                    Inbox(
                        user_id=user_id,
                        conversation_id=cid,
                        last_activity_at=at,
                        message_type="PRIVATE",
                    )
                )
                s.flush()
            s.commit()
        elapsed = time.perf_counter() - t0
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM conversation WHERE id = :c"), {"c": cid})
        vacuum(engine)
        return elapsed, len(ids)
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------------
# The service, through its processes


def login(base: str, username: str, password: str = DEMO_PASSWORD) -> requests.Session:
    s = requests.Session()
    page = s.get(base + "/login", timeout=30)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token, "no CSRF token on the sign-in page"
    r = s.post(
        base + "/login",
        data={"csrf_token": token.group(1), "username": username, "password": password},
        timeout=30,
        allow_redirects=False,
    )
    if r.status_code not in (302, 303):
        raise RuntimeError(f"sign-in of {username} failed: {r.status_code}")
    # Session-authenticated API writes carry the session's CSRF token, as the pages' script does.
    s.headers["X-CSRFToken"] = token.group(1)
    return s


BROADCAST = {
    "subject": "National reporting deadline",
    "text": "Please submit your monthly reports by Friday.",
    "organisationUnits": [{"id": SIERRA_LEONE}],
    "userGroups": [{"id": MALARIA_GROUP}],
    "ouMode": "DESCENDANTS",
}


@dataclass
class Service:
    base: str
    url: str
    env: dict[str, str]
    workers: list[Any]
    web: Any


@contextlib.contextmanager
def service(url: str, broker: str, work_dir: Path, batch_size: int | None) -> Iterator[Service]:
    env = dict(os.environ)
    env.update(
        APP_ENV="production",
        DATA_DIR=str(work_dir),
        DATABASE_URL=url,
        CELERY_BROKER_URL=broker,
        SECRET_KEY="bench-secret-key-not-for-production",  # noqa: S106 - a throwaway process
        SESSION_COOKIE_SECURE="false",
        PYTHONUNBUFFERED="1",
    )
    if batch_size:
        env["DELIVERY_BATCH_SIZE"] = str(batch_size)
    web, base = start_web(env, work_dir)
    try:
        yield Service(base=base, url=url, env=env, workers=[], web=web)
    finally:
        web.stop()


@contextlib.contextmanager
def workers(svc: Service, log_dir: Path, bulk_processes: int = 2) -> Iterator[list[int]]:
    bulk = start_worker(svc.env, log_dir, "bulk", "bulk", bulk_processes, beat=False)
    inter = None
    try:
        inter = start_worker(svc.env, log_dir, "interactive", "interactive", 1, beat=True)
        yield [bulk.pid, inter.pid]
    finally:
        if inter is not None:
            inter.stop()
        bulk.stop()


def flush_broker(broker: str) -> None:
    """Empty the run's private Redis (never a shared one: the runner starts its own)."""
    sock = broker.removeprefix("redis+socket://")
    client = redis.Redis(unix_socket_path=sock)
    client.flushall()
    client.close()


def submit(s: requests.Session, base: str, body: dict[str, Any]) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = s.post(base + "/api/messageConversations", json=body, timeout=120)
    elapsed = time.perf_counter() - t0
    if r.status_code != 201:
        raise RuntimeError(f"submit failed: {r.status_code} {r.text[:300]}")
    return elapsed, r.json()["id"]


def submit_latencies(svc: Service, broker: str, repeats: int) -> dict[str, float]:
    """Submit p50/p95 to one recipient and to everyone, with no worker running (the request's
    own work only); the queued deliveries are removed again afterwards."""
    engine = make_engine(svc.url, pool=False)
    with engine.connect() as conn:
        one_uid = conn.execute(text("SELECT uid FROM app_user WHERE id = 7")).scalar_one()
        max_conv = conn.execute(text("SELECT MAX(id) FROM conversation")).scalar_one()
    s = login(svc.base, "admin")
    one = {"subject": "One", "text": "To one person.", "users": [{"id": one_uid}]}
    t_one, t_all = [], []
    for _ in range(3):  # warm-up
        submit(s, svc.base, one)
    for _ in range(repeats):
        t_one.append(submit(s, svc.base, one)[0])
        t_all.append(submit(s, svc.base, BROADCAST)[0])
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM conversation WHERE id > :m"), {"m": max_conv})
    engine.dispose()
    flush_broker(broker)
    return {
        "submit_p50_ms_one": pct(t_one, 50),
        "submit_p95_ms_one": pct(t_one, 95),
        "submit_p50_ms_size": pct(t_all, 50),
        "submit_p95_ms_size": pct(t_all, 95),
    }


class Interactive:
    """Replies, status changes and mark-reads in small conversations, in a loop, each timed
    from request to response (the change is committed when the response comes back)."""

    def __init__(self, svc: Service) -> None:
        engine = make_engine(svc.url, pool=False)
        with engine.connect() as conn:
            small = conn.execute(
                text(
                    "SELECT c.uid, u.username FROM conversation c JOIN app_user u "
                    "ON u.id = c.created_by_id WHERE c.subject LIKE 'Small %' ORDER BY c.id LIMIT 8"
                )
            ).all()
            tickets = (
                conn.execute(
                    text(
                        "SELECT uid FROM conversation WHERE message_type = 'TICKET' "
                        "ORDER BY id LIMIT 8"
                    )
                )
                .scalars()
                .all()
            )
        engine.dispose()
        self.base = svc.base
        self.small = [(uid, login(svc.base, name)) for uid, name in small]
        self.admin = login(svc.base, "admin")
        self.tickets = list(tickets)
        self.times: dict[str, list[float]] = {"reply": [], "status": [], "read": []}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _timed(self, kind: str, ok: int, method: Any, url: str, **kwargs: Any) -> None:
        t0 = time.perf_counter()
        r = method(f"{self.base}{url}", timeout=60, **kwargs)
        self.times[kind].append(time.perf_counter() - t0)
        if r.status_code != ok:
            self.errors.append(f"{kind}: {r.status_code} {r.text[:200]}")

    def _run(self) -> None:
        i = 0
        statuses = ("PENDING", "OPEN")
        while not self._stop.is_set():
            uid, s = self.small[i % len(self.small)]
            ticket = self.tickets[i % len(self.tickets)]
            self._timed(
                "reply",
                201,
                s.post,
                f"/api/messageConversations/{uid}",
                data=f"reply {i}",
                headers={"Content-Type": "text/plain"},
            )
            self._timed(
                "status",
                200,
                self.admin.post,
                f"/api/messageConversations/{ticket}/status",
                params={"messageConversationStatus": statuses[i % 2]},
            )
            self._timed("read", 200, s.post, "/api/messageConversations/read", json=[uid])
            i += 1
            self._stop.wait(0.1)

    def __enter__(self) -> Interactive:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def all_times(self) -> list[float]:
        return [t for ts in self.times.values() for t in ts]


class DeliveryWatch:
    """Polls a delivery's state in the database every 20 ms with plain reads: no HTTP round
    trips and, on SQLite, no write lock (the service's own SQLite transactions take it up front),
    so the watching does not slow the work it watches."""

    SQL = (
        "SELECT d.state FROM delivery d JOIN conversation c ON c.id = d.conversation_id "
        "WHERE c.uid = ? AND d.kind = 'SEND'"
    )

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: Any = None

    def __enter__(self) -> DeliveryWatch:
        if self.url.startswith("sqlite"):
            import sqlite3

            self.conn = sqlite3.connect(make_url(self.url).database, isolation_level=None)
        else:
            import psycopg

            u = make_url(self.url)
            self.conn = psycopg.connect(
                host=u.host,
                port=u.port or 5432,
                user=u.username,
                password=u.password or "",
                dbname=u.database,
                autocommit=True,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.close()

    def wait(self, uid: str, timeout: float = 3600) -> str:
        sql = self.SQL if self.url.startswith("sqlite") else self.SQL.replace("?", "%s")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.conn.execute(sql, (uid,)).fetchone()
            if row is not None and row[0] in ("DELIVERED", "FAILED"):
                return str(row[0])
            time.sleep(0.02)
        raise RuntimeError(f"delivery of {uid} not finished after {timeout}s")


def broadcast(svc: Service, expected_rows: int | None, interactive: bool) -> dict[str, Any]:
    """Submit the country-wide broadcast and wait until every inbox row is written."""
    s = login(svc.base, "admin")
    inter = Interactive(svc) if interactive else None
    with contextlib.ExitStack() as stack:
        if inter is not None:
            stack.enter_context(inter)
            time.sleep(0.5)
        t0 = time.perf_counter()
        submit_s, uid = submit(s, svc.base, BROADCAST)
        with DeliveryWatch(svc.url) as watch:
            watch.wait(uid)
        elapsed = time.perf_counter() - t0
        state = s.get(f"{svc.base}/api/messageConversations/{uid}/delivery", timeout=60).json()
    engine = make_engine(svc.url, pool=False)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT COUNT(*) FROM inbox i JOIN conversation c ON c.id = i.conversation_id "
                "WHERE c.uid = :u"
            ),
            {"u": uid},
        ).scalar_one()
    engine.dispose()
    out: dict[str, Any] = {
        "seconds": elapsed,
        "submit_s": submit_s,
        "state": state.get("state"),
        "delivered": state.get("delivered"),
        "rows": int(rows) - 1,  # minus the sender's row
    }
    if state.get("state") != "DELIVERED" or (
        expected_rows is not None and out["rows"] != expected_rows
    ):
        raise RuntimeError(f"broadcast did not deliver as expected: {out}, want {expected_rows}")
    if inter is not None:
        out["interactive"] = {
            k: {"n": len(v), "p50_ms": pct(v, 50), "p95_ms": pct(v, 95)}
            for k, v in inter.times.items()
        }
        out["interactive_p95_ms"] = pct(inter.all_times(), 95)
        out["interactive_errors"] = inter.errors[:5]
    return out


# ---------------------------------------------------------------------------------------------
# Server-side read latencies, timed around the WSGI app in-process


def read_latencies(url: str, repeats: int) -> dict[str, float]:
    from service.config import load_settings
    from web.app import create_app

    env = {
        "APP_ENV": "test",
        "DATABASE_URL": url,
        "CELERY_BROKER_URL": "memory://",
        "SECRET_KEY": "bench",
        "DATA_DIR": tempfile.gettempdir(),
    }
    app = create_app(load_settings(env))
    engine = make_engine(url, pool=False)
    with engine.connect() as conn:
        uid = conn.execute(
            text("SELECT uid FROM app_user WHERE username = :u"), {"u": generate.INBOX_USER}
        ).scalar_one()
        count = conn.execute(
            text(
                "SELECT COUNT(*) FROM inbox i JOIN app_user u ON u.id = i.user_id "
                "WHERE u.username = :u"
            ),
            {"u": generate.INBOX_USER},
        ).scalar_one()
        # Conversations the user has read already: opening one marks it read, which then
        # changes nothing, so the data set stays as generated for the next run.
        opened = list(
            conn.execute(
                text(
                    "SELECT c.uid FROM inbox i JOIN app_user u ON u.id = i.user_id "
                    "JOIN conversation c ON c.id = i.conversation_id "
                    "WHERE u.username = :u AND i.read ORDER BY c.id LIMIT 20"
                ),
                {"u": generate.INBOX_USER},
            ).scalars()
        )
    engine.dispose()
    client = app.test_client()
    with client.session_transaction() as sess:
        sess["_user_id"] = uid
        sess["_fresh"] = True
    inbox_t, unread_t, inbox_html_t, conversation_html_t = [], [], [], []
    pages = (1, 2, 3, 10, 100)
    for i in range(repeats + 5):
        page = pages[i % len(pages)]
        t0 = time.perf_counter()
        r = client.get(f"/api/messageConversations?pageSize=50&page={page}")
        t1 = time.perf_counter()
        assert r.status_code == 200, r.data[:300]
        u = client.get("/api/me/dashboard")
        t2 = time.perf_counter()
        assert u.status_code == 200, u.data[:300]
        # The pages people see: the inbox (with its header counts) and one conversation.
        h = client.get(f"/?page={page}")
        t3 = time.perf_counter()
        assert h.status_code == 200, h.data[:300]
        if opened:
            c = client.get(f"/conversations/{opened[i % len(opened)]}")
            assert c.status_code == 200, c.data[:300]
        t4 = time.perf_counter()
        if i >= 5:  # the first few warm the caches
            inbox_t.append(t1 - t0)
            unread_t.append(t2 - t1)
            inbox_html_t.append(t3 - t2)
            if opened:
                conversation_html_t.append(t4 - t3)
    total = r.get_json()["pager"]["total"]
    app.extensions["engine"].dispose()
    return {
        "inbox_user_conversations": int(count),
        "inbox_listed_total": int(total),
        "unread_count": int(u.get_json()["unreadMessageConversations"]),
        "inbox_p50_ms": pct(inbox_t, 50),
        "inbox_p95_ms": pct(inbox_t, 95),
        "unread_p50_ms": pct(unread_t, 50),
        "unread_p95_ms": pct(unread_t, 95),
        "inbox_html_p50_ms": pct(inbox_html_t, 50),
        "inbox_html_p95_ms": pct(inbox_html_t, 95),
        "conversation_html_p50_ms": pct(conversation_html_t, 50),
        "conversation_html_p95_ms": pct(conversation_html_t, 95),
    }


# ---------------------------------------------------------------------------------------------
# Peer


def run_postman(size: int, budget: float, work_dir: Path) -> dict[str, Any]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable,
        "-m",
        "bench.peer_postman",
        "--max-size",
        str(size),
        "--budget",
        str(budget),
        "--admin-url",
        ADMIN_URL,
        "--db",
        f"{DB_PREFIX}_postman",
        "--out",
        str(work_dir / "postman.json"),
    ]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, timeout=budget * 3 + 600)  # noqa: S603
    return json.loads((work_dir / "postman.json").read_text())


# ---------------------------------------------------------------------------------------------
# The machine


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    engine = make_engine(ADMIN_URL, pool=False)
    with engine.connect() as conn:
        pg = conn.execute(text("SHOW server_version")).scalar_one()
    engine.dispose()
    redis_version = "?"
    with contextlib.suppress(Exception):
        out = subprocess.run(  # noqa: S603 - the machine's own redis-server
            [shutil.which("redis-server") or "redis-server", "--version"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        redis_version = re.search(r"v=(\S+)", out).group(1)  # type: ignore[union-attr]
    import sqlite3

    return {
        "cpu": cpu,
        "cores": psutil.cpu_count(logical=True),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "postgresql": pg,
        "redis": redis_version,
        "sqlite": sqlite3.sqlite_version,
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=1_000_000)
    p.add_argument("--naive-size", type=int, default=100_000)
    p.add_argument("--sqlite-size", type=int, default=None, help="default: --size")
    p.add_argument("--postman-budget", type=float, default=300.0, help="seconds")
    p.add_argument("--postman-max", type=int, default=None, help="default: --size")
    p.add_argument("--repeats", type=int, default=30, help="samples per latency")
    p.add_argument("--batch-size", type=int, default=None, help="DELIVERY_BATCH_SIZE")
    p.add_argument("--bulk-processes", type=int, default=2, help="bulk worker's pool size")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--work-dir", type=Path, default=None)
    p.add_argument("--fresh", action="store_true", help="regenerate the data sets")
    p.add_argument("--skip", default="", help="comma list of: naive,postman,sqlite")
    args = p.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    size, naive_size = args.size, args.naive_size
    sqlite_size = args.sqlite_size or size
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="msg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    res: dict[str, Any] = {
        "size": size,
        "naive_size": naive_size,
        "sqlite_size": sqlite_size,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": " ".join(["python -m bench.run", *(argv or sys.argv[1:])]),
    }
    log(f"bench: size {size:,}, naive {naive_size:,}, sqlite {sqlite_size:,}; work dir {work}")
    with LoadSampler() as load:
        run_all(args, res, work, skip)
    res["machine"]["load_avg_1min_during_run"] = load.summary()
    res["total_run_s"] = round(time.perf_counter() - started, 1)
    missing = [k for k in REQUIRED_KEYS if k not in res]
    assert not missing, missing
    from bench.report import write_results

    paths = write_results(res, args.out)
    log("wrote " + ", ".join(str(p) for p in paths))
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def run_all(args: argparse.Namespace, res: dict[str, Any], work: Path, skip: set[str]) -> None:
    """Every measurement, into `res`."""
    size, naive_size, sqlite_size = res["size"], res["naive_size"], res["sqlite_size"]

    # PostgreSQL at SIZE: floor, ours, latencies.
    url = prepare_pg(size, args.fresh)
    res["dataset"] = generate.build(size).describe()
    with private_redis(work) as broker, service(url, broker, work, args.batch_size) as svc:
        log("submit latencies (no worker running)")
        res.update(submit_latencies(svc, broker, args.repeats))
        log("floor")
        res["floor_s"], res["floor_rows"] = run_floor(url)
        log(f"floor: {res['floor_rows']:,} rows in {res['floor_s']:.2f}s")
        with workers(svc, work, args.bulk_processes) as pids, RssSampler(pids) as rss:
            log("ours (with interactive work alongside)")
            ours = broadcast(svc, res["floor_rows"], interactive=True)
            rss.sample()
        res["ours_s"] = round(ours["seconds"], 3)
        res["ours_detail"] = ours
        res["worker_peak_rss_mb"] = rss.peak_mb
        res["interactive_p95_ms_during_broadcast"] = ours["interactive_p95_ms"]
        log(
            f"ours: {ours['rows']:,} rows in {ours['seconds']:.2f}s; "
            f"worker peak RSS {rss.peak_mb} MB; interactive p95 {ours['interactive_p95_ms']} ms"
        )
    res["ratio_ours_to_floor"] = round(res["ours_s"] / res["floor_s"], 3)
    # A million new rows make the planner's statistics stale until autovacuum analyses the table
    # (it does within a minute or so); the reads are measured after that, not during it.
    engine = make_engine(url, pool=False)
    vacuum(engine)
    engine.dispose()
    log("inbox and unread latencies (in-process WSGI)")
    res.update(read_latencies(url, args.repeats * 2))

    # Naive, and ours at the naive size.
    if "naive" not in skip:
        nurl = prepare_pg(naive_size, args.fresh) if naive_size != size else url
        with private_redis(work) as broker, service(nurl, broker, work, args.batch_size) as svc:
            nfloor_s, nrows = run_floor(nurl)
            res["floor_at_naive_size_s"] = round(nfloor_s, 3)
            with workers(svc, work, args.bulk_processes):
                ours_n = broadcast(svc, nrows, interactive=False)
        res["ours_at_naive_size_s"] = round(ours_n["seconds"], 3)
        log(f"ours at {naive_size:,}: {ours_n['seconds']:.2f}s; naive next")
        res["naive_s"], res["naive_rows"] = run_naive(nurl)
        res["naive_s"] = round(res["naive_s"], 3)
        res["naive_rows_per_s"] = round(res["naive_rows"] / res["naive_s"])
        res["speedup_vs_naive"] = round(res["naive_s"] / res["ours_at_naive_size_s"], 1)
        log(
            f"naive: {res['naive_rows']:,} rows in {res['naive_s']:.1f}s "
            f"(x{res['speedup_vs_naive']} slower than ours)"
        )
    else:
        res.update(ours_at_naive_size_s=None, naive_s=None, speedup_vs_naive=None)

    # The peer.
    if "postman" not in skip:
        log("django-postman")
        peer = run_postman(args.postman_max or size, args.postman_budget, work)
        res["postman"] = peer
        res["postman_size"] = peer["size"]
        res["postman_s"] = peer["seconds"]
        res["postman_rows_per_s"] = peer["rows_per_s"]
        log(f"postman: {peer['size']:,} in {peer['seconds']:.1f}s")
    else:
        res.update(postman_size=None, postman_s=None)

    # The embedded default.
    if "sqlite" not in skip:
        spath = work / f"bench-{sqlite_size}.db"
        cached = Path(os.environ.get("BENCH_SQLITE_DIR", ROOT / "var" / "bench"))
        spath = cached / f"bench-{sqlite_size}.db"
        surl = prepare_sqlite(sqlite_size, spath, args.fresh)
        res["sqlite_floor_s"], srows = run_floor(surl)
        res["sqlite_floor_s"] = round(res["sqlite_floor_s"], 3)
        with (
            private_redis(work) as broker,
            service(surl, broker, work, args.batch_size) as svc,
            workers(svc, work, args.bulk_processes),
        ):
            sq = broadcast(svc, srows, interactive=False)
        res["sqlite_ours_s"] = round(sq["seconds"], 3)
        res["sqlite_rows"] = srows
        res["sqlite_ratio_ours_to_floor"] = round(res["sqlite_ours_s"] / res["sqlite_floor_s"], 3)
        log(f"sqlite: floor {res['sqlite_floor_s']}s, ours {res['sqlite_ours_s']}s")
    else:
        res.update(sqlite_floor_s=None, sqlite_ours_s=None, sqlite_ratio_ours_to_floor=None)

    res["floor_s"] = round(res["floor_s"], 3)
    res["floor_rows_per_s"] = round(res["floor_rows"] / res["floor_s"])
    res["ours_rows_per_s"] = round(res["floor_rows"] / res["ours_s"])


if __name__ == "__main__":
    sys.exit(main())
