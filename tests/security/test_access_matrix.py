"""Who may do what: every API route and page, for every role.

Roles: a private message's sender and its other participant, a non-participant ("outsider"), a
feedback handler, the feedback's sender, an administrator (who is neither in the private message
nor on the feedback team), and anonymous callers. A conversation one may not see answers exactly
as one that does not exist; internal replies reach handlers only, through every route; nobody
changes another user's read state or inbox.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db import is_uid, new_uid
from service.models import Conversation, Inbox
from tests.security.conftest import ROLES, World

API = "/api/messageConversations"
ALL = (*ROLES, "anonymous")

# Who sees which conversation (everyone else gets 404; anonymous 401 or the sign-in page).
SEES = {
    "private": {"sender", "participant"},
    "ticket": {"feedback_sender", "handler"},
    "announcement": {"admin", "participant"},
}


def conv_uid(world: World, kind: str) -> str:
    return getattr(world, kind).uid  # type: ignore[no-any-return]


def api(app: Flask, world: World, role: str, method: str, url: str, **kw: Any):  # type: ignore[no-untyped-def]
    headers = {} if role == "anonymous" else world.auth(role)
    return app.test_client().open(url, method=method, headers=headers, **kw)


def _same_as_missing(app: Flask, world: World, role: str, method: str, url: str, real: str, **kw):  # type: ignore[no-untyped-def]
    """The answer for `real` (invisible to `role`) equals the answer for an id that does not exist,
    apart from the id itself."""
    fake = new_uid()
    a = api(app, world, role, method, url.format(id=real), **kw)
    b = api(app, world, role, method, url.format(id=fake), **kw)
    assert a.status_code == b.status_code == 404, (url, role, a.status_code, b.status_code)
    assert a.get_data(as_text=True).replace(real, "X") == b.get_data(as_text=True).replace(
        fake, "X"
    )


def _page_text(resp, uid: str) -> str:  # type: ignore[no-untyped-def]
    """A page without its id and its per-request CSRF token."""
    html = resp.get_data(as_text=True).replace(uid, "X")
    return re.sub(r'name="csrf_token" value="[^"]*"', "", html)


# ---------------------------------------------------------------------------------------------
# Reading


def _reading_a_conversation_through_the_api(app: Flask, world: World, role: str, kind: str) -> None:
    uid = conv_uid(world, kind)
    for suffix in ("", ".json", "?fields=id,subject,messages[text,internal]", "?markRead=true"):
        url = f"{API}/{{id}}{suffix}"
        r = api(app, world, role, "GET", url.format(id=uid))
        if role == "anonymous":
            assert r.status_code == 401
        elif role in SEES[kind]:
            assert r.status_code == 200, (role, kind, r.json)
            texts = r.get_data(as_text=True)
            assert (world.internal_text in texts) == (kind == "ticket" and role == "handler")
        else:
            _same_as_missing(app, world, role, "GET", url, uid)


@pytest.mark.parametrize("role", ALL)
def test_reading_a_conversation_through_the_api(
    app: Flask, world: World, role: str, unchanged
) -> None:
    for kind in SEES:
        _reading_a_conversation_through_the_api(app=app, world=world, role=role, kind=kind)
        unchanged(accepted=True)


def _reading_a_conversation_page(app: Flask, world: World, role: str, kind: str) -> None:
    client = world.client(app, role)
    uid = conv_uid(world, kind)
    r = client.get(f"/conversations/{uid}")
    if role == "anonymous":
        assert r.status_code == 302 and "/login" in r.headers["Location"]
    elif role in SEES[kind]:
        assert r.status_code == 200
        html = r.get_data(as_text=True)
        assert (world.internal_text in html) == (kind == "ticket" and role == "handler")
    else:
        fake = new_uid()
        a, b = r, client.get(f"/conversations/{fake}")
        assert a.status_code == b.status_code == 404
        assert _page_text(a, uid) == _page_text(b, fake)


@pytest.mark.parametrize("role", ALL)
def test_reading_a_conversation_page(app: Flask, world: World, role: str, unchanged) -> None:
    for kind in SEES:
        _reading_a_conversation_page(app=app, world=world, role=role, kind=kind)
        unchanged(accepted=True)


LIST_URLS = [
    f"{API}",
    f"{API}.json?paging=false",
    f"{API}?fields=*",
    f"{API}?fields=id,subject,lastMessage,lastSender,messageCount,messages[text,internal,sender]",
    f"{API}?fields=:all",
    f"{API}?filter=messageType:eq:TICKET",
    f"{API}?queryString=INTERNAL-ONLY",
    f"{API}?queryString=Fridge&queryOperator=ilike",
    f"{API}?order=lastMessage:desc&pageSize=5",
]


@pytest.mark.parametrize("role", ROLES)
def test_list_views_show_only_what_one_may_see(app: Flask, world: World, role: str) -> None:
    subjects = {kind: conv_uid(world, kind) for kind in SEES}
    for url in LIST_URLS:
        r = api(app, world, role, "GET", url)
        assert r.status_code == 200, (url, r.json)
        body = r.get_data(as_text=True)
        for kind, uid in subjects.items():
            if role not in SEES[kind]:
                assert uid not in body, (role, url, kind)
        if role != "handler":
            assert world.internal_text not in body, (role, url)
    # The search finds the internal note for handlers only.
    r = api(app, world, role, "GET", f"{API}?queryString=INTERNAL-ONLY")
    found = [c["id"] for c in r.json["messageConversations"]]
    assert found == ([world.ticket.uid] if role == "handler" else [])


@pytest.mark.parametrize("role", ROLES)
def test_inbox_pages_show_only_what_one_may_see(app: Flask, world: World, role: str) -> None:
    client = world.client(app, role)
    for url in ("/", "/?folder=feedback", "/?q=INTERNAL-ONLY", "/?q=Fridge", "/?unread=1"):
        r = client.get(url)
        assert r.status_code == 200, url
        html = r.get_data(as_text=True)
        for kind in SEES:
            if role not in SEES[kind]:
                assert conv_uid(world, kind) not in html, (role, url, kind)
        if role != "handler":
            assert world.internal_text not in html
    r = client.get("/?q=INTERNAL-ONLY")
    assert (world.ticket.uid in r.get_data(as_text=True)) == (role == "handler")


def test_the_feedback_sender_sees_public_summary_fields_only(app: Flask, world: World) -> None:
    """Last message, last sender and message count come from public messages only."""
    fields = "id,lastMessage,lastSender[id],messageCount,messages[id]"
    r = api(app, world, "feedback_sender", "GET", f"{API}/{world.ticket.uid}?fields={fields}")
    mine = r.json
    r = api(app, world, "handler", "GET", f"{API}/{world.ticket.uid}?fields={fields}")
    theirs = r.json
    assert mine["messageCount"] == 1 and theirs["messageCount"] == 2
    assert mine["lastSender"]["id"] == world.users["feedback_sender"].uid
    assert theirs["lastSender"]["id"] == world.users["handler"].uid
    assert len(mine["messages"]) == 1 and len(theirs["messages"]) == 2
    listed = api(app, world, "feedback_sender", "GET", f"{API}?fields={fields}").json
    entry = next(c for c in listed["messageConversations"] if c["id"] == world.ticket.uid)
    assert entry == mine


def test_internal_replies_do_not_make_feedback_unread_for_its_sender(
    app: Flask, world: World
) -> None:
    before = api(app, world, "feedback_sender", "GET", "/api/me/dashboard").json
    r = api(
        app,
        world,
        "handler",
        "POST",
        f"{API}/{world.ticket.uid}?internal=true",
        data="another internal note",
        content_type="text/plain",
    )
    assert r.status_code == 201
    after = api(app, world, "feedback_sender", "GET", "/api/me/dashboard").json
    assert after == before
    r = api(app, world, "feedback_sender", "GET", f"{API}?filter=read:eq:false&fields=id")
    assert world.ticket.uid not in r.get_data(as_text=True)


# ---------------------------------------------------------------------------------------------
# Replying


def _replying(app: Flask, world: World, db: Session, role: str, kind: str, unchanged) -> None:
    uid = conv_uid(world, kind)
    r = api(app, world, role, "POST", f"{API}/{uid}", data="a reply", content_type="text/plain")
    if role == "anonymous":
        assert r.status_code == 401
        unchanged()
    elif role in SEES[kind]:
        assert r.status_code == 201, r.json
    else:
        assert r.status_code == 404
        unchanged()
        _same_as_missing(
            app, world, role, "POST", f"{API}/{{id}}", uid, data="x", content_type="text/plain"
        )
        unchanged()
    page = world.client(app, role).post(f"/conversations/{uid}/reply", data={"text": "page"})
    if role == "anonymous":
        assert page.status_code == 302 and "/login" in page.headers["Location"]
    elif role in SEES[kind]:
        assert page.status_code == 302, page.get_data(as_text=True)[:500]
    else:
        assert page.status_code == 404
        unchanged()


@pytest.mark.parametrize("role", ALL)
def test_replying(app: Flask, world: World, db: Session, role: str, unchanged) -> None:
    for kind in SEES:
        _replying(app=app, world=world, db=db, role=role, kind=kind, unchanged=unchanged)
        unchanged(accepted=True)


def _internal_replies_only_by_handlers_on_feedback(
    app: Flask, world: World, role: str, kind: str, unchanged
) -> None:
    uid = conv_uid(world, kind)
    r = api(
        app, world, role, "POST", f"{API}/{uid}?internal=true", data="x", content_type="text/plain"
    )
    page = world.client(app, role).post(
        f"/conversations/{uid}/reply", data={"text": "x", "internal": "y"}
    )
    if kind == "ticket" and role == "handler":
        assert r.status_code == 201 and page.status_code == 302
        return
    if role not in SEES[kind]:
        assert r.status_code == 404 and page.status_code == 404
    elif kind == "ticket":  # the feedback sender
        assert r.status_code == 403
        assert page.status_code == 422  # the form again, saying why
        assert "Only feedback handlers" in page.get_data(as_text=True)
    else:  # not feedback: there are no internal replies
        assert r.status_code == 400 and r.json["field"] == "internal"
        assert page.status_code == 422
    unchanged()


@pytest.mark.parametrize("role", ROLES)
def test_internal_replies_only_by_handlers_on_feedback(
    app: Flask, world: World, role: str, unchanged
) -> None:
    for kind in SEES:
        _internal_replies_only_by_handlers_on_feedback(
            app=app, world=world, role=role, kind=kind, unchanged=unchanged
        )
        unchanged(accepted=True)


# ---------------------------------------------------------------------------------------------
# Read state and inbox removal: one's own only


def _row(db: Session, world: World, role: str, kind: str) -> tuple[bool, bool, bool] | None:
    db.expire_all()
    conv = db.scalar(select(Conversation).where(Conversation.uid == conv_uid(world, kind)))
    row = db.get(Inbox, (world.users[role].id, conv.id))
    return None if row is None else (row.read, row.followup, row.removed)


@pytest.mark.parametrize("role", ROLES)
def test_nobody_changes_another_users_read_state_or_inbox(
    app: Flask, world: World, db: Session, role: str
) -> None:
    victim = "participant" if role != "participant" else "sender"
    other = world.users[victim].uid
    before = {kind: _row(db, world, victim, kind) for kind in SEES}
    uids = [conv_uid(world, k) for k in SEES]
    mine = {kind: _row(db, world, role, kind) for kind in SEES} if role in world.users else {}
    # DHIS2 spells "for this user" both ways; either, on any route, is refused (never ignored).
    own = world.users[role].uid if role in world.users else other
    for param in ("user", "userUid"):
        for action in ("read", "unread", "followup", "unfollowup"):
            r = api(app, world, role, "POST", f"{API}/{action}?{param}={other}", json=uids)
            assert r.status_code == 403, (action, param, r.json)
            # Every value counts, not the first: one's own id first changes nothing.
            both = f"{API}/{action}?{param}={own}&{param}={other}"
            assert api(app, world, role, "POST", both, json=uids).status_code == 403
        for kind in SEES:
            uid = conv_uid(world, kind)
            for url in (
                f"{API}/{uid}/{other}",
                f"{API}/{uid}?{param}={other}",
                f"{API}?mc={uid}&{param}={other}",
            ):
                assert api(app, world, role, "DELETE", url).status_code == 403, url
            for action in ("read", "unread"):
                r = api(app, world, role, "POST", f"{API}/{uid}/{action}?{param}={other}")
                assert r.status_code == 403, (action, param, r.json)
    # A refused request changed nothing, the caller's own rows included.
    assert {kind: _row(db, world, role, kind) for kind in mine} == mine
    # Acting on one's own copies never touches anyone else's.
    for action in ("read", "unread", "followup"):
        api(app, world, role, "POST", f"{API}/{action}", json=uids)
    api(app, world, role, "DELETE", f"{API}?" + "&".join(f"mc={u}" for u in uids))
    client = world.client(app, role)
    for kind in SEES:
        client.get(f"/conversations/{conv_uid(world, kind)}")
        for action in ("unread", "followup", "remove"):
            client.post(f"/conversations/{conv_uid(world, kind)}/{action}", data={"on": "1"})
    for action in ("read", "unread", "followup", "remove"):
        client.post("/inbox/actions", data={"action": action, "ids": uids})
    assert {kind: _row(db, world, victim, kind) for kind in SEES} == before


def _own_flags_on_invisible_conversations_are_404_and_write_nothing(
    app: Flask, world: World, role: str, kind: str, unchanged
) -> None:
    if role in SEES[kind]:
        return
    uid = conv_uid(world, kind)
    for action in ("read", "unread", "followup", "unfollowup"):
        assert api(app, world, role, "POST", f"{API}/{action}", json=[uid]).status_code == 404
    for action in ("read", "unread"):
        _same_as_missing(app, world, role, "POST", f"{API}/{{id}}/{action}", uid)
    _same_as_missing(app, world, role, "DELETE", f"{API}/{{id}}", uid)
    mine = world.users[role].uid
    _same_as_missing(app, world, role, "DELETE", f"{API}/{{id}}/{mine}", uid)
    assert api(app, world, role, "DELETE", f"{API}?mc={uid}").status_code == 404
    client = world.client(app, role)
    for action in ("unread", "followup", "remove"):
        assert client.post(f"/conversations/{uid}/{action}").status_code == 404
    for action in ("read", "unread", "followup", "remove"):
        client.post("/inbox/actions", data={"action": action, "ids": [uid]})
    unchanged()


@pytest.mark.parametrize("role", ROLES)
def test_own_flags_on_invisible_conversations_are_404_and_write_nothing(
    app: Flask, world: World, role: str, unchanged
) -> None:
    for kind in SEES:
        _own_flags_on_invisible_conversations_are_404_and_write_nothing(
            app=app, world=world, role=role, kind=kind, unchanged=unchanged
        )
        unchanged(accepted=True)


# ---------------------------------------------------------------------------------------------
# Triage: status, priority, assignee


def _triage(app: Flask, world: World, role: str, kind: str, unchanged) -> None:
    uid = conv_uid(world, kind)
    handler_uid = world.users["handler"].uid
    calls = [
        ("POST", f"{API}/{uid}/status?messageConversationStatus=PENDING"),
        ("POST", f"{API}/{uid}/priority?messageConversationPriority=HIGH"),
        ("POST", f"{API}/{uid}/assign?userId={handler_uid}"),
        ("DELETE", f"{API}/{uid}/assign"),
    ]
    form = {"status": "SOLVED", "priority": "LOW", "assignee": ""}
    page = world.client(app, role).post(f"/conversations/{uid}/feedback", data=form)
    codes = [api(app, world, role, m, u).status_code for m, u in calls]
    if role == "anonymous":
        assert codes == [401] * 4
        assert page.status_code == 302
        unchanged()
    elif kind == "ticket" and role == "handler":
        assert codes == [200] * 4 and page.status_code == 302
    elif role not in SEES[kind]:
        assert codes == [404] * 4 and page.status_code == 404
        for m, u in calls:
            _same_as_missing(app, world, role, m, u.replace(uid, "{id}"), uid)
        unchanged()
    elif kind == "ticket":  # the feedback sender may not triage
        assert codes == [403] * 4 and page.status_code == 403
        unchanged()
    else:  # private messages have no status
        assert all(c == 400 for c in codes), codes
        assert page.status_code in (400, 422)
        unchanged()


@pytest.mark.parametrize("role", ALL)
def test_triage(app: Flask, world: World, role: str, unchanged) -> None:
    for kind in SEES:
        _triage(app=app, world=world, role=role, kind=kind, unchanged=unchanged)
        unchanged(accepted=True)


def test_only_handlers_can_be_assigned(app: Flask, world: World, unchanged) -> None:
    for someone in ("participant", "admin", "feedback_sender"):
        uid = world.users[someone].uid
        r = api(app, world, "handler", "POST", f"{API}/{world.ticket.uid}/assign?userId={uid}")
        assert r.status_code == 409, r.json
    unchanged()


# ---------------------------------------------------------------------------------------------
# Recipients, deliveries, settings, tokens


def _adding_recipients(app: Flask, world: World, role: str, kind: str, unchanged) -> None:
    uid = conv_uid(world, kind)
    body = {"users": [{"id": world.users["outsider"].uid}]}
    r = api(app, world, role, "POST", f"{API}/{uid}/recipients", json=body)
    if role == "anonymous":
        assert r.status_code == 401
    elif role not in SEES[kind]:
        assert r.status_code == 404
        _same_as_missing(app, world, role, "POST", f"{API}/{{id}}/recipients", uid, json=body)
    elif kind == "ticket":
        assert r.status_code == 409
    elif kind == "announcement" and role != "admin":
        assert r.status_code == 403
    else:
        assert r.status_code == 202, r.json
        return
    unchanged()


@pytest.mark.parametrize("role", ALL)
def test_adding_recipients(app: Flask, world: World, role: str, unchanged) -> None:
    for kind in SEES:
        _adding_recipients(app=app, world=world, role=role, kind=kind, unchanged=unchanged)
        unchanged(accepted=True)


def _delivery_progress_for_its_sender_and_administrators(
    app: Flask, world: World, db: Session, role: str, kind: str
) -> None:
    uid = conv_uid(world, kind)
    r = api(app, world, role, "GET", f"{API}/{uid}/delivery")
    conv = getattr(world, kind)
    starter = next(k for k, u in world.users.items() if u.id == conv.created_by_id)
    if role == "anonymous":
        assert r.status_code == 401
    elif role in (starter, "admin"):
        assert r.status_code == 200
        dr = api(app, world, role, "GET", f"/api/deliveries/{r.json['id']}")
        assert dr.status_code == 200
    else:
        if role in SEES[kind]:
            # A participant sees the conversation, so a refusal reveals nothing: it says why.
            assert r.status_code == 403, (kind, role, r.status_code)
            assert r.json["message"].startswith("Only the sender"), r.json
        else:
            _same_as_missing(app, world, role, "GET", f"{API}/{{id}}/delivery", uid)
        owner = api(app, world, starter, "GET", f"{API}/{uid}/delivery").json["id"]
        _same_as_missing(app, world, role, "GET", "/api/deliveries/{id}", owner)


@pytest.mark.parametrize("role", ALL)
def test_delivery_progress_for_its_sender_and_administrators(
    app: Flask, world: World, db: Session, role: str, unchanged
) -> None:
    for kind in SEES:
        _delivery_progress_for_its_sender_and_administrators(
            app=app, world=world, db=db, role=role, kind=kind
        )
        unchanged(accepted=True)


@pytest.mark.parametrize("role", ALL)
def test_settings_are_for_administrators(app: Flask, world: World, role: str, unchanged) -> None:
    group_uid = api(app, world, "admin", "GET", "/api/configuration/feedbackRecipients").json["id"]
    get = api(app, world, role, "GET", "/api/configuration/feedbackRecipients")
    post = api(
        app,
        world,
        role,
        "POST",
        "/api/configuration/feedbackRecipients",
        data=group_uid,
        content_type="text/plain",
    )
    delete = api(app, world, role, "DELETE", "/api/configuration/feedbackRecipients")
    client = world.client(app, role)
    page = client.get("/settings")
    clear = client.post("/settings", data={"action": "clear"})
    if role == "anonymous":
        assert (get.status_code, post.status_code, delete.status_code) == (401, 401, 401)
        assert page.status_code == clear.status_code == 302
        unchanged()
    elif role == "admin":
        assert (get.status_code, post.status_code, delete.status_code) == (200, 200, 200)
        assert page.status_code == 200 and clear.status_code == 302
    else:
        assert get.status_code == 200
        assert (post.status_code, delete.status_code) == (403, 403)
        assert page.status_code == clear.status_code == 403
        unchanged()


@pytest.mark.parametrize("role", ROLES)
def test_tokens_are_personal(app: Flask, world: World, role: str) -> None:
    other = "admin" if role != "admin" else "sender"
    made = api(app, world, other, "POST", "/api/apiToken", json={"name": "mine"})
    assert made.status_code == 201
    token_uid, key = made.json["response"]["uid"], made.json["response"]["key"]
    listed = api(app, world, role, "GET", "/api/apiToken").get_data(as_text=True)
    assert token_uid not in listed
    if role == "admin":  # administrators may look at and revoke anyone's token, never its key
        seen = api(app, world, role, "GET", f"/api/apiToken/{token_uid}")
        assert seen.status_code == 200 and key not in seen.get_data(as_text=True)
        return
    _same_as_missing(app, world, role, "GET", "/api/apiToken/{id}", token_uid)
    _same_as_missing(app, world, role, "DELETE", "/api/apiToken/{id}", token_uid)
    assert api(app, world, other, "GET", f"/api/apiToken/{token_uid}").status_code == 200


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "/api/me"),
        ("GET", "/api/me/dashboard"),
        ("GET", API),
        ("POST", API),
        ("DELETE", f"{API}?mc=x"),
        ("POST", f"{API}/feedback?subject=x"),
        ("POST", f"{API}/read"),
        ("GET", "/api/userLookup?query=sec"),
        ("GET", "/api/userGroups"),
        ("GET", "/api/organisationUnits"),
        ("GET", "/api/apiToken"),
        ("GET", "/api/system/info"),
    ],
)
def test_anonymous_callers_get_401_everywhere(
    app: Flask, world: World, method: str, url: str
) -> None:
    r = api(app, world, "anonymous", method, url)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic")


@pytest.mark.parametrize("url", ["/", "/compose", "/feedback/new", "/settings"])
def test_anonymous_pages_send_to_sign_in(app: Flask, url: str) -> None:
    r = app.test_client().get(url)
    assert r.status_code == 302 and r.headers["Location"].startswith("/login")


# ---------------------------------------------------------------------------------------------
# Identifiers


def test_identifiers_are_random_and_no_internal_key_is_shown(app: Flask, world: World) -> None:
    uids = [new_uid() for _ in range(2000)]
    assert len(set(uids)) == len(uids) and all(is_uid(u) for u in uids)
    # No shared structure between consecutive identifiers (as a counter or a timestamp would).
    common = sum(a[:4] == b[:4] for a, b in itertools.pairwise(uids))
    assert common <= 2
    made = [
        api(
            app,
            world,
            "sender",
            "POST",
            API,
            json={"subject": "S", "text": "T", "users": [{"id": world.users["participant"].uid}]},
        ).json["id"]
        for _ in range(5)
    ]
    assert all(is_uid(u) for u in made)
    assert len({u[:3] for u in made}) > 1
    body = api(app, world, "participant", "GET", f"{API}?fields=*").get_data(as_text=True)
    # Every "id" in the answers is an 11-character uid, never an integer key.
    assert not re.search(r'"id":\s*\d', body)
