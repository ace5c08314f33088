"""`make load`: many people sending, reading and replying at once against the real stack.

Starts a private Redis, the web app under gunicorn and a real Celery worker (with the periodic
sweep) on a fresh PostgreSQL database, seeds people with personal access tokens, runs a headless
locust for a few minutes, waits until every delivery has finished, checks the data, and writes
throughput and latency per request type to bench/results/load.md and load.json.

The run fails (exit 1) on any failed request, any delivery that is not DELIVERED, or any data
check that does not hold.

    python -m bench.load [--users 50] [--duration 3m] [--people 300]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from bench import procs
from bench.run import drop_pg_database, migrate, pg_database
from service import api_tokens
from service.db import make_engine
from service.models import (
    Delivery,
    DeliveryState,
    OrgUnit,
    User,
    UserGroup,
    user_group_members,
    user_org_units,
)
from service.passwords import hash_password
from service.system_settings import set_feedback_group

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DB_NAME = os.environ.get("LOAD_DB_NAME", "msg_load")
# The last run's process logs and locust's CSV files (not committed).
LOGS = ROOT / "var" / "load-logs"


def log(message: str) -> None:
    print(f"[load {time.strftime('%H:%M:%S')}] {message}", flush=True)


def seed(url: str, people: int, handlers: int) -> tuple[list[dict[str, str]], str]:
    """People on one facility, all in one user group; the first `handlers` of them are the
    feedback team. Returns their tokens and the everyone-group's id."""
    engine = make_engine(url, pool=False)
    password = hash_password("load-test-password", rounds=4)
    with Session(engine) as s:
        country = OrgUnit(name="Load Country", level=1, path="")
        s.add(country)
        s.flush()
        country.path = f"/{country.uid}"
        users = [
            User(
                username=f"load{i:04d}",
                first_name="Load",
                surname=f"Person {i}",
                password_hash=password,
            )
            for i in range(people)
        ]
        s.add_all(users)
        everyone = UserGroup(name="Load everyone")
        team = UserGroup(name="Load feedback team")
        s.add_all([everyone, team])
        s.flush()
        s.execute(
            insert(user_org_units), [{"user_id": u.id, "org_unit_id": country.id} for u in users]
        )
        s.execute(
            insert(user_group_members), [{"user_id": u.id, "group_id": everyone.id} for u in users]
        )
        s.execute(
            insert(user_group_members),
            [{"user_id": u.id, "group_id": team.id} for u in users[:handlers]],
        )
        set_feedback_group(s, team)
        tokens = []
        for u in users:
            _, key = api_tokens.create(s, u, name="load")
            tokens.append({"username": u.username, "uid": u.uid, "token": key})
        group_uid = everyone.uid
        s.commit()
    engine.dispose()
    return tokens, group_uid


def wait_for_deliveries(url: str, timeout: float) -> dict[str, int]:
    engine = make_engine(url, pool=False)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with Session(engine) as s:
                states = dict(
                    s.execute(select(Delivery.state, func.count()).group_by(Delivery.state)).all()
                )
            unfinished = states.get(DeliveryState.QUEUED.value, 0) + states.get(
                DeliveryState.DELIVERING.value, 0
            )
            if not unfinished or time.monotonic() > deadline:
                return {str(k): int(v) for k, v in states.items()}
            time.sleep(1)
    finally:
        engine.dispose()


CHECKS = {
    # Every finished send wrote exactly as many rows as it counted.
    "deliveries whose counts disagree": """
        SELECT count(*) FROM delivery
        WHERE state = 'DELIVERED' AND (failed <> 0 OR delivered <> total)
    """,
    # A conversation's counters equal a recount of its messages.
    "conversations whose message counts disagree": """
        SELECT count(*) FROM conversation c
        WHERE c.message_count <> (SELECT count(*) FROM message m WHERE m.conversation_id = c.id)
           OR c.public_message_count <> (SELECT count(*) FROM message m
                                         WHERE m.conversation_id = c.id AND NOT m.internal)
    """,
    # Every recipient of a message to "everyone" has exactly one row (the primary key makes two
    # impossible; this finds missing ones).
    "missing inbox rows of broadcasts": """
        SELECT count(*) FROM delivery d
        JOIN delivery_target t ON t.delivery_id = d.id AND t.kind = 'USER_GROUP'
        JOIN user_group_member m ON m.group_id = t.target_id
        WHERE d.kind = 'SEND' AND d.state = 'DELIVERED'
          AND NOT EXISTS (SELECT 1 FROM inbox i
                          WHERE i.user_id = m.user_id AND i.conversation_id = d.conversation_id)
    """,
}


def check_data(url: str) -> dict[str, int]:
    engine = make_engine(url, pool=False)
    try:
        with engine.connect() as conn:
            return {name: int(conn.scalar(text(sql)) or 0) for name, sql in CHECKS.items()}
    finally:
        engine.dispose()


def count_rows(url: str) -> dict[str, int]:
    engine = make_engine(url, pool=False)
    try:
        with engine.connect() as conn:
            return {
                t: int(conn.scalar(text(f"SELECT count(*) FROM {t}")) or 0)  # noqa: S608 - fixed
                for t in ("conversation", "message", "inbox", "delivery")
            }
    finally:
        engine.dispose()


def _percentile(histogram: dict[str, int], total: int, q: float) -> float:
    """The q-quantile of locust's response-time histogram ({rounded ms: count})."""
    if not total:
        return 0.0
    rank = q * total
    seen = 0
    for ms, count in sorted(((float(k), v) for k, v in histogram.items())):
        seen += count
        if seen >= rank:
            return ms
    return max(float(k) for k in histogram)


def read_stats(path: Path, seconds: float) -> list[dict[str, object]]:
    """Per request type and overall: count, failures, throughput, p50/p95/p99 and max (ms)."""
    entries = json.loads(path.read_text())
    rows = []
    overall: dict[str, int] = {}
    for e in sorted(entries, key=lambda e: (e["name"], e["method"])):
        n = int(e["num_requests"])
        for k, v in e["response_times"].items():
            overall[k] = overall.get(k, 0) + v
        rows.append(_row(e["method"], e["name"], n, int(e["num_failures"]), e, seconds))
    n_all = sum(int(e["num_requests"]) for e in entries)
    all_entry = {
        "response_times": overall,
        "max_response_time": max((e["max_response_time"] for e in entries), default=0),
    }
    failed_all = sum(int(e["num_failures"]) for e in entries)
    rows.append(_row("", "Aggregated", n_all, failed_all, all_entry, seconds))
    return rows


def _row(method: str, name: str, n: int, failed: int, e: dict, seconds: float) -> dict:
    hist = e["response_times"]
    return {
        "method": method,
        "name": name,
        "requests": n,
        "failures": failed,
        "rps": round(n / seconds, 2) if seconds else 0,
        "p50_ms": _percentile(hist, n, 0.50),
        "p95_ms": _percentile(hist, n, 0.95),
        "p99_ms": _percentile(hist, n, 0.99),
        "max_ms": round(float(e["max_response_time"] or 0), 1),
    }


def failures(prefix: Path) -> list[dict[str, str]]:
    path = Path(f"{prefix}_failures.csv")
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def write_results(result: dict[str, object]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "load.json").write_text(json.dumps(result, indent=2) + "\n")
    cfg = result["config"]
    assert isinstance(cfg, dict)
    lines = [
        "# Load run (`make load`)",
        "",
        f"{result['finished']} on {result['machine']}. {cfg['users']} concurrent simulated "
        f"people for {cfg['duration']} (spawned {cfg['spawn_rate']}/s), each waiting 0.5 to 2 s "
        f"between actions, signed in with their own personal access token; {cfg['people']} "
        f"people in the database, {cfg['handlers']} of them the feedback team. Real stack: "
        "gunicorn (2 processes of 4 threads), one Celery worker (concurrency "
        f"{cfg['worker_concurrency']}, with the sweep), a private Redis, PostgreSQL.",
        "",
        f"**Result: {'PASS' if result['passed'] else 'FAIL'}** — "
        f"{result['total_requests']} requests, {result['total_failures']} failed; "
        f"{result['throughput_rps']} requests/s overall.",
        "",
        "| request | count | failed | req/s | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["requests"]:  # type: ignore[attr-defined]
        name = "**all**" if r["name"] == "Aggregated" else f"{r['method']} {r['name']}"
        lines.append(
            f"| {name} | {r['requests']} | {r['failures']} | {r['rps']} | {r['p50_ms']:.0f} | "
            f"{r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['max_ms']:.0f} |"
        )
    lines += [
        "",
        f"Every delivery had finished {result['drain_seconds']} s after the run: "
        f"{result['deliveries']}. Rows written: {result['rows']}.",
        "",
        "Data checks after the run (all must be 0):",
        "",
    ]
    for name, value in result["checks"].items():  # type: ignore[attr-defined]
        lines.append(f"- {name}: {value}")
    lines += [
        "",
        "Reproduce with `make load` (`LOAD_USERS=50 LOAD_DURATION=3m`); the numbers depend on the "
        "machine and on what else runs on it.",
        "",
    ]
    (RESULTS / "load.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=int(os.environ.get("LOAD_USERS", "50")))
    p.add_argument("--spawn-rate", type=float, default=10)
    p.add_argument("--duration", default=os.environ.get("LOAD_DURATION", "3m"))
    p.add_argument("--people", type=int, default=300)
    p.add_argument("--handlers", type=int, default=5)
    p.add_argument("--worker-concurrency", type=int, default=2)
    p.add_argument("--no-results", action="store_true", help="do not write bench/results")
    args = p.parse_args(argv)

    drop_pg_database(DB_NAME)
    url = pg_database(DB_NAME)
    migrate(url)
    log(f"seeding {args.people} people with tokens into {DB_NAME}")
    tokens, group = seed(url, args.people, args.handlers)
    started: list[procs.Proc] = []
    with tempfile.TemporaryDirectory(prefix="msg-load-") as tmp:
        run_dir = Path(tmp)
        (run_dir / "tokens.json").write_text(json.dumps(tokens))
        with procs.private_redis(run_dir) as broker:
            env = {
                **os.environ,
                "APP_ENV": "production",
                "DATABASE_URL": url,
                "CELERY_BROKER_URL": broker,
                "SECRET_KEY": "load-run-secret-key",
                "SESSION_COOKIE_SECURE": "0",
                "SWEEP_INTERVAL": "10",
                "STALE_AFTER": "30",
            }
            try:
                worker = procs.start_worker(
                    env, run_dir, "load-worker", "bulk,interactive", args.worker_concurrency, True
                )
                started.append(worker)
                # Simulated people pause up to 2 s between requests on a kept-alive connection.
                web, base = procs.start_web(env, run_dir, keep_alive=30)
                started.append(web)
                log(f"stack up at {base}; locust: {args.users} users for {args.duration}")
                prefix = run_dir / "locust"
                t0 = time.monotonic()
                rc = procs.subprocess.call(
                    [
                        str(procs.VENV_BIN / "locust"),
                        "-f",
                        str(ROOT / "bench" / "locustfile.py"),
                        "--headless",
                        "--users",
                        str(args.users),
                        "--spawn-rate",
                        str(args.spawn_rate),
                        "--run-time",
                        args.duration,
                        "--host",
                        base,
                        "--csv",
                        str(prefix),
                        "--json-file",
                        str(run_dir / "stats"),
                        "--only-summary",
                        "--stop-timeout",
                        "10",
                    ],
                    env={**env, "LOAD_TOKENS": str(run_dir / "tokens.json"), "LOAD_GROUP": group},
                    cwd=ROOT,
                )
                elapsed = time.monotonic() - t0
                log(f"locust exited {rc} after {elapsed:.0f}s; waiting for deliveries")
                t1 = time.monotonic()
                deliveries = wait_for_deliveries(url, timeout=300)
                drain = round(time.monotonic() - t1, 1)
                stats = read_stats(run_dir / "stats.json", elapsed)
                failed = failures(prefix)
                server_errors = web.log().count('" 500 ')
            finally:
                for proc in reversed(started):
                    proc.stop()
                LOGS.mkdir(parents=True, exist_ok=True)
                for log_file in run_dir.glob("*.log"):
                    shutil.copy(log_file, LOGS / log_file.name)
                for csv_file in run_dir.glob("locust*.csv"):
                    shutil.copy(csv_file, LOGS / csv_file.name)
    checks = check_data(url)
    rows = count_rows(url)
    total = next((r for r in stats if r["name"] == "Aggregated"), None)
    total_requests = int(total["requests"]) if total else 0  # type: ignore[call-overload]
    total_failures = int(total["failures"]) if total else 0  # type: ignore[call-overload]
    unfinished = sum(v for k, v in deliveries.items() if k != DeliveryState.DELIVERED.value)
    passed = (
        total_requests > 0
        and total_failures == 0
        and not failed
        and server_errors == 0
        and unfinished == 0
        and not any(checks.values())
    )
    result: dict[str, object] = {
        "finished": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        ),
        "config": {
            "users": args.users,
            "spawn_rate": args.spawn_rate,
            "duration": args.duration,
            "people": args.people,
            "handlers": args.handlers,
            "worker_concurrency": args.worker_concurrency,
        },
        "passed": passed,
        "total_requests": total_requests,
        "total_failures": total_failures,
        "throughput_rps": total["rps"] if total else 0,
        "server_errors_in_log": server_errors,
        "failures": failed[:20],
        "requests": stats,
        "deliveries": deliveries,
        "drain_seconds": drain,
        "checks": checks,
        "rows": rows,
    }
    if not args.no_results:
        write_results(result)
    log(
        f"{'PASS' if passed else 'FAIL'}: {total_requests} requests, {total_failures} failed, "
        f"deliveries {deliveries}, checks {checks}"
    )
    for f in failed[:10]:
        log(f"failure: {f}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
