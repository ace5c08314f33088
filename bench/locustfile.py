"""What one simulated person does during `make load`: mostly reading the inbox and conversations,
sometimes replying, writing to a few colleagues, writing feedback, and now and then broadcasting
to everyone. Each person signs in with their own personal access token (LOAD_TOKENS names the JSON
file `bench.load` wrote: [{"username", "uid", "token"}, ...])."""

from __future__ import annotations

import itertools
import json
import os
import random

from locust import HttpUser, between, task

API = "/api/messageConversations"
with open(os.environ["LOAD_TOKENS"]) as fh:
    PEOPLE = json.load(fh)
GROUP = os.environ["LOAD_GROUP"]
_next = itertools.count()


class Person(HttpUser):
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        me = PEOPLE[next(_next) % len(PEOPLE)]
        self.me = me
        self.client.headers["Authorization"] = f"ApiToken {me['token']}"
        self.seen: list[str] = []
        self.sent: list[str] = []

    def _other(self) -> str:
        while True:
            other = random.choice(PEOPLE)  # noqa: S311 - load pattern, not security
            if other["uid"] != self.me["uid"]:
                return str(other["uid"])

    @task(6)
    def inbox(self) -> None:
        with self.client.get(
            f"{API}?pageSize=20&fields=id,subject,read,lastMessage,messageType",
            name="list inbox",
            catch_response=True,
        ) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")
                return
            self.seen = [
                c["id"] for c in r.json()["messageConversations"] if c["messageType"] != "SYSTEM"
            ]

    @task(3)
    def unread_count(self) -> None:
        self.client.get("/api/me/dashboard", name="unread count")

    @task(5)
    def read(self) -> None:
        if self.seen:
            uid = random.choice(self.seen)  # noqa: S311
            self.client.get(f"{API}/{uid}?markRead=true", name="read conversation")

    @task(2)
    def reply(self) -> None:
        if self.seen:
            uid = random.choice(self.seen)  # noqa: S311
            self.client.post(
                f"{API}/{uid}",
                data=f"Reply from {self.me['username']}: noted, thank you.".encode(),
                headers={"Content-Type": "text/plain"},
                name="reply",
            )

    @task(2)
    def send(self) -> None:
        users = [{"id": self._other()} for _ in range(random.randint(1, 3))]  # noqa: S311
        body = {"subject": "Stock report", "text": "Please send the stock figures.", "users": users}
        with self.client.post(API, json=body, name="send message", catch_response=True) as r:
            if r.status_code != 201:
                r.failure(f"{r.status_code}: {r.text[:200]}")
                return
            self.sent.append(r.json()["id"])

    @task(1)
    def delivery(self) -> None:
        if self.sent:
            uid = random.choice(self.sent[-20:])  # noqa: S311
            self.client.get(f"{API}/{uid}/delivery", name="delivery progress")

    @task(1)
    def mark_unread(self) -> None:
        if self.seen:
            uid = random.choice(self.seen)  # noqa: S311
            self.client.post(f"{API}/unread", json=[uid], name="mark unread")

    @task(1)
    def feedback(self) -> None:
        self.client.post(
            f"{API}/feedback?subject=Fridge+temperature",
            data=b"The vaccine fridge reads 12 degrees.",
            headers={"Content-Type": "text/plain"},
            name="send feedback",
        )

    @task(1)
    def lookup(self) -> None:
        self.client.get("/api/userLookup?query=load", name="user lookup")

    @task(1)
    def maybe_broadcast(self) -> None:
        if random.random() < 0.05:  # noqa: S311 - with weight 1 of ~23: about 1 in 460 actions
            body = {
                "subject": "To everyone",
                "text": "District meeting on Monday.",
                "userGroups": [{"id": GROUP}],
            }
            self.client.post(API, json=body, name="broadcast to all")
