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
    assert r.status_code == 404  # recipients do not see delivery
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
        ({"subject": "", "text": "T", "users": [{"id": "x"}]}, 400, "Subject"),
        ({"subject": "S", "text": "T" * 10_001, "users": [{"id": "x"}]}, 400, "Text"),
        (
            {"subject": "S", "text": "T", "ouMode": "EVERYTHING", "users": [{"id": "x"}]},
            400,
            "ouMode",
        ),
        ([1, 2], 400, "JSON object"),
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


def test_malformed_json_is_400(client, people) -> None:
    r = client.post(
        "/api/messageConversations",
        data=b"{not json",
        content_type="application/json",
        headers=people["auth"]["nurse"],
    )
    assert r.status_code == 400 and "JSON" in r.json["message"]


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
    assert r.json == {"markedRead": []}
    # Nobody removes another user's copy.
    r = client.delete(f"/api/messageConversations/{uid}/{people['nurse'].uid}", headers=a["clerk"])
    assert r.status_code == 404
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


def test_user_lookup_searches_server_side(client, people) -> None:
    r = client.get("/api/userLookup?query=sesay", headers=people["auth"]["clerk"])
    assert [u["id"] for u in r.json["users"]] == [people["nurse"].uid]
    assert client.get("/api/userLookup?query=a", headers=people["auth"]["clerk"]).status_code == 400
