"""The JSON API through the real app: status codes, shapes, permissions, nothing half-written."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.models import Conversation, Delivery, Inbox, Message
from tests import factories as f
from tests.helpers import deliver
from tests.web.conftest import basic


def _count(db: Session, model: type) -> int:
    return db.scalar(select(func.count()).select_from(model))


@pytest.fixture
def people(db: Session, login_user):
    country = f.org_unit(db, "Country")
    district = f.org_unit(db, "District", country)
    facility = f.org_unit(db, "Facility", district)
    admin = f.user(db, "admin1", admin=True, units=(country,))
    handler = f.user(db, "handler1", units=(country,))
    nurse = f.user(db, "nurse1", units=(facility,), first_name="Fatmata", surname="Sesay")
    clerk = f.user(db, "clerk1", units=(facility,))
    stranger = f.user(db, "stranger1", units=(facility,))
    f.feedback_team(db, handler, admin)
    return {
        "country": country,
        "district": district,
        "facility": facility,
        "admin": admin,
        "handler": handler,
        "nurse": nurse,
        "clerk": clerk,
        "stranger": stranger,
        "auth": {
            name: login_user(u)
            for name, u in [
                ("admin", admin),
                ("handler", handler),
                ("nurse", nurse),
                ("clerk", clerk),
                ("stranger", stranger),
            ]
        },
    }


def test_requires_authentication(client) -> None:
    r = client.get("/api/messageConversations")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Basic")
    assert r.json["httpStatusCode"] == 401


def test_wrong_password_is_401(client, people) -> None:
    r = client.get("/api/me", headers=basic(people["nurse"], "wrong-password"))
    assert r.status_code == 401


def test_me_and_dashboard(client, people) -> None:
    r = client.get("/api/me", headers=people["auth"]["nurse"])
    assert r.status_code == 200 and r.json["id"] == people["nurse"].uid
    r = client.get("/api/me/dashboard.json", headers=people["auth"]["nurse"])
    assert r.json["unreadMessageConversations"] == 0


def test_send_returns_201_location_and_id_then_publishes(client, db, people, publisher) -> None:
    body = {
        "subject": "Stock",
        "text": "Please report",
        "organisationUnits": [{"id": people["district"].uid}],
        "ouMode": "DESCENDANTS",
    }
    r = client.post("/api/messageConversations", json=body, headers=people["auth"]["admin"])
    assert r.status_code == 201, r.json
    uid = r.json["id"]
    assert r.headers["Location"].endswith(f"/api/messageConversations/{uid}")
    assert r.json["response"]["uid"] == uid and r.json["status"] == "OK"
    conv = db.scalar(select(Conversation).where(Conversation.uid == uid))
    delivery = db.scalar(select(Delivery).where(Delivery.conversation_id == conv.id))
    assert publisher.sent == [("delivery.plan", (delivery.id,))]
    r = client.get(f"/api/messageConversations/{uid}/delivery", headers=people["auth"]["admin"])
    assert r.json == {
        "id": delivery.uid,
        "state": "QUEUED",
        "total": None,
        "delivered": 0,
        "failed": 0,
    }
    deliver(db, delivery.id)
    r = client.get(f"/api/messageConversations/{uid}/delivery", headers=people["auth"]["admin"])
    assert r.json["state"] == "DELIVERED" and r.json["total"] == 3 and r.json["delivered"] == 3
    r = client.get(f"/api/messageConversations/{uid}/delivery", headers=people["auth"]["nurse"])
    # Recipients see the conversation, not its delivery: refused, and said so.
    assert r.status_code == 403 and r.json["message"].startswith("Only the sender"), r.json
    r = client.get(f"/api/messageConversations/{uid}/delivery", headers=people["auth"]["handler"])
    assert r.status_code == 404  # not a participant: as if the conversation did not exist
    r = client.get("/api/messageConversations", headers=people["auth"]["nurse"])
    assert r.json["pager"]["total"] == 1
    item = r.json["messageConversations"][0]
    assert {k: item[k] for k in ("id", "subject", "messageType", "status", "priority", "read")} == {
        "id": uid,
        "subject": "Stock",
        "messageType": "PRIVATE",
        "status": "NONE",
        "priority": "NONE",
        "read": False,
    }
    assert item["lastSender"]["id"] == people["admin"].uid and item["messageCount"] == 1


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (
            {"subject": "S", "text": "T", "users": [{"id": "nosuchuser1"}]},
            409,
            "User does not exist",
        ),
        (
            {"subject": "S", "text": "T", "organisationUnits": [{"id": "nosuchunit1"}]},
            409,
            "Organisation unit does not exist",
        ),
        (
            {"subject": "S", "text": "T", "userGroups": [{"id": "nosuchgrp01"}]},
            404,
            "User group does not exist",
        ),
        ({"subject": "S", "text": "T"}, 409, "No recipients selected."),
        ({"subject": "S", "text": "T", "users": "abc"}, 400, "users"),
        ({"subject": "", "text": "T", "users": [{"id": "x"}]}, 400, "Subject is required."),
        ({"subject": 5, "text": "T", "users": [{"id": "x"}]}, 400, "Subject must be a string."),
        ({"subject": "S", "text": ["T"], "users": [{"id": "x"}]}, 400, "Text must be a string."),
        ({"subject": "S", "text": "T" * 10_001, "users": [{"id": "x"}]}, 400, "Text"),
        (
            {"subject": "S", "text": "T", "ouMode": "EVERYTHING", "users": [{"id": "x"}]},
            400,
            "ouMode",
        ),
        ([1, 2], 400, "JSON object"),
        (
            {"subject": "S", "text": "T", "users": [{"id": "x"}], "attachments": ["a1b2c3d4e5f"]},
            400,
            "Attachments are not supported",
        ),
    ],
)
def test_bad_sends_are_clear_4xx_and_write_nothing(
    client, db, people, body, status, needle
) -> None:
    before = (
        _count(db, Conversation),
        _count(db, Message),
        _count(db, Inbox),
        _count(db, Delivery),
    )
    r = client.post("/api/messageConversations", json=body, headers=people["auth"]["nurse"])
    assert r.status_code == status, r.json
    assert needle in r.json["message"] and r.json["status"] == "ERROR"
    assert (
        _count(db, Conversation),
        _count(db, Message),
        _count(db, Inbox),
        _count(db, Delivery),
    ) == before


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "The body is not valid JSON (UTF-8)."),
        (b"null", "The body must not be JSON null."),
    ],
)
def test_malformed_json_is_400_saying_what_is_wrong(client, people, data, message) -> None:
    r = client.post(
        "/api/messageConversations",
        data=data,
        content_type="application/json",
        headers=people["auth"]["nurse"],
    )
    assert r.status_code == 400 and r.json["message"] == message


def test_sending_outside_own_units_is_403_and_writes_nothing(client, db, people) -> None:
    before = _count(db, Conversation)
    body = {"subject": "S", "text": "T", "organisationUnits": [{"id": people["country"].uid}]}
    r = client.post("/api/messageConversations", json=body, headers=people["auth"]["nurse"])
    assert r.status_code == 403 and people["country"].uid in r.json["message"]
    assert _count(db, Conversation) == before


def test_reply_read_unread_and_strangers(client, db, people) -> None:
    a = people["auth"]
    r = client.post(
        "/api/messageConversations",
        headers=a["nurse"],
        json={"subject": "Hello", "text": "Hi", "users": [{"id": people["clerk"].uid}]},
    )
    uid = r.json["id"]
    deliver(db, db.scalar(select(Delivery.id).order_by(Delivery.id.desc()).limit(1)))
    r = client.post(
        f"/api/messageConversations/{uid}",
        data="Reply text",
        content_type="text/plain",
        headers=a["clerk"],
    )
    assert r.status_code == 201
    r = client.get(f"/api/messageConversations/{uid}", headers=a["nurse"])
    assert r.json["read"] is False and [m["text"] for m in r.json["messages"]] == [
        "Hi",
        "Reply text",
    ]
    assert r.json["participantCount"] == 2
    r = client.post("/api/messageConversations/read", json=[uid], headers=a["nurse"])
    assert r.json == {"markedRead": [uid]}
    assert (
        client.get("/api/me/dashboard", headers=a["nurse"]).json["unreadMessageConversations"] == 0
    )
    r = client.post("/api/messageConversations/unread", json=[uid], headers=a["nurse"])
    assert r.json == {"markedUnread": [uid]}
    # A stranger: 404 everywhere, and the ids they send are ignored.
    for method, url, kw in [
        ("get", f"/api/messageConversations/{uid}", {}),
        ("post", f"/api/messageConversations/{uid}", {"data": "x", "content_type": "text/plain"}),
        ("delete", f"/api/messageConversations/{uid}", {}),
        ("post", f"/api/messageConversations/{uid}/status?messageConversationStatus=SOLVED", {}),
    ]:
        assert getattr(client, method)(url, headers=a["stranger"], **kw).status_code == 404
    r = client.post("/api/messageConversations/read", json=[uid], headers=a["stranger"])
    assert r.status_code == 404 and r.json["message"].startswith("No MessageConversations found")
    # Nobody removes another user's copy, or marks it.
    r = client.delete(f"/api/messageConversations/{uid}/{people['nurse'].uid}", headers=a["clerk"])
    assert r.status_code == 403
    r = client.post(
        f"/api/messageConversations/read?user={people['nurse'].uid}", json=[uid], headers=a["clerk"]
    )
    assert r.status_code == 403
    r = client.delete(f"/api/messageConversations/{uid}/{people['clerk'].uid}", headers=a["clerk"])
    assert r.status_code == 200 and r.json == {"removed": [uid]}
    assert client.get("/api/messageConversations", headers=a["clerk"]).json["pager"]["total"] == 0


def test_feedback_flow_through_the_api(client, db, people) -> None:
    a = people["auth"]
    r = client.post(
        "/api/messageConversations/feedback?subject=No%20vaccine",
        data="Fridge broken",
        content_type="text/plain",
        headers=a["nurse"],
    )
    assert r.status_code == 201, r.json
    uid = r.json["id"]
    # Answered like a send: the id, not an announcement, and its (already finished) delivery.
    assert r.json["announcement"] is False and r.json["delivery"]["href"].endswith(
        f"/api/messageConversations/{uid}/delivery"
    )
    d = client.get(r.json["delivery"]["href"], headers=a["nurse"])
    assert d.status_code == 200 and d.json["state"] == "DELIVERED", d.json
    assert d.json["id"] == r.json["delivery"]["id"]
    r = client.get("/api/messageConversations?filter=messageType:eq:TICKET", headers=a["handler"])
    assert [c["id"] for c in r.json["messageConversations"]] == [uid]
    assert r.json["messageConversations"][0]["status"] == "OPEN"
    r = client.post(
        f"/api/messageConversations/{uid}/status?messageConversationStatus=PENDING",
        headers=a["handler"],
    )
    assert r.status_code == 200 and r.json["status"] == "PENDING"
    r = client.post(
        f"/api/messageConversations/{uid}/priority?messageConversationPriority=HIGH",
        headers=a["handler"],
    )
    assert r.json["priority"] == "HIGH"
    r = client.post(
        f"/api/messageConversations/{uid}?internal=true",
        data="Internal note",
        content_type="text/plain",
        headers=a["handler"],
    )
    assert r.status_code == 201
    # The sender sees neither the internal reply nor can triage.
    r = client.get(f"/api/messageConversations/{uid}", headers=a["nurse"])
    assert [m["text"] for m in r.json["messages"]] == ["Fridge broken"]
    assert r.json["messageCount"] == 1 and r.json["status"] == "PENDING"
    r = client.get("/api/messageConversations?queryString=Internal", headers=a["nurse"])
    assert r.json["pager"]["total"] == 0
    r = client.post(
        f"/api/messageConversations/{uid}/status?messageConversationStatus=SOLVED",
        headers=a["nurse"],
    )
    assert r.status_code == 403
    r = client.post(
        f"/api/messageConversations/{uid}?internal=true",
        data="x",
        content_type="text/plain",
        headers=a["nurse"],
    )
    assert r.status_code == 403
    r = client.get(f"/api/messageConversations/{uid}", headers=a["handler"])
    assert [m["internal"] for m in r.json["messages"]] == [False, True]
    r = client.get(
        "/api/messageConversations?filter=status:eq:PENDING&filter=priority:eq:HIGH",
        headers=a["admin"],
    )
    assert r.json["pager"]["total"] == 1
    r = client.post(
        f"/api/messageConversations/{uid}/status?messageConversationStatus=BOGUS",
        headers=a["handler"],
    )
    assert r.status_code == 400 and "messageConversationStatus" in r.json["message"]


def test_feedback_without_group_is_409(client, db, people) -> None:
    r = client.delete("/api/configuration/feedbackRecipients", headers=people["auth"]["admin"])
    assert r.status_code == 200
    r = client.post(
        "/api/messageConversations/feedback?subject=S",
        data="T",
        content_type="text/plain",
        headers=people["auth"]["nurse"],
    )
    assert r.status_code == 409 and "feedback recipients" in r.json["message"]
    assert (
        client.get("/api/configuration/feedbackRecipients", headers=people["auth"]["nurse"]).json
        is None
    )


def test_only_admins_configure_feedback_recipients(client, db, people) -> None:
    group = f.user_group(db, "Team")
    r = client.post(
        "/api/configuration/feedbackRecipients",
        data=group.uid,
        content_type="text/plain",
        headers=people["auth"]["nurse"],
    )
    assert r.status_code == 403
    r = client.post(
        "/api/configuration/feedbackRecipients",
        data=group.uid,
        content_type="text/plain",
        headers=people["auth"]["admin"],
    )
    assert r.status_code == 200
    r = client.get("/api/configuration/feedbackRecipients", headers=people["auth"]["nurse"])
    assert r.json["id"] == group.uid
    r = client.post(
        "/api/configuration/feedbackRecipients",
        data="nosuchgrp01",
        content_type="text/plain",
        headers=people["auth"]["admin"],
    )
    assert r.status_code == 404


def test_paging_parameters_are_validated(client, people) -> None:
    h = people["auth"]["nurse"]
    assert client.get("/api/messageConversations?pageSize=0", headers=h).status_code == 400
    assert client.get("/api/messageConversations?page=abc", headers=h).status_code == 400
    assert client.get("/api/messageConversations?filter=foo:eq:1", headers=h).status_code == 400
    r = client.get("/api/messageConversations?paging=false", headers=h)
    assert r.status_code == 200 and "pager" not in r.json


def test_session_writes_need_csrf_token(app, db, people) -> None:
    app.config["WTF_CSRF_ENABLED"] = True
    client = app.test_client()
    with client.session_transaction() as sess:
        sess["_user_id"] = people["nurse"].uid
        sess["_fresh"] = True
    assert client.get("/api/me").status_code == 200
    r = client.post("/api/messageConversations/read", json=[])
    assert r.status_code == 400 and "security token" in r.json["message"]


def test_cross_site_writes_with_basic_credentials_are_refused(client, db, people) -> None:
    """A browser given Basic credentials sends them with a forged cross-site form post too."""
    h = people["auth"]["nurse"]
    url = "/api/messageConversations/feedback?subject=S"
    before = db.scalar(select(func.count()).select_from(Conversation))
    for origin in ("http://evil.example", "null", "http://localhost.evil.example"):
        r = client.post(url, data="T", content_type="text/plain", headers={**h, "Origin": origin})
        assert r.status_code == 403 and r.json["field"] == "Origin", (origin, r.json)
    assert db.scalar(select(func.count()).select_from(Conversation)) == before
    # Reading cross-site is not forgery; scripts send no Origin; the site's own origin writes.
    r = client.get("/api/me", headers={**h, "Origin": "http://evil.example"})
    assert r.status_code == 200
    assert client.post(url, data="T", content_type="text/plain", headers=h).status_code == 201
    r = client.post(
        url, data="T", content_type="text/plain", headers={**h, "Origin": "http://localhost"}
    )
    assert r.status_code == 201, r.json


@pytest.mark.parametrize(
    "url", ["/api/messageConversations/feedback?subject=S", "/api/messageConversations/{uid}"]
)
def test_a_form_encoded_text_body_is_400_saying_what_to_send(client, db, people, url) -> None:
    h = people["auth"]["nurse"]
    r = client.post(
        "/api/messageConversations",
        json={"subject": "S", "text": "T", "users": [{"id": people["clerk"].uid}]},
        headers=h,
    )
    before = db.scalar(select(func.count()).select_from(Message))
    r = client.post(
        url.format(uid=r.json["id"]),
        data="The fridge is broken",
        content_type="application/x-www-form-urlencoded",
        headers=h,
    )
    assert r.status_code == 400 and r.json["field"] == "Content-Type", r.json
    assert "text/plain" in r.json["message"]
    assert db.scalar(select(func.count()).select_from(Message)) == before


def test_user_lookup_searches_server_side(client, people) -> None:
    r = client.get("/api/userLookup?query=sesay", headers=people["auth"]["clerk"])
    assert [u["id"] for u in r.json["users"]] == [people["nurse"].uid]
    assert client.get("/api/userLookup?query=a", headers=people["auth"]["clerk"]).status_code == 400


# ---------------------------------------------------------------------------------------------
# Listing: DHIS2 filters, search, order, fields, paging


@pytest.fixture
def inbox(client, db, people):
    """The handler's inbox: two private messages and three feedback tickets in various states."""
    a = people["auth"]
    uids = {}
    for name, subject in (("m1", "Malaria stock"), ("m2", "Reporting deadline")):
        r = client.post(
            "/api/messageConversations",
            json={
                "subject": subject,
                "text": f"{subject} text",
                "users": [{"id": people["handler"].uid}],
            },
            headers=a["nurse"],
        )
        uids[name] = r.json["id"]
        deliver(db, db.scalar(select(Delivery.id).where(Delivery.uid == r.json["delivery"]["id"])))
    for name, subject in (("t1", "Cold chain"), ("t2", "Zinc supply"), ("t3", "Broken scale")):
        r = client.post(
            f"/api/messageConversations/feedback?subject={subject}",
            data=f"{subject} details",
            content_type="text/plain",
            headers=a["clerk"],
        )
        uids[name] = r.json["id"]
    h = a["handler"]
    client.post(
        f"/api/messageConversations/{uids['t2']}/status?messageConversationStatus=PENDING",
        headers=h,
    )
    client.post(
        f"/api/messageConversations/{uids['t2']}/priority?messageConversationPriority=HIGH",
        headers=h,
    )
    client.post(
        f"/api/messageConversations/{uids['t3']}/priority?messageConversationPriority=MEDIUM",
        headers=h,
    )
    r = client.post(
        f"/api/messageConversations/{uids['t2']}/assign?userId={people['handler'].uid}", headers=h
    )
    assert r.status_code == 200, r.json
    r = client.post(
        f"/api/messageConversations/{uids['t1']}?internal=true",
        data="secret budget line",
        content_type="text/plain",
        headers=h,
    )
    assert r.status_code == 201
    return uids


def _ids(r) -> list[str]:
    assert r.status_code == 200, r.json
    return [c["id"] for c in r.json["messageConversations"]]


LIST_CASES = [
    ("filter=messageType:eq:TICKET", {"t1", "t2", "t3"}),
    ("filter=messageType:eq:TICKET&filter=status:eq:OPEN", {"t1", "t3"}),
    ("filter=priority:in:[HIGH,MEDIUM]", {"t2", "t3"}),
    ("filter=messageType:!eq:TICKET", {"m1", "m2"}),
    ("filter=status:!in:[NONE,OPEN]", {"t2"}),
    ("filter=assignee.id:eq:{handler}", {"t2"}),
    ("filter=assignee.id:null&filter=messageType:eq:TICKET", {"t1", "t3"}),
    ("filter=assignee.id:!null", {"t2"}),
    ("assignedToMe=true", {"t2"}),
    ("filter=read:eq:true", {"t1"}),
    ("filter=read:eq:false&filter=messageType:eq:PRIVATE", {"m1", "m2"}),
    ("filter=followUp:eq:false", {"m1", "m2", "t1", "t2", "t3"}),
    ("queryString=zinc", {"t2"}),
    ("queryString=secret", {"t1"}),
    ("queryString=details+chain", {"t1"}),
    ("queryString=details+chain&queryOperator=ilike", set()),
    ("queryString=chain+details&queryOperator=ilike", {"t1"}),
    ("queryString=Sesay", {"m1", "m2"}),  # the nurse's name
]


def test_list_filters_as_dhis2(client, people, inbox) -> None:
    for query, expected in LIST_CASES:
        query = query.replace("{handler}", people["handler"].uid)
        r = client.get(f"/api/messageConversations?{query}", headers=people["auth"]["handler"])
        assert set(_ids(r)) == {inbox[k] for k in expected}, query
        assert r.json["pager"]["total"] == len(expected), query


def test_feedback_writer_cannot_find_internal_text_or_assignee(client, people, inbox) -> None:
    h = people["auth"]["clerk"]
    assert _ids(client.get("/api/messageConversations?queryString=secret", headers=h)) == []
    r = client.get(
        f"/api/messageConversations?filter=assignee.id:eq:{people['handler'].uid}", headers=h
    )
    assert _ids(r) == []
    r = client.get("/api/messageConversations?fields=id,assignee,messages[text]", headers=h)
    for conv in r.json["messageConversations"]:
        assert conv.get("assignee") is None
        assert "secret budget line" not in [m["text"] for m in conv["messages"]]
    r = client.get(f"/api/messageConversations/{inbox['t1']}?fields=*", headers=h)
    assert [m["text"] for m in r.json["messages"]] == ["Cold chain details"]
    assert r.json["lastSender"]["id"] == people["clerk"].uid and r.json["messageCount"] == 1


def test_order_paging_and_totals(client, people, inbox) -> None:
    h = people["auth"]["handler"]
    r = client.get("/api/messageConversations?order=subject:asc&fields=subject", headers=h)
    subjects = [c["subject"] for c in r.json["messageConversations"]]
    assert subjects == sorted(subjects, key=str.lower)
    assert r.json["messageConversations"][0] == {"subject": "Broken scale"}
    r = client.get("/api/messageConversations?order=subject:desc", headers=h)
    assert _ids(r)[0] == inbox["t2"]
    r = client.get(
        "/api/messageConversations?filter=messageType:eq:TICKET&order=priority:desc", headers=h
    )
    assert _ids(r) == [inbox["t2"], inbox["t3"], inbox["t1"]]
    newest = _ids(client.get("/api/messageConversations", headers=h))
    oldest = _ids(client.get("/api/messageConversations?order=lastMessage:asc", headers=h))
    assert oldest == list(reversed(newest))
    seen = []
    for page in (1, 2, 3):
        r = client.get(f"/api/messageConversations?page={page}&pageSize=2", headers=h)
        assert r.json["pager"] == {"page": page, "pageCount": 3, "total": 5, "pageSize": 2}
        seen += _ids(r)
    assert seen == newest
    r = client.get("/api/messageConversations?paging=false&filter=priority:eq:HIGH", headers=h)
    assert "pager" not in r.json and _ids(r) == [inbox["t2"]]


def test_fields_selection_nested(client, people, inbox) -> None:
    h = people["auth"]["handler"]
    r = client.get(
        "/api/messageConversations?filter=messageType:eq:TICKET&order=subject:asc"
        "&fields=id,subject,lastSender[id],messages[text,sender[id,displayName]]",
        headers=h,
    )
    first = r.json["messageConversations"][0]
    assert set(first) == {"id", "subject", "lastSender", "messages"}
    assert first["lastSender"] == {"id": people["clerk"].uid}
    assert first["messages"] == [
        {
            "text": "Broken scale details",
            "sender": {"id": people["clerk"].uid, "displayName": "clerk1"},
        }
    ]
    # Handlers see internal replies through fields too.
    r = client.get(
        f"/api/messageConversations/{inbox['t1']}?fields=messages[text,internal],!read",
        headers=h,
    )
    assert r.json == {
        "messages": [
            {"text": "Cold chain details", "internal": False},
            {"text": "secret budget line", "internal": True},
        ]
    }
    r = client.get(f"/api/messageConversations/{inbox['t1']}.json?fields=*,!messages", headers=h)
    assert "messages" not in r.json and r.json["id"] == inbox["t1"]
    assert (
        client.get("/api/messageConversations?fields=id,messages[text", headers=h).status_code
        == 400
    )


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("filter=subject:eq:x", "'subject'"),
        ("filter=status:like:OPEN", "'like'"),
        ("filter=status", "operator"),
        ("filter=status:eq:CLOSED", "status"),
        ("filter=read:eq:maybe", "read"),
        ("filter=priority:in:[HIGH,]", "empty"),
        ("filter=assignee.id:null:x", "no value"),
        ("order=sender:asc", "'sender'"),
        ("order=subject:sideways", "direction"),
        ("queryOperator=regex&queryString=x", "queryOperator"),
        ("rootJunction=OR", "rootJunction"),
    ],
)
def test_bad_list_parameters_are_400_naming_them(client, people, query, needle) -> None:
    r = client.get(f"/api/messageConversations?{query}", headers=people["auth"]["nurse"])
    assert r.status_code == 400, r.json
    assert needle in r.json["message"] and r.json["status"] == "ERROR"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        # Repeated enough, these built statements the database refused (a 500) before.
        ("&".join(["filter=status:eq:OPEN"] * 1000), "filter"),
        ("&".join(["filter=status:eq:OPEN"] * 21), "filter"),
        ("&".join(["order=subject:asc"] * 2000), "order"),
        ("order=" + ",".join(["subject:asc"] * 12), "order"),
        ("filter=priority:in:[" + ",".join(["HIGH"] * 101) + "]", "filter"),
        ("queryString=" + "+".join(["w"] * 11), "queryString"),
    ],
)
def test_list_parameters_past_their_limits_are_400_naming_them(
    client, people, query, field
) -> None:
    r = client.get(f"/api/messageConversations?{query}", headers=people["auth"]["nurse"])
    assert r.status_code == 400, r.json
    assert r.json["field"] == field and "at most" in r.json["message"].lower()


def test_list_parameters_at_their_limits_are_answered(client, people) -> None:
    query = "&".join(
        [
            *["filter=status:!null"] * 19,
            "filter=priority:in:[" + ",".join(["HIGH"] * 100) + "]",
            "order=" + ",".join(["subject:asc"] * 11),
            "queryString=" + "+".join(["w"] * 10),
        ]
    )
    r = client.get(f"/api/messageConversations?{query}", headers=people["auth"]["nurse"])
    assert r.status_code == 200, r.json
    assert r.json["pager"]["total"] == 0


# ---------------------------------------------------------------------------------------------
# Actions


def test_triage_answers_in_dhis2_shapes(client, people, inbox) -> None:
    h = people["auth"]["handler"]
    t1 = inbox["t1"]
    r = client.post(
        f"/api/messageConversations/{t1}/status?messageConversationStatus=SOLVED", headers=h
    )
    assert r.status_code == 200 and r.json["SOLVED"] == [t1]
    r = client.post(
        f"/api/messageConversations/{t1}/priority?messageConversationPriority=LOW", headers=h
    )
    assert r.json["LOW"] == [t1]
    r = client.post(
        f"/api/messageConversations/{t1}/assign?userId={people['nurse'].uid}", headers=h
    )
    assert r.status_code == 409 and "feedback recipients" in r.json["message"]
    r = client.post(f"/api/messageConversations/{t1}/assign?userId=nosuchuser1", headers=h)
    assert r.status_code == 404
    r = client.post(
        f"/api/messageConversations/{t1}/assign?userId={people['admin'].uid}", headers=h
    )
    assert r.status_code == 200 and r.json["message"].endswith("was assigned successfully")
    r = client.delete(f"/api/messageConversations/{t1}/assign", headers=h)
    assert r.json["message"] == "Message is no longer assigned to user"
    # The feedback writer may not triage, nor assign.
    r = client.post(
        f"/api/messageConversations/{t1}/assign?userId={people['admin'].uid}",
        headers=people["auth"]["clerk"],
    )
    assert r.status_code == 403


def test_followup_read_unread_and_remove_for_the_caller_only(client, people, inbox) -> None:
    h = people["auth"]["handler"]
    m1, m2 = inbox["m1"], inbox["m2"]
    r = client.post("/api/messageConversations/followup", json=[m1, "nosuchconv1"], headers=h)
    assert r.json == {"markedFollowup": [m1]}
    assert _ids(client.get("/api/messageConversations?filter=followUp:eq:true", headers=h)) == [m1]
    r = client.post("/api/messageConversations/unfollowup", json=[m1], headers=h)
    assert r.json == {"unmarkedFollowup": [m1]}
    r = client.post(f"/api/messageConversations/{m1}/read", headers=h)
    assert r.json == {"markedRead": [m1]}
    r = client.post(f"/api/messageConversations/{m1}/unread", headers=h)
    assert r.json == {"markedUnread": [m1]}
    r = client.get(f"/api/messageConversations/{m1}?markRead=true&fields=read", headers=h)
    assert r.json == {"read": True}
    # The nurse wrote m1: her copy is untouched by the handler's changes.
    nurse = people["auth"]["nurse"]
    assert client.get(f"/api/messageConversations/{m1}", headers=nurse).json["followUp"] is False
    r = client.delete(f"/api/messageConversations?mc={m1}&mc={m2}&mc=nosuchconv1", headers=h)
    assert r.status_code == 200 and sorted(r.json["removed"]) == sorted([m1, m2])
    r = client.delete(f"/api/messageConversations?mc={m1}", headers=nurse)
    assert r.json == {"removed": [m1]}
    r = client.delete(
        f"/api/messageConversations?mc={m2}&user={people['handler'].uid}", headers=nurse
    )
    assert r.status_code == 403
    r = client.delete("/api/messageConversations?mc=nosuchconv1", headers=nurse)
    assert r.status_code == 404
    assert (
        _ids(client.get("/api/messageConversations?filter=messageType:eq:PRIVATE", headers=h)) == []
    )


def test_growing_a_discussion_past_the_announcement_threshold_needs_discussion_true(
    app, client, db, people, publisher
) -> None:
    """A new message that large would be an announcement; adding people must not turn a small
    discussion into a reply-all storm behind the sender's back."""
    a = people["auth"]
    crowd = [f.user(db) for _ in range(4)]
    group = f.user_group(db, members=tuple(crowd))
    r = client.post(
        "/api/messageConversations",
        json={"subject": "S", "text": "T", "users": [{"id": people["clerk"].uid}]},
        headers=a["nurse"],
    )
    uid = r.json["id"]
    deliver(db, db.scalar(select(Delivery.id).where(Delivery.uid == r.json["delivery"]["id"])))
    threshold = app.extensions["settings"].announcement_threshold
    assert threshold >= 4
    # Enough people to pass the threshold: the group, plus users up to it.
    extra = [f.user(db) for _ in range(threshold - 3)]
    body = {"userGroups": [{"id": group.uid}], "users": [{"id": u.uid} for u in extra]}
    before = db.scalar(select(func.count()).select_from(Delivery))
    r = client.post(f"/api/messageConversations/{uid}/recipients", json=body, headers=a["nurse"])
    assert r.status_code == 409 and r.json["field"] == "discussion", r.json
    assert db.scalar(select(func.count()).select_from(Delivery)) == before
    # People already in it do not count: the clerk again, and the group, stay within it.
    small = {"userGroups": [{"id": group.uid}], "users": [{"id": people["clerk"].uid}]}
    r = client.post(f"/api/messageConversations/{uid}/recipients", json=small, headers=a["nurse"])
    assert r.status_code == 202, r.json
    deliver(db, publisher.sent[-1][1][0])
    r = client.post(
        f"/api/messageConversations/{uid}/recipients",
        json={**body, "discussion": "yes"},
        headers=a["nurse"],
    )
    assert r.status_code == 400 and r.json["field"] == "discussion"
    r = client.post(
        f"/api/messageConversations/{uid}/recipients",
        json={**body, "discussion": True},
        headers=a["nurse"],
    )
    assert r.status_code == 202, r.json
    deliver(db, publisher.sent[-1][1][0])
    conv = db.scalar(select(Conversation).where(Conversation.uid == uid))
    db.refresh(conv)
    assert conv.participant_count == 2 + 4 + len(extra) and not conv.is_announcement


def test_add_recipients_goes_through_a_delivery(client, db, people, publisher) -> None:
    a = people["auth"]
    r = client.post(
        "/api/messageConversations",
        json={"subject": "Stock", "text": "Count it", "users": [{"id": people["clerk"].uid}]},
        headers=a["nurse"],
    )
    uid = r.json["id"]
    deliver(db, db.scalar(select(Delivery.id).where(Delivery.uid == r.json["delivery"]["id"])))
    publisher.sent.clear()
    # A stranger cannot add people to a conversation they are not in.
    body = {"users": [{"id": people["stranger"].uid}]}
    r = client.post(f"/api/messageConversations/{uid}/recipients", json=body, headers=a["stranger"])
    assert r.status_code == 404 and publisher.sent == []
    r = client.post(
        f"/api/messageConversations/{uid}/recipients", json={"users": []}, headers=a["clerk"]
    )
    assert r.status_code == 409 and r.json["message"] == "No recipients selected."
    r = client.post(
        f"/api/messageConversations/{uid}/recipients",
        json={"users": [{"id": "nosuchuser1"}]},
        headers=a["clerk"],
    )
    assert r.status_code == 409
    r = client.post(
        f"/api/messageConversations/{uid}/recipients",
        json={"organisationUnits": [{"id": people["country"].uid}]},
        headers=a["clerk"],
    )
    assert r.status_code == 403  # outside the clerk's own units
    r = client.post(f"/api/messageConversations/{uid}/recipients", json=body, headers=a["clerk"])
    assert r.status_code == 202, r.json
    delivery_id = db.scalar(select(Delivery.id).where(Delivery.uid == r.json["delivery"]["id"]))
    assert publisher.sent == [("delivery.plan", (delivery_id,))]
    # Nothing reached the new recipient before the workers ran.
    assert client.get(f"/api/messageConversations/{uid}", headers=a["stranger"]).status_code == 404
    deliver(db, delivery_id)
    r = client.get(f"/api/messageConversations/{uid}", headers=a["stranger"])
    assert r.status_code == 200 and r.json["read"] is False
    assert (
        client.get(f"/api/messageConversations/{uid}", headers=a["nurse"]).json["participantCount"]
        == 3
    )
    # Feedback takes no extra recipients.
    r = client.post(
        "/api/messageConversations/feedback?subject=S",
        data="T",
        content_type="text/plain",
        headers=a["clerk"],
    )
    r = client.post(
        f"/api/messageConversations/{r.json['id']}/recipients", json=body, headers=a["clerk"]
    )
    assert r.status_code == 409


# ---------------------------------------------------------------------------------------------
# Personal access tokens


def test_api_tokens_create_use_list_and_revoke(client, db, people) -> None:
    nurse = people["auth"]["nurse"]
    r = client.post("/api/apiToken", json={"name": "sync"}, headers=nurse)
    assert r.status_code == 201, r.json
    assert r.json["response"]["responseType"] == "ApiTokenCreationResponse"
    key, uid = r.json["response"]["key"], r.json["response"]["uid"]
    token = {"Authorization": f"ApiToken {key}"}
    r = client.get("/api/me", headers=token)
    assert r.status_code == 200 and r.json["id"] == people["nurse"].uid
    # Writes need no CSRF token with an API token; the token cannot make more tokens.
    r = client.post(
        "/api/messageConversations",
        json={"subject": "S", "text": "T", "users": [{"id": people["clerk"].uid}]},
        headers=token,
    )
    assert r.status_code == 201
    assert client.post("/api/apiToken", json={}, headers=token).status_code == 403
    listed = client.get("/api/apiToken", headers=nurse).json["apiToken"]
    assert [t["id"] for t in listed] == [uid] and "key" not in listed[0]
    # Others neither see nor revoke it.
    assert client.get(f"/api/apiToken/{uid}", headers=people["auth"]["clerk"]).status_code == 404
    assert client.delete(f"/api/apiToken/{uid}", headers=people["auth"]["clerk"]).status_code == 404
    assert client.delete(f"/api/apiToken/{uid}", headers=nurse).status_code == 200
    r = client.get("/api/me", headers=token)
    assert r.status_code == 401 and "token" in r.json["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"expire": 1000}, "expire"),
        ({"expire": "tomorrow"}, "expire"),
        ({"expire": 10**20}, "expire"),
        ({"attributes": [{"type": "IpAllowedList", "allowedIps": ["1.2.3.4"]}]}, "attributes"),
    ],
)
def test_bad_token_requests_are_400(client, people, body, field) -> None:
    r = client.post("/api/apiToken", json=body, headers=people["auth"]["nurse"])
    assert r.status_code == 400 and r.json["field"] == field


def test_garbage_token_is_401(client, people) -> None:
    r = client.get("/api/me", headers={"Authorization": "ApiToken d2pat_nonsense"})
    assert r.status_code == 401
