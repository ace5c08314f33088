"""End-to-end check of a running service (the README's "Doing it by hand", scripted).

    python scripts/e2e_check.py [--url http://127.0.0.1:5000] [--database-url URL]

Against a running web server and worker with the demo data loaded, it:
1. signs in as `admin` and sends a message to Bo district (O6uvpzGd5pu) with ouMode DESCENDANTS,
   waits for its delivery to be DELIVERED, and checks in the database that exactly the active
   users assigned anywhere in Bo's subtree got one unread inbox row each;
2. has a Ngelehun CHC user send feedback, checks it arrives OPEN in every handler's inbox;
3. has a handler set it PENDING and HIGH and post an internal reply, and checks the facility
   user never sees that reply by any route.
The database URL defaults to the service's own settings (the same environment as `make run`).
Exits non-zero with a message at the first broken promise.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import select

from service.config import load_settings
from service.db import make_engine, make_session_factory
from service.models import (
    Conversation,
    Inbox,
    OrgUnit,
    User,
    user_group_members,
    user_org_units,
)
from service.system_settings import feedback_group

BO = "O6uvpzGd5pu"
PASSWORD = "district"  # noqa: S105 - the demo logins' published password


class CheckFailed(AssertionError):
    pass


def check(condition: object, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


class Client:
    def __init__(self, base: str, username: str) -> None:
        self.base = base.rstrip("/")
        self.http = requests.Session()
        self.http.auth = (username, PASSWORD)
        self.username = username

    def call(self, method: str, path: str, expect: int = 200, **kw: Any) -> Any:
        r = self.http.request(method, self.base + path, timeout=30, **kw)
        check(
            r.status_code == expect,
            f"{self.username}: {method} {path} answered {r.status_code}, expected {expect}: "
            f"{r.text[:300]}",
        )
        return r.json() if r.content else None


def wait_delivered(admin: Client, conv_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = admin.call("GET", f"/api/messageConversations/{conv_id}/delivery")
        if last["state"] in ("DELIVERED", "FAILED"):
            break
        time.sleep(0.5)
    check(last.get("state") == "DELIVERED", f"delivery did not finish in {timeout}s: {last}")
    print(f"  delivery: {last}")
    return last


def run(base: str, database_url: str, timeout: float) -> None:
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    tag = uuid.uuid4().hex[:8]
    admin = Client(base, "admin")
    me = admin.call("GET", "/api/me")
    print(f"1. signed in as admin ({me['id']}); sending to Bo with DESCENDANTS")
    created = admin.call(
        "POST",
        "/api/messageConversations",
        expect=201,
        json={
            "subject": f"Bo district notice {tag}",
            "text": "Please submit your reports.",
            "organisationUnits": [{"id": BO}],
            "ouMode": "DESCENDANTS",
        },
    )
    conv_id = created["id"]
    delivery = wait_delivered(admin, conv_id, timeout)
    with sessions() as s:
        bo_path = s.scalar(select(OrgUnit.path).where(OrgUnit.uid == BO))
        check(bo_path, "Bo district is not in the database: is the demo data loaded?")
        admin_id = s.scalar(select(User.id).where(User.uid == me["id"]))
        expected = set(
            s.scalars(
                select(User.id)
                .join(user_org_units, user_org_units.c.user_id == User.id)
                .join(OrgUnit, OrgUnit.id == user_org_units.c.org_unit_id)
                .where(
                    OrgUnit.path.startswith(bo_path), User.disabled.is_(False), User.id != admin_id
                )
                .distinct()
            )
        )
        conv = s.scalars(select(Conversation).where(Conversation.uid == conv_id)).one()
        rows = s.execute(
            select(Inbox.user_id, Inbox.read).where(
                Inbox.conversation_id == conv.id, Inbox.user_id != admin_id
            )
        ).all()
        got = [r.user_id for r in rows]
        check(len(got) == len(set(got)), "some recipient has more than one inbox row")
        check(
            set(got) == expected,
            f"inbox rows differ from Bo's users: {len(set(got) - expected)} extra, "
            f"{len(expected - set(got))} missing",
        )
        check(all(not r.read for r in rows), "some recipient's row is not unread")
        check(
            delivery["total"] == len(expected) == delivery["delivered"],
            f"delivery counts {delivery} do not match {len(expected)} users",
        )
        print(f"  {len(expected)} users in Bo's subtree, each with exactly one unread row")

    print("2. ngelehun_chc1 sends feedback")
    nurse = Client(base, "ngelehun_chc1")
    fb = nurse.call(
        "POST",
        f"/api/messageConversations/feedback?subject=Fridge+broken+{tag}",
        expect=201,
        data=b"The vaccine fridge is broken.",
        headers={"Content-Type": "text/plain"},
    )
    fb_id = fb["id"]
    tickets = admin.call(
        "GET", "/api/messageConversations?filter=messageType:eq:TICKET&pageSize=200"
    )
    mine = [c for c in tickets["messageConversations"] if c["id"] == fb_id]
    check(mine and mine[0]["status"] == "OPEN", f"feedback not OPEN in admin's inbox: {mine}")
    with sessions() as s:
        group = feedback_group(s)
        check(group is not None, "no feedback recipients group configured")
        assert group is not None
        handlers = set(
            s.scalars(
                select(user_group_members.c.user_id).where(
                    user_group_members.c.group_id == group.id
                )
            )
        )
        conv = s.scalars(select(Conversation).where(Conversation.uid == fb_id)).one()
        unread = set(
            s.scalars(
                select(Inbox.user_id).where(Inbox.conversation_id == conv.id, Inbox.read.is_(False))
            )
        )
        check(
            handlers and handlers <= unread,
            f"{len(handlers - unread)} handlers have no unread row for the feedback",
        )
        print(f"  arrived OPEN and unread for all {len(handlers)} handlers")

    print("3. admin sets PENDING and HIGH and writes an internal reply")
    admin.call(
        "POST", f"/api/messageConversations/{fb_id}/status?messageConversationStatus=PENDING"
    )
    admin.call(
        "POST", f"/api/messageConversations/{fb_id}/priority?messageConversationPriority=HIGH"
    )
    secret = f"internal-{tag}: check the cold-chain budget"
    admin.call(
        "POST",
        f"/api/messageConversations/{fb_id}?internal=true",
        expect=201,
        data=secret.encode(),
        headers={"Content-Type": "text/plain"},
    )
    seen = nurse.call("GET", f"/api/messageConversations/{fb_id}")
    check(
        seen["status"] == "PENDING" and seen["priority"] == "HIGH",
        f"facility user sees status {seen['status']} / {seen['priority']}",
    )
    check(
        all(secret not in m["text"] for m in seen["messages"]),
        "the facility user can read the internal reply",
    )
    check(seen["messageCount"] == 1, "the internal reply shows in the facility user's count")
    found = nurse.call("GET", f"/api/messageConversations?queryString={tag}%3A")
    check(found["pager"]["total"] == 0, "the internal reply is findable by the facility user")
    handler_view = admin.call("GET", f"/api/messageConversations/{fb_id}")
    check(
        any(m["text"] == secret and m["internal"] for m in handler_view["messages"]),
        "the handler does not see the internal reply",
    )
    print("  the facility user sees PENDING/HIGH and not the internal reply")
    engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:5000")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args(argv)
    database_url = args.database_url or load_settings().database_url
    try:
        run(args.url, database_url, args.timeout)
    except (CheckFailed, requests.RequestException) as exc:
        print(f"E2E CHECK FAILED: {exc}", file=sys.stderr)
        return 1
    print("E2E CHECK PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
