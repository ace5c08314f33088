"""Contract tests: the request and response examples of DHIS2's published Web API documentation
(developer manual: "Message conversations", "Settings and configuration", "Users" / user lookup,
"Personal access tokens", "Error and info messages"), replayed against this service.

Each test quotes the documentation's example it is built from, with the documentation's own ids.
Where the service deliberately differs (docs/dhis2-compatibility.md), the test says so.
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db import new_uid
from service.models import Conversation, Delivery, Inbox, Message, MessageType, User
from tests import factories as f
from tests.helpers import deliver


def user_with_uid(db: Session, uid: str, username: str, first: str | None = None, last=None):
    u = f.user(db, username, first_name=first, surname=last)
    u.uid = uid
    db.flush()
    return u


def documented_recipients(db: Session, group_uid: str) -> tuple[User, User]:
    """The documentation's users OYLGMiazHtW and N3PZBUlN8vq, a user group with `group_uid` and
    organisation unit DiszpKrYNg8, each group and unit with a member."""
    a = user_with_uid(db, "OYLGMiazHtW", "a")
    b = user_with_uid(db, "N3PZBUlN8vq", "b")
    group = f.user_group(db, "Group", (f.user(db),))
    group.uid = group_uid
    unit = f.org_unit(db, "Unit")
    unit.uid = "DiszpKrYNg8"
    f.user(db, units=(unit,))
    db.flush()
    return a, b


def conversation(db: Session, uid: str, sender: User, *recipients: User) -> Conversation:
    """A committed-looking private conversation with a fixed (documentation) id."""
    conv = Conversation(
        uid=uid,
        subject=f"Conversation {uid}",
        message_type=MessageType.PRIVATE.value,
        created_by_id=sender.id,
        last_sender_id=sender.id,
        public_last_sender_id=sender.id,
        message_count=1,
        public_message_count=1,
        participant_count=1 + len(recipients),
    )
    db.add(conv)
    db.flush()
    db.add(Message(conversation_id=conv.id, sender_id=sender.id, text="Hello"))
    row = {"last_activity_at": conv.public_last_message_at, "message_type": conv.message_type}
    db.add(Inbox(user_id=sender.id, conversation_id=conv.id, read=True, **row))
    db.add_all(Inbox(user_id=r.id, conversation_id=conv.id, read=False, **row) for r in recipients)
    db.flush()
    return conv


@pytest.fixture
def admin(db: Session, login_user):
    country = f.org_unit(db, "Sierra Leone")
    user = f.user(db, "admin", admin=True, units=(country,), first_name="John", surname="Traore")
    return user, login_user(user)


def test_send_with_the_documented_json_payload(client, db, admin, publisher) -> None:
    """Documented payload:

        {"subject": "Hey", "text": "How are you?",
         "users": [{"id": "OYLGMiazHtW"}, {"id": "N3PZBUlN8vq"}],
         "userGroups": [{"id": "ZoHNWQajIoe"}],
         "organisationUnits": [{"id": "DiszpKrYNg8"}]}

    "If all is well we receive a 201 Created HTTP status code. Also, note that we receive a
    Location HTTP header which value informs us of the URL of the newly created message
    conversation resource." (We add the id to the body; DHIS2 clients ignore it.)
    """
    _, auth = admin
    a, b = documented_recipients(db, group_uid="ZoHNWQajIoe")
    payload = {
        "subject": "Hey",
        "text": "How are you?",
        "users": [{"id": "OYLGMiazHtW"}, {"id": "N3PZBUlN8vq"}],
        "userGroups": [{"id": "ZoHNWQajIoe"}],
        "organisationUnits": [{"id": "DiszpKrYNg8"}],
    }
    r = client.post("/api/33/messageConversations", json=payload, headers=auth)
    assert r.status_code == 201
    assert (r.json["httpStatus"], r.json["httpStatusCode"], r.json["status"]) == (
        "Created",
        201,
        "OK",
    )
    uid = r.json["response"]["uid"]
    assert r.headers["Location"].endswith(f"/api/messageConversations/{uid}")
    deliver(db, db.scalar(select(Delivery.id).where(Delivery.uid == r.json["delivery"]["id"])))
    for user in (a, b):
        assert db.get(
            Inbox, (user.id, db.scalar(select(Conversation.id).where(Conversation.uid == uid)))
        )


def test_reply_with_a_plain_text_body_and_internal(client, db, admin, login_user) -> None:
    """Documented requests:

        curl -d "Yes the Mortality data set has been reported"
          "https://play.dhis2.org/demo/api/messageConversations/ZjHHSjyyeJ2"
          -H "Content-Type:text/plain" -u mobile:district -X POST

        curl -d "This is an internal message"
          "https://play.dhis2.org/demo/api/33/messageConversations/ZjHHSjyyeJ2?internal=true"
          -H "Content-Type:text/plain" -u admin:district -X POST

    The documentation says 200 OK; DHIS2's controller answers 201 Created with a web message,
    as we do. An internal reply exists on feedback only (a ticket here), for its handlers.
    """
    sender, admin_auth = admin
    mobile = f.user(db, "mobile")
    conversation(db, "ZjHHSjyyeJ2", sender, mobile)
    r = client.post(
        "/api/messageConversations/ZjHHSjyyeJ2",
        data="Yes the Mortality data set has been reported",
        content_type="text/plain",
        headers=login_user(mobile),
    )
    assert r.status_code == 201 and r.json["status"] == "OK"
    r = client.get("/api/messageConversations/ZjHHSjyyeJ2", headers=admin_auth)
    assert r.json["messages"][-1]["text"] == "Yes the Mortality data set has been reported"

    f.feedback_team(db, sender)
    r = client.post(
        "/api/messageConversations/feedback?subject=Ticket",
        data="Please help",
        content_type="text/plain",
        headers=login_user(mobile),
    )
    ticket = r.json["id"]
    r = client.post(
        f"/api/messageConversations/{ticket}?internal=true",
        data="This is an internal message",
        content_type="text/plain",
        headers=admin_auth,
    )
    assert r.status_code == 201
    r = client.get(f"/api/messageConversations/{ticket}", headers=login_user(mobile))
    assert [m["text"] for m in r.json["messages"]] == ["Please help"]


def test_query_string_searches_subject_text_and_senders(client, db, admin, login_user) -> None:
    """Documented: "queryString=?&queryOperator=? The filter searches for matches in subject,
    text, and senders for message conversations. The default query operator is token"."""
    sender, auth = admin
    other = f.user(db, "mobile", first_name="Kadiatu", surname="Bangura")
    conversation(db, "ZjHHSjyyeJ2", other, sender)
    for q in ("Conversation", "Hello", "Bangura", "hello+kadiatu"):
        r = client.get(f"/api/messageConversations?queryString={q}", headers=auth)
        assert [c["id"] for c in r.json["messageConversations"]] == ["ZjHHSjyyeJ2"], q
    r = client.get(
        "/api/messageConversations?queryString=hello+kadiatu&queryOperator=ilike", headers=auth
    )
    assert r.json["messageConversations"] == []


def test_mark_read_with_the_documented_ids(client, db, admin) -> None:
    """Documented request and answer:

    curl "https://play.dhis2.org/dev/api/messageConversations/read"
      -d '["ZrKML5WiyFm","Gc03smoTm6q"]' -X POST
      -H "Content-Type: application/json" -u admin:district

    {"markedRead": ["ZrKML5WiyFm", "Gc03smoTm6q"]}
    """
    me, auth = admin
    other = f.user(db)
    conversation(db, "ZrKML5WiyFm", other, me)
    conversation(db, "Gc03smoTm6q", other, me)
    r = client.post(
        "/api/messageConversations/read",
        data='["ZrKML5WiyFm","Gc03smoTm6q"]',
        content_type="application/json",
        headers=auth,
    )
    assert r.status_code == 200
    assert r.json == {"markedRead": ["ZrKML5WiyFm", "Gc03smoTm6q"]}
    r = client.post("/api/messageConversations/unread", json=["ZrKML5WiyFm"], headers=auth)
    assert r.json == {"markedUnread": ["ZrKML5WiyFm"]}
    assert client.get("/api/me/dashboard", headers=auth).json["unreadMessageConversations"] == 1


def test_remove_from_inbox_single_and_batch(client, db, admin) -> None:
    """Documented answers: on success `{"removed" : ["xE7jOejl9FI"]}`; "On failure the returned
    object will contain a message payload which describes the error":
    `{"message" : "No user with uid: dMV6G0tPAEa"}`. Batch:

        curl "https://play.dhis2.org/demo/api/messageConversations?mc=WzMRrCosqc0&mc=lxCjiigqrJm"
          -X DELETE -u admin:district

    DHIS2's controller lists the conversation ids removed, as we do. Removing on behalf of
    another user (`/{id}/{otherUser}`, `&user=`) is refused here (403) whatever the caller's
    authorities.
    """
    me, auth = admin
    other = f.user(db)
    for uid in ("jMe43trzrdi", "WzMRrCosqc0", "lxCjiigqrJm"):
        conversation(db, uid, other, me)
    r = client.delete(f"/api/messageConversations/jMe43trzrdi/{me.uid}", headers=auth)
    assert r.status_code == 200 and r.json == {"removed": ["jMe43trzrdi"]}
    r = client.delete("/api/messageConversations/jMe43trzrdi/dMV6G0tPAEa", headers=auth)
    assert r.status_code == 403 and r.json["message"]
    r = client.delete("/api/messageConversations?mc=WzMRrCosqc0&mc=lxCjiigqrJm", headers=auth)
    assert r.status_code == 200 and sorted(r.json["removed"]) == ["WzMRrCosqc0", "lxCjiigqrJm"]
    r = client.delete(f"/api/messageConversations?mc=WzMRrCosqc0&user={other.uid}", headers=auth)
    assert r.status_code == 403 and r.json["message"]
    assert client.get("/api/messageConversations", headers=auth).json["pager"]["total"] == 0


def test_add_recipients_with_the_documented_payload(client, db, admin, publisher) -> None:
    """Documented: "You can add recipients to an existing message conversation. The resource is
    located at: /api/33/messageConversations/id/recipients", with

        {"users": [{"id": "OYLGMiazHtW"}, {"id": "N3PZBUlN8vq"}],
         "userGroups": [{"id": "DiszpKrYNg8"}],
         "organisationUnits": [{"id": "DiszpKrYNg8"}]}

    (A user group and an organisation unit share an id: ids are unique per kind of object.)
    DHIS2 answers 204; we answer 202 Accepted with the delivery that adds them.
    """
    me, auth = admin
    a, b = documented_recipients(db, group_uid="DiszpKrYNg8")
    conv = conversation(db, new_uid(), me, f.user(db))
    r = client.post(
        f"/api/messageConversations/{conv.uid}/recipients",
        json={
            "users": [{"id": "OYLGMiazHtW"}, {"id": "N3PZBUlN8vq"}],
            "userGroups": [{"id": "DiszpKrYNg8"}],
            "organisationUnits": [{"id": "DiszpKrYNg8"}],
        },
        headers=auth,
    )
    assert r.status_code == 202, r.json
    deliver(db, publisher.sent[-1][1][0])
    assert db.get(Inbox, (a.id, conv.id)) is not None and db.get(Inbox, (b.id, conv.id)) is not None


def test_ticket_status_and_priority_values(client, db, admin, login_user) -> None:
    """Documented: `POST /api/messageConversations/<uid>/status` and `/priority`, with the values
    Status OPEN, PENDING, INVALID, SOLVED and Priority LOW, MEDIUM, HIGH. DHIS2's controller
    answers `{"<VALUE>": ["<uid>"]}`."""
    me, auth = admin
    f.feedback_team(db, me)
    r = client.post(
        "/api/messageConversations/feedback?subject=S",
        data="T",
        content_type="text/plain",
        headers=login_user(f.user(db)),
    )
    uid = r.json["id"]
    for status in ("OPEN", "PENDING", "INVALID", "SOLVED"):
        r = client.post(
            f"/api/messageConversations/{uid}/status?messageConversationStatus={status}",
            headers=auth,
        )
        assert r.status_code == 200 and r.json[status] == [uid]
    for priority in ("LOW", "MEDIUM", "HIGH"):
        r = client.post(
            f"/api/messageConversations/{uid}/priority?messageConversationPriority={priority}",
            headers=auth,
        )
        assert r.status_code == 200 and r.json[priority] == [uid]


def test_feedback_recipients_configuration(client, db, admin) -> None:
    """Documented: "GET POST DELETE /api/configuration/feedbackRecipients" and

    curl "localhost/api/configuration/feedbackRecipients" -d "wl5cDMuUhmF"
      -H "Content-Type:text/plain" -u admin:district
    """
    _, auth = admin
    group = f.user_group(db, "Feedback")
    group.uid = "wl5cDMuUhmF"
    db.flush()
    r = client.post(
        "/api/configuration/feedbackRecipients",
        data="wl5cDMuUhmF",
        content_type="text/plain",
        headers=auth,
    )
    assert r.status_code == 200
    assert client.get("/api/configuration/feedbackRecipients.json", headers=auth).json["id"] == (
        "wl5cDMuUhmF"
    )
    assert client.delete("/api/configuration/feedbackRecipients", headers=auth).status_code == 200
    assert client.get("/api/configuration/feedbackRecipients", headers=auth).json is None


def test_user_lookup_answers_as_documented(client, db, admin) -> None:
    """Documented:

    /api/userLookup?query=John
    {"users": [{"id": "DXyJmlo9rge", "username": "jbarnes", "firstName": "John",
                "surname": "Barnes", "displayName": "John Barnes"},
               {"id": "N3PZBUlN8vq", "username": "jkamara", "firstName": "John",
                "surname": "Kamara", "displayName": "John Kamara"}]}

    /api/userLookup/QqvaU7JjkUV
    {"id": "QqvaU7JjkUV", "username": "nkono", "firstName": "Thomas", "surname": "Nkono",
     "displayName": "Thomas Nkono"}
    """
    me, auth = admin
    me.first_name = "Jean"  # keep the administrator out of the "John" answer
    user_with_uid(db, "DXyJmlo9rge", "jbarnes", "John", "Barnes")
    user_with_uid(db, "N3PZBUlN8vq", "jkamara", "John", "Kamara")
    user_with_uid(db, "QqvaU7JjkUV", "nkono", "Thomas", "Nkono")
    r = client.get("/api/userLookup?query=John", headers=auth)
    assert r.json == {
        "users": [
            {
                "id": "DXyJmlo9rge",
                "username": "jbarnes",
                "firstName": "John",
                "surname": "Barnes",
                "displayName": "John Barnes",
            },
            {
                "id": "N3PZBUlN8vq",
                "username": "jkamara",
                "firstName": "John",
                "surname": "Kamara",
                "displayName": "John Kamara",
            },
        ]
    }
    r = client.get("/api/userLookup/QqvaU7JjkUV", headers=auth)
    assert r.json == {
        "id": "QqvaU7JjkUV",
        "username": "nkono",
        "firstName": "Thomas",
        "surname": "Nkono",
        "displayName": "Thomas Nkono",
    }


def test_personal_access_token_as_documented(client, admin) -> None:
    """Documented:

        POST https://play.dhis2.org/dev/api/apiToken
        Content-Type: application/json
        {}

        {"httpStatus": "Created", "httpStatusCode": 201, "status": "OK",
         "response": {"responseType": "ApiTokenCreationResponse",
                      "key": "d2pat_5xVA12xyUbWNedQxy4ohH77WlxRGVvZZ1151814092",
                      "uid": "jJYrtIVP7qU", "klass": "org.hisp.dhis.security.apikey.ApiToken",
                      "errorReports": []}}

    "The token itself consists of three parts: Prefix (d2pat_) ... Random bytes ... CRC32
    checksum (1151814092) ... padded with 0 so that it always stays ten characters long."

        GET https://play.dhis2.org/dev/api/apiToken/jJYrtIVP7qU
        Authorization: ApiToken d2pat_5xVA12xyUbWNedQxy4ohH77WlxRGVvZZ1151814092
        DELETE https://play.dhis2.org/dev/api/apiToken/jJYrtIVP7qU  (same header)
    """
    from service.api_tokens import well_formed

    assert well_formed("d2pat_5xVA12xyUbWNedQxy4ohH77WlxRGVvZZ1151814092")  # the docs' own key
    _, auth = admin
    r = client.post("/api/apiToken", data="{}", content_type="application/json", headers=auth)
    assert r.status_code == 201
    body = r.json
    assert (body["httpStatus"], body["httpStatusCode"], body["status"]) == ("Created", 201, "OK")
    response = body["response"]
    assert response["responseType"] == "ApiTokenCreationResponse"
    assert response["klass"] == "org.hisp.dhis.security.apikey.ApiToken"
    assert response["errorReports"] == []
    assert re.fullmatch(r"d2pat_[A-Za-z0-9]{32}[0-9]{10}", response["key"])
    token = {"Authorization": f"ApiToken {response['key']}", "Content-Type": "application/json"}
    r = client.get(f"/api/apiToken/{response['uid']}", headers=token)
    assert r.status_code == 200 and r.json["id"] == response["uid"]
    assert r.json["type"] == "PERSONAL_ACCESS_TOKEN" and isinstance(r.json["expire"], int)
    assert client.delete(f"/api/apiToken/{response['uid']}", headers=token).status_code == 200
    assert client.get("/api/me", headers=token).status_code == 401
    docs_key = {"Authorization": "ApiToken d2pat_5xVA12xyUbWNedQxy4ohH77WlxRGVvZZ1151814092"}
    assert client.get("/api/me", headers=docs_key).status_code == 401


def test_errors_are_web_messages(client, db, admin, login_user) -> None:
    """Documented ("Error and info messages"):

    {"httpStatus": "Forbidden",
     "message": "You don't have the proper permissions to read objects of this type.",
     "httpStatusCode": 403, "status": "ERROR"}
    """
    nurse = login_user(f.user(db))
    r = client.delete("/api/configuration/feedbackRecipients", headers=nurse)
    assert r.status_code == 403
    assert {k: r.json[k] for k in ("httpStatus", "httpStatusCode", "status")} == {
        "httpStatus": "Forbidden",
        "httpStatusCode": 403,
        "status": "ERROR",
    }
    assert isinstance(r.json["message"], str) and r.json["message"]
    for url, code, phrase in [
        ("/api/messageConversations/nosuchconv1", 404, "Not Found"),
        ("/api/messageConversations?filter=nope:eq:1", 400, "Bad Request"),
    ]:
        r = client.get(url, headers=nurse)
        assert (r.status_code, r.json["httpStatus"], r.json["status"]) == (code, phrase, "ERROR")
    r = client.post("/api/messageConversations", json={"subject": "S", "text": "T"}, headers=nurse)
    assert (r.status_code, r.json["message"]) == (409, "No recipients selected.")
