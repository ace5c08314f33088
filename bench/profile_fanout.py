"""Where a broadcast's fan-out time goes, statement by statement, without Celery in the way.

    python -m bench.profile_fanout --size 100000 [--batch-size 5000] [--sqlite PATH]

Uses a database `make bench` generated (msg_bench_<size>, or an SQLite file). Records the bench's
broadcast (the whole country plus the Malaria group) as the service does, then runs
`service.delivery.plan` and every batch's `begin_attempt` + `run_batch` one after the other in
this process, each in its own transaction as tasks/delivery.py runs them, and prints the time
spent per kind of statement and in commits. Everything it wrote is removed again afterwards.
"""

from __future__ import annotations

import argparse
import re
import time
from collections import defaultdict
from typing import Any

from sqlalchemy import event, select, text
from sqlalchemy.orm import Session

from bench.run import DB_PREFIX, MALARIA_GROUP, _scratch_conversation, pg_database
from service import delivery as svc
from service.db import make_engine, make_session_factory, utcnow
from service.demo import ADMIN, SIERRA_LEONE
from service.messaging import _record_targets
from service.models import Conversation, OrgUnit, TargetKind, User, UserGroup


def _kind(sql: str) -> str:
    s = " ".join(sql.split())[:200]
    m = re.match(r"(INSERT INTO \w+|UPDATE \w+|SELECT|DELETE FROM \w+|\w+)", s)
    key = m.group(1) if m else s[:30]
    if key == "SELECT" and "row_number()" in s:
        key = "SELECT (plan: batch starts)"
    return key


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=5000)
    p.add_argument("--sqlite", default=None, help="an SQLite file instead of PostgreSQL")
    args = p.parse_args(argv)
    url = f"sqlite:///{args.sqlite}" if args.sqlite else pg_database(f"{DB_PREFIX}_{args.size}")
    engine = make_engine(url)
    factory = make_session_factory(engine)
    times: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    started: dict[int, float] = {}

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Any, cursor: Any, statement: str, *a: Any) -> None:
        started[id(cursor)] = time.perf_counter()

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn: Any, cursor: Any, statement: str, *a: Any) -> None:
        k = _kind(statement)
        times[k] += time.perf_counter() - started.pop(id(cursor))
        counts[k] += 1

    def timed_commit(session: Session) -> None:
        t0 = time.perf_counter()
        session.commit()
        times["COMMIT"] += time.perf_counter() - t0
        counts["COMMIT"] += 1

    with factory() as s:
        sender = s.scalar(select(User).where(User.uid == ADMIN))
        assert sender is not None
        conv_id = _scratch_conversation(s, sender.id, "profile")
        conv = s.get_one(Conversation, conv_id)
        root = s.scalar(select(OrgUnit.id).where(OrgUnit.uid == SIERRA_LEONE))
        grp = s.scalar(select(UserGroup.id).where(UserGroup.uid == MALARIA_GROUP))
        targets = {TargetKind.ORG_UNIT: {root}, TargetKind.USER_GROUP: {grp}}
        delivery_id = _record_targets(s, sender, conv, targets, True, utcnow()).id  # type: ignore[arg-type]
        s.commit()
    times.clear()
    counts.clear()
    t_all = time.perf_counter()
    with factory() as s:
        t0 = time.perf_counter()
        planned = svc.plan(s, delivery_id, args.batch_size)
        timed_commit(s)
        t_plan = time.perf_counter() - t0
    t_batches = time.perf_counter()
    rows = 0
    for seq in planned.batch_seqs:
        with factory() as s:
            assert svc.begin_attempt(s, delivery_id, seq, 5)
            timed_commit(s)
        with factory() as s:
            rows += svc.run_batch(s, delivery_id, seq).rows
            timed_commit(s)
    t_end = time.perf_counter()
    total = t_end - t_all
    print(
        f"{url.split('/')[-1]}: {rows:,} rows, {len(planned.batch_seqs)} batches of "
        f"{args.batch_size}: plan {t_plan:.3f}s, batches {t_end - t_batches:.3f}s, "
        f"total {total:.3f}s ({rows / total:,.0f} rows/s, one process)"
    )
    print(f"{'statement':40} {'n':>5} {'seconds':>8} {'share':>6}")
    for k, v in sorted(times.items(), key=lambda kv: -kv[1]):
        print(f"{k:40} {counts[k]:5} {v:8.3f} {v / total:6.1%}")
    other = total - sum(times.values())
    print(f"{'(Python, ORM, pool outside statements)':40} {'':5} {other:8.3f} {other / total:6.1%}")
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM conversation WHERE id = :c"), {"c": conv_id})
    engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
