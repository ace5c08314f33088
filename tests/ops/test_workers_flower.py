"""Flower and scale-out against real processes: PostgreSQL, a private Redis configured as the
compose file configures the broker, Celery workers, and Flower started by its entry point
(`python -m tasks.flower`) with basic auth from the environment.

Broadcasts go through the service (`send_message`, committed) and the web app's publisher; their
batches are then found through Flower's HTTP API with their states, and, with two workers, in
both workers' logs, each batch written by exactly one of them.
"""

from __future__ import annotations

import ast
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select

from service.models import DeliveryBatch
from tests.e2e.conftest import Proc
from tests.faults.conftest import (
    Broadcast,
    Stack,
    assert_exact,
    population,
    publish,
    submit,
    wait_finished,
    wait_until,
)
from tests.ops.conftest import (
    FLOWER_PASSWORD,
    FLOWER_USER,
    flower_tasks,
    ops_stack,
    start_flower,
    stop_stack,
)

BATCH_SIZE = 200
HOST = socket.gethostname()
WROTE = re.compile(r"delivery (\d+) batch (\d+) wrote (\d+) rows")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    """The stack and the base URL of a Flower watching it."""
    stack, broker = ops_stack(
        "ops_flower", tmp_path_factory.mktemp("ops-flower"), DELIVERY_BATCH_SIZE=str(BATCH_SIZE)
    )
    flower, base = start_flower(stack.env, stack.log_dir)
    try:
        yield stack, base
    finally:
        flower.stop()
        stop_stack(stack, broker)


@pytest.fixture
def live(world: tuple[Stack, str]) -> Iterator[tuple[Stack, str]]:
    """The world; the workers a test starts are stopped after it."""
    yield world
    world[0].stop_workers()


def batch_seqs(stack: Stack, delivery_id: int) -> set[int]:
    with stack.session() as s:
        return set(
            s.scalars(select(DeliveryBatch.seq).where(DeliveryBatch.delivery_id == delivery_id))
        )


def args_of(task: dict[str, Any]) -> tuple[Any, ...]:
    """Flower shows a task's positional arguments as their repr."""
    value = ast.literal_eval(task["args"])
    return tuple(value)


def delivery_tasks(base: str, delivery_id: int) -> dict[str, list[dict[str, Any]]]:
    """Flower's delivery.plan and delivery.fan_out_batch tasks of one delivery, by name."""
    found: dict[str, list[dict[str, Any]]] = {"delivery.plan": [], "delivery.fan_out_batch": []}
    for task in flower_tasks(base).values():
        if task["name"] in found and task["args"] and args_of(task)[0] == delivery_id:
            found[task["name"]].append(task)
    return found


def wait_in_flower(base: str, b: Broadcast, seqs: set[int]) -> dict[str, list[dict[str, Any]]]:
    """Poll Flower until the plan and every batch of the delivery show SUCCESS."""

    def complete() -> dict[str, list[dict[str, Any]]] | None:
        tasks = delivery_tasks(base, b.delivery_id)
        plans = [t for t in tasks["delivery.plan"] if t["state"] == "SUCCESS"]
        done = {args_of(t)[1] for t in tasks["delivery.fan_out_batch"] if t["state"] == "SUCCESS"}
        return tasks if plans and done == seqs else None

    try:
        return wait_until(complete, 90, "Flower to show every batch succeeded", 0.5)  # type: ignore[no-any-return]
    except AssertionError:
        tasks = delivery_tasks(base, b.delivery_id)
        summary = {n: sorted((t["state"], t["args"]) for t in ts) for n, ts in tasks.items()}
        raise AssertionError(f"Flower shows {summary}; expected batches {sorted(seqs)}") from None


def test_flower_shows_a_broadcasts_batches_with_their_states(live: tuple[Stack, str]) -> None:
    stack, base = live
    t0 = time.monotonic()
    stack.worker("solo")
    pop = population(stack, 1000)
    b = submit(stack, pop, "Seen in Flower")
    publish(stack, b)
    assert wait_finished(stack, b, timeout=180).state == "DELIVERED"
    seqs = batch_seqs(stack, b.delivery_id)
    # Batches are ranges of user ids holding at most BATCH_SIZE recipients each.
    assert len(seqs) >= 1000 // BATCH_SIZE
    tasks = wait_in_flower(base, b, seqs)
    took = time.monotonic() - t0
    print(f"\n[measure] 1,000 recipients delivered and seen in Flower in {took:.1f}s")

    (plan,) = tasks["delivery.plan"]
    batches = tasks["delivery.fan_out_batch"]
    assert sorted(args_of(t)[1] for t in batches) == sorted(seqs)  # each batch once
    for task in [plan, *batches]:
        assert task["state"] == "SUCCESS", task
        assert task["worker"] == f"solo@{HOST}", task
        assert task["routing_key"] == "bulk", task
        # task-sent (from the publisher: the web app's for the plan, the worker's for batches),
        # then task-received, task-started and task-succeeded from the worker.
        for event in ("sent", "received", "started", "succeeded"):
            assert task[event], (event, task)
        assert task["sent"] <= task["received"] <= task["started"] <= task["succeeded"]
        # Ids only: the delivery's id and the batch number, never recipients or names.
        args = args_of(task)
        assert all(type(a) is int for a in args), task["args"]
        assert len(args) == (1 if task["name"] == "delivery.plan" else 2)
        assert ast.literal_eval(task["kwargs"]) == {}
    # One task's page through the API too.
    info = requests.get(
        f"{base}/api/task/info/{plan['uuid']}", auth=(FLOWER_USER, FLOWER_PASSWORD), timeout=10
    )
    assert info.status_code == 200 and info.json()["state"] == "SUCCESS"


@pytest.mark.parametrize(
    "auth", [None, (FLOWER_USER, "wrong-password"), ("nobody", FLOWER_PASSWORD)]
)
def test_flower_api_needs_the_basic_auth_credentials(
    world: tuple[Stack, str], auth: tuple[str, str] | None
) -> None:
    _, base = world
    for path in ("/api/tasks", "/api/workers", "/tasks", "/"):
        resp = requests.get(base + path, auth=auth, timeout=10, allow_redirects=False)
        assert resp.status_code == 401, (path, resp.status_code)
    # The health check alone answers without credentials (compose's health check uses it).
    assert requests.get(f"{base}/healthcheck", timeout=10).text == "OK"


def test_flower_task_memory_is_bounded_by_flower_max_tasks(live: tuple[Stack, str]) -> None:
    """A Flower started with FLOWER_MAX_TASKS=3 keeps 3 tasks of a 6-task broadcast: the entry
    point's limit (10,000 by default) is the one Flower applies."""
    stack, _ = live
    small, base = start_flower(stack.env, stack.log_dir, name="flower-small", FLOWER_MAX_TASKS="3")
    try:
        stack.worker("bounded")
        b = submit(stack, population(stack, 1000), "Bounded")
        publish(stack, b)
        wait_finished(stack, b, timeout=180)
        seen: list[int] = []

        def kept_three() -> bool:
            seen.append(len(flower_tasks(base)))
            return seen[-1] == 3

        wait_until(kept_three, 60, "Flower to hold 3 tasks", 0.5)
        time.sleep(2)  # late events change nothing: the oldest is dropped first
        assert len(flower_tasks(base)) == 3
        assert max(seen) <= 3, seen
    finally:
        small.stop()


def test_flower_entry_point_sets_max_tasks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`python -m tasks.flower` passes FLOWER_MAX_TASKS=10000 unless the operator set one, and
    runs `celery -A tasks flower` with the arguments it was given."""
    import celery.bin.celery

    from tasks import flower

    calls: list[tuple[list[str], str | None]] = []

    def fake_main() -> None:
        import os
        import sys

        calls.append((list(sys.argv), os.environ.get("FLOWER_MAX_TASKS")))

    monkeypatch.setattr(celery.bin.celery, "main", fake_main)
    monkeypatch.setenv("APP_ENV", "test")
    monkeypatch.setenv("SECRET_KEY", "x")
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setattr("sys.argv", ["tasks.flower"])
    monkeypatch.delenv("FLOWER_MAX_TASKS", raising=False)
    flower.main(["--port=5555"])
    monkeypatch.setenv("FLOWER_MAX_TASKS", "500")
    flower.main([])
    assert calls == [
        (["celery", "-A", "tasks", "flower", "--port=5555"], "10000"),
        (["celery", "-A", "tasks", "flower"], "500"),
    ]


def test_workers_are_configured_to_send_task_events() -> None:
    from service.config import Settings
    from tasks.celery_app import TASK_QUEUES, celery_config

    conf = celery_config(Settings())
    assert conf["worker_send_task_events"] is True
    assert conf["task_send_sent_event"] is True
    assert conf["task_track_started"] is True
    # Stable `domain.verb` names.
    assert all(re.fullmatch(r"[a-z]+\.[a-z_]+", name) for name in TASK_QUEUES)


def test_two_workers_share_one_broadcasts_batches_without_duplicates(
    live: tuple[Stack, str],
) -> None:
    """20,000 recipients in 100-odd batches; two worker processes on the bulk queue. Each batch is
    written by exactly one of them (their logs and Flower say which), both get a share, and every
    recipient has exactly one inbox row."""
    stack, base = live
    size = 20_000
    pop = population(stack, size)
    workers = [stack.worker("scale-a"), stack.worker("scale-b")]
    b = submit(stack, pop, "Two workers")
    t0 = time.monotonic()
    publish(stack, b)
    d = wait_finished(stack, b, timeout=300)
    elapsed = time.monotonic() - t0
    assert d.state == "DELIVERED"
    assert_exact(stack, b)
    seqs = batch_seqs(stack, b.delivery_id)
    assert len(seqs) >= size // BATCH_SIZE

    written = {w.name: wrote_by(w, b.delivery_id) for w in workers}
    print(
        f"\n[measure] {size:,} recipients, {len(seqs)} batches, two workers: delivered in "
        f"{elapsed:.1f}s; batches per worker { ({k: len(v) for k, v in written.items()}) }"
    )
    a, c = (set(v) for v in written.values())
    assert a and c, f"one worker did all the work: {written}"
    assert not a & c, "a batch was written twice"
    assert a | c == seqs
    assert sum(sum(v.values()) for v in written.values()) == size

    tasks = wait_in_flower(base, b, seqs)
    by_worker: dict[str, set[int]] = {}
    for task in tasks["delivery.fan_out_batch"]:
        if task["state"] == "SUCCESS":
            by_worker.setdefault(task["worker"], set()).add(args_of(task)[1])
    assert set(by_worker) == {f"scale-a@{HOST}", f"scale-b@{HOST}"}
    assert set().union(*by_worker.values()) == seqs


def wrote_by(worker: Proc, delivery_id: int) -> dict[int, int]:
    """batch -> rows written, from a worker's log."""
    out: dict[int, int] = {}
    for m in WROTE.finditer(worker.log()):
        if int(m.group(1)) == delivery_id:
            seq = int(m.group(2))
            assert seq not in out, f"{worker.name} logged batch {seq} twice"
            out[seq] = int(m.group(3))
    return out
