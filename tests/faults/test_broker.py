"""The broker fails: Redis restarted empty or FLUSHALLed mid-broadcast, Redis down or silent at
submit. The database's record of unfinished work (the sweep) finishes every delivery."""

from __future__ import annotations

import base64
import socket
import time

import pytest
from sqlalchemy import select

from service.config import load_settings
from service.models import Conversation, Delivery, User
from service.passwords import hash_password
from tests.faults.conftest import (
    Broadcast,
    Stack,
    assert_exact,
    conversation_held,
    delivery,
    population,
    publish,
    submit,
    wait_finished,
    wait_lock_waiters,
)
from web.app import create_app

pytestmark = pytest.mark.faults


@pytest.fixture
def running(live: Stack) -> Stack:
    live.worker("w")
    return live


@pytest.mark.parametrize("fault", ["restart", "flushall"])
def test_redis_lost_mid_broadcast_delivery_completes_from_the_database(
    running: Stack, fault: str
) -> None:
    pop = population(running, 5000)
    b = submit(running, pop, f"Redis {fault}")
    with conversation_held(running, b):
        publish(running, b)
        wait_lock_waiters(running, 2)
        assert running.redis.client().llen("bulk") > 0, "batches should still be queued"
        if fault == "restart":
            running.redis.stop()
            running.redis.start()
        else:
            running.redis.flushall()
        assert running.redis.client().llen("bulk") == 0
        t0 = time.monotonic()
    d = wait_finished(running, b, timeout=120)
    print(f"\n[measure] redis {fault}: delivery completed {time.monotonic() - t0:.1f}s after")
    assert d.state == "DELIVERED"
    assert_exact(running, b)
    logs = "".join(w.log() for w in running.workers)
    assert "sweep republished" in logs


def _blackhole() -> socket.socket:
    """A port that accepts connections and never answers (a hung broker)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(0)
    return s


@pytest.mark.parametrize("outage", ["down", "silent"])
def test_submit_with_redis_unreachable_is_accepted_quickly_and_delivered_later(
    stack: Stack, outage: str
) -> None:
    pop = population(stack, 800)
    with stack.session() as s:
        sender = s.get_one(User, pop.sender_id)
        sender.password_hash = hash_password("pw-faults-1", rounds=4)
        username = sender.username
        s.commit()
    hole = _blackhole()
    port = hole.getsockname()[1] if outage == "silent" else stack.redis.port
    if outage == "down":
        hole.close()
        stack.redis.stop()
    env = dict(stack.env, CELERY_BROKER_URL=f"redis://127.0.0.1:{port}/0")
    app = create_app(load_settings(env))
    auth = base64.b64encode(f"{username}:pw-faults-1".encode()).decode()
    t0 = time.monotonic()
    resp = app.test_client().post(
        "/api/messageConversations",
        json={"subject": f"Broker {outage}", "text": "T", "userGroups": [{"id": pop.group_uid}]},
        headers={"Authorization": f"Basic {auth}"},
    )
    took = time.monotonic() - t0
    hole.close()
    print(f"\n[measure] submit with Redis {outage}: {resp.status_code} in {took:.2f}s")
    # Accepted (the work is committed) — never a hang: BROKER_CONNECT_TIMEOUT is 1s here.
    assert resp.status_code == 201, resp.get_data(as_text=True)
    assert took < 3.0
    uid = resp.get_json()["id"]
    with stack.session() as s:
        conv = s.scalars(select(Conversation).where(Conversation.uid == uid)).one()
        d = s.scalars(select(Delivery).where(Delivery.conversation_id == conv.id)).one()
        b = Broadcast(conv.id, d.id, pop.member_ids | {pop.sender_id})
    assert delivery(stack, b.delivery_id).state == "QUEUED"
    # Redis comes back (empty); nothing was ever published: the sweep finds the delivery.
    if stack.redis.proc is None:
        stack.redis.start()
    stack.beat()
    stack.worker("late")
    try:
        wait_finished(stack, b, timeout=90)
        assert_exact(stack, b)
    finally:
        stack.stop_workers()
        app.extensions["engine"].dispose()
