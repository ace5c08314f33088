"""django-postman 4.6, the peer: the same broadcast through its own API, `pm_broadcast`.

    python -m bench.peer_postman --max-size N --budget SECONDS --admin-url URL --db NAME --out F

pm_broadcast takes the recipients as a Python list of users and saves one Message per recipient
(Django's default autocommit: each save is its own transaction). Notifications (e-mail) are
skipped, since the service sends none. First a warm-up of 1,000 recipients gives the rate; then
the largest size of 1k, 2k, 5k, 10k, ... (at most --max-size) that the rate says fits in 80 % of
the budget is run, under a hard alarm at the budget. The result is the largest size that
finished, its time (recipients loaded from the database included) and its rate.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import sys
import time
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url

LADDER = [
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
]


class OverBudget(Exception):
    pass


def _alarm(_sig: int, _frame: object) -> None:
    raise OverBudget


def ensure_database(admin_url: str, name: str) -> None:
    from service.db import make_engine

    admin = make_engine(admin_url, pool=False, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if (
            conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()
            is None
        ):
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--max-size", type=int, required=True)
    p.add_argument("--budget", type=float, default=300.0)
    p.add_argument("--admin-url", required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    url = make_url(args.admin_url)
    ensure_database(args.admin_url, args.db)
    os.environ.update(
        DJANGO_SETTINGS_MODULE="bench.postman_settings",
        BENCH_POSTMAN_DB=args.db,
        BENCH_POSTMAN_HOST=url.host or "127.0.0.1",
        BENCH_POSTMAN_PORT=str(url.port or 5432),
        BENCH_POSTMAN_USER=url.username or "postgres",
        BENCH_POSTMAN_PASSWORD=url.password or "",
    )
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection
    from postman.api import pm_broadcast
    from postman.models import Message

    call_command("migrate", verbosity=0)

    def ensure_users(need: int) -> None:
        """Users 1 .. need (1 is the sender), written with COPY like the service's data set."""
        have = User.objects.count()
        if have >= need:
            return
        now = dt.datetime.now(dt.UTC)
        with connection.cursor() as cur:
            raw = cur.cursor
            with raw.copy(
                "COPY auth_user (id, password, is_superuser, username, first_name, last_name, "
                "email, is_staff, is_active, date_joined) FROM STDIN"
            ) as copy:
                for i in range(have + 1, need + 1):
                    copy.write_row((i, "!", False, f"user{i}", "", "", "", False, True, now))
            cur.execute("SELECT setval(pg_get_serial_sequence('auth_user', 'id'), %s)", [need])
            cur.execute("ANALYZE auth_user")

    ensure_users(min(1_000, args.max_size) + 1)
    sender = User.objects.get(pk=1)

    def run(n: int) -> float:
        Message.objects.all().delete()
        t0 = time.perf_counter()
        recipients = list(User.objects.filter(pk__gt=1).order_by("pk")[:n])
        pm_broadcast(
            sender,
            recipients,
            "National reporting deadline",
            "Please submit your monthly reports by Friday.",
            skip_notification=True,
        )
        elapsed = time.perf_counter() - t0
        assert Message.objects.count() == n
        return elapsed

    warm_n = min(1_000, args.max_size)
    warm_s = run(warm_n)
    rate = warm_n / warm_s
    fits = [n for n in LADDER if n <= args.max_size and n / rate <= 0.8 * args.budget]
    result = {
        "size": warm_n,
        "seconds": round(warm_s, 3),
        "rows_per_s": round(rate),
        "warmup": {"size": warm_n, "seconds": round(warm_s, 3)},
    }
    target = max(fits) if fits else warm_n
    if args.max_size < LADDER[0]:
        target = args.max_size
    if target > warm_n:
        ensure_users(target + 1)
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(int(args.budget))
        try:
            s = run(target)
            signal.alarm(0)
            result.update(size=target, seconds=round(s, 3), rows_per_s=round(target / s))
        except OverBudget:
            result["did_not_finish"] = {"size": target, "budget_s": args.budget}
    Message.objects.all().delete()
    result["transaction"] = "Django autocommit: one transaction per saved message"
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
