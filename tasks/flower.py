"""`python -m tasks.flower [FLOWER OPTIONS]`: Flower, the Celery monitor, started only when the
settings allow it. In production it refuses to start without FLOWER_BASIC_AUTH (user:password),
which Flower itself reads from the environment, so the password never appears on a command line.

Flower keeps at most FLOWER_MAX_TASKS tasks in memory (default here 10000, oldest dropped first):
a broadcast to a million people is about 200 batch tasks at the default batch size, so its
memory stays bounded however many broadcasts run.
"""

from __future__ import annotations

import os
import sys

from service.config import ConfigError, load_settings

DEFAULT_MAX_TASKS = "10000"


def main(argv: list[str] | None = None) -> None:
    try:
        load_settings().check_flower()
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc}")
    os.environ.setdefault("FLOWER_MAX_TASKS", DEFAULT_MAX_TASKS)
    from celery.bin.celery import main as celery_main

    sys.argv = ["celery", "-A", "tasks", "flower", *(sys.argv[1:] if argv is None else argv)]
    celery_main()


if __name__ == "__main__":
    main()
