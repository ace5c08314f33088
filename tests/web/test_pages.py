"""The server-rendered pages, through Flask's test client, as different users, on PostgreSQL and
SQLite. Each request's session is a savepoint on the test's connection, so the views' own commits
are real and still rolled back with the test. The broker is replaced by a recording publisher.

Every HTML page a test fetches through `page()` is checked for one h1 matching the title, no
duplicate ids, a label on every control and a CSRF token in every POST form.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from markupsafe import Markup
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from service import delivery as delivery_svc
from service import feedback as fb
from service import messaging as msg
from service.config import Settings
from service.models import (
    Conversation,
    Delivery,
    Inbox,
    OrgUnit,
    User,
    UserGroup,
    user_group_members,
)
from service.passwords import hash_password
from service.system_settings import feedback_group
from tests import factories as f
from tests.helpers import deliver
from web import create_app
from web.pages import linkify, safe_next

PASSWORD = "correct horse 1"
# bcrypt's cheapest cost: these tests check the flow, not the hash's strength.
PASSWORD_HASH = hash_password(PASSWORD, rounds=4)


class RecordingPublisher:
    """The broker boundary: remembers what would have been published."""

    def __init__(self) -> None:
        self.published: list[tuple[Any, ...]] = []

    def publish(self, name: str, *args: int) -> bool:
        self.published.append((name, *args))
        return True


# ---------------------------------------------------------------------------------------------
# An HTML checker: the shape every page must have


class PageChecker(HTMLParser):
    CONTROLS = frozenset({"input", "select", "textarea"})
    UNLABELLED_INPUTS = frozenset({"hidden", "submit", "button", "reset", "image"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: list[str] = []
        self.h1: list[str] = []
        self.title = ""
        self.label_for: set[str] = set()
        self.controls: list[dict[str, str | None]] = []
        self.forms: list[dict[str, Any]] = []
        self._in: list[str] = []
        self._label_depth = 0
        self._text_target: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.append(a["id"] or "")
        if tag == "label":
            self._label_depth += 1
            if a.get("for"):
                self.label_for.add(a["for"] or "")
        if tag == "h1":
            self.h1.append("")
            self._text_target = "h1"
        if tag == "title":
            self._text_target = "title"
        if tag == "form":
            self.forms.append({"method": (a.get("method") or "get").lower(), "csrf": False})
        if tag in self.CONTROLS:
            kind = (a.get("type") or "text").lower() if tag == "input" else tag
            if tag == "input" and a.get("name") == "csrf_token" and self.forms:
                self.forms[-1]["csrf"] = True
            if kind not in self.UNLABELLED_INPUTS:
                self.controls.append({**a, "_wrapped": "1" if self._label_depth else None})

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self._label_depth -= 1
        if tag in ("h1", "title"):
            self._text_target = None

    def handle_data(self, data: str) -> None:
        if self._text_target == "h1":
            self.h1[-1] += data
        elif self._text_target == "title":
            self.title += data


def check_page(html: str) -> PageChecker:
    p = PageChecker()
    p.feed(html)
    dupes = {i for i in p.ids if p.ids.count(i) > 1}
    assert not dupes, f"duplicate ids: {dupes}"
    assert len(p.h1) == 1, f"expected one h1, got {p.h1}"
    h1 = " ".join(p.h1[0].split())
    title = " ".join(p.title.split()).rsplit(" — ", 1)[0]
    assert h1 == title, f"h1 {h1!r} does not match title {title!r}"
    for c in p.controls:
        labelled = c.get("id") in p.label_for or c.get("aria-label") or c.get("_wrapped")
        assert labelled, f"control without a label: {c}"
    for form in p.forms:
        if form["method"] == "post":
            assert form["csrf"], "a POST form without its CSRF token"
    return p


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def make_app(db: Session, publisher: RecordingPublisher, tmp_path: Path) -> Callable[..., Flask]:
    def build(**settings: Any) -> Flask:
        url = db.get_bind().engine.url.render_as_string(hide_password=False)
        base = Settings(
            env="test", data_dir=tmp_path, database_url=url, broker_url="memory://", secret_key="x"
        )
        app = create_app(
            base.with_(**settings),
            # The request's session is a savepoint on the test's connection: its commit is real
            # for the rest of the test and rolled back with it.
            session_factory=lambda: Session(
                bind=db.connection(),
                join_transaction_mode="create_savepoint",
                expire_on_commit=False,
            ),
            publisher=publisher,
        )
        app.config.update(TESTING=True, WTF_CSRF_ENABLED=False)
        return app

    return build


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


def person(db: Session, username: str | None = None, **kwargs: Any) -> User:
    """A user who can sign in with PASSWORD."""
    u = f.user(db, username, **kwargs)
    u.password_hash = PASSWORD_HASH
    db.flush()
    return u


def signed_in(app: Flask, user: User) -> FlaskClient:
    """A client of its own, signed in through the sign-in form."""
    client = app.test_client()
    resp = client.post("/login", data={"username": user.username, "password": PASSWORD})
    assert resp.status_code == 302, resp.text
    return client


def page(client: FlaskClient, url: str, status: int = 200) -> str:
    resp = client.get(url)
    assert resp.status_code == status, (resp.status_code, resp.text[:2000])
    html = resp.get_data(as_text=True)
    check_page(html)
    return html


def checked(resp: TestResponse, status: int) -> str:
    assert resp.status_code == status, (resp.status_code, resp.text[:2000])
    html = resp.get_data(as_text=True)
    check_page(html)
    return html


def tabs(html: str) -> str:
    """The inbox's folder tabs."""
    m = re.search(r'<nav class="tabs".*?</nav>', html, re.S)
    assert m, "no folder tabs"
    return m.group(0)


def flashes(client: FlaskClient) -> str:
    return page(client, "/")


def csrf_from(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "no CSRF token on the page"
    return m.group(1)


def row(db: Session, user: User, conv_uid: str) -> Inbox | None:
    db.expire_all()
    conv = db.scalar(select(Conversation).where(Conversation.uid == conv_uid))
    assert conv is not None
    return db.get(Inbox, (user.id, conv.id))


def sent_to(db: Session, sender: User, *recipients: User, subject: str = "Hello", text: str = "Hi"):
    sent = msg.send_message(
        db, sender, subject, text, msg.Recipients(users=[r.uid for r in recipients])
    )
    deliver(db, sent.delivery.id)
    return sent.conversation


def team_and_feedback(db: Session) -> tuple[User, User, User, Conversation]:
    """Two feedback handlers, a writer, and the writer's feedback "Scale"."""
    h1, h2 = person(db), person(db)
    f.feedback_team(db, h1, h2)
    writer = person(db)
    return h1, h2, writer, fb.send_feedback(db, writer, "Scale", "Broken")


@pytest.fixture
def tree(db: Session) -> dict[str, OrgUnit]:
    country = f.org_unit(db, "Sierra Leone")
    district = f.org_unit(db, "Bo", country)
    other = f.org_unit(db, "Kenema", country)
    facility = f.org_unit(db, "Bo Govt. Hospital", district)
    return {"country": country, "district": district, "other": other, "facility": facility}


# ---------------------------------------------------------------------------------------------
# Signing in and out


def test_login_page_signs_in_and_out(db: Session, app: Flask) -> None:
    ama = person(db, "ama", first_name="Ama", surname="Kamara")
    client = app.test_client()
    html = page(client, "/login")
    assert 'name="username"' in html and 'type="password"' in html
    resp = client.post("/login", data={"username": "ama", "password": PASSWORD})
    assert resp.status_code == 302 and resp.headers["Location"] == "/"
    html = page(client, "/")
    assert "Ama Kamara" in html and "Sign out" in html
    assert client.get("/logout").status_code == 405  # signing out is a POST
    resp = client.post("/logout")
    assert resp.status_code == 302 and resp.headers["Location"] == "/login"
    assert "You have signed out." in page(client, "/login")
    assert client.get("/").status_code == 302
    assert ama.uid


def test_failed_login_says_so_and_keeps_the_username(db: Session, app: Flask) -> None:
    person(db, "ama")
    client = app.test_client()
    html = checked(client.post("/login", data={"username": "ama", "password": "wrong-one"}), 422)
    assert "The username or password is not right" in html
    assert 'value="ama"' in html
    assert "wrong-one" not in html  # the password is never sent back
    html = checked(client.post("/login", data={"username": "", "password": ""}), 422)
    assert 'id="username-error"' in html and "Enter your username." in html
    assert 'id="password-error"' in html
    disabled = person(db, "gone", disabled=True)
    html = checked(
        client.post("/login", data={"username": disabled.username, "password": PASSWORD}), 422
    )
    assert "not right" in html
    assert client.get("/").status_code == 302


def test_pages_require_sign_in_and_come_back_after(db: Session, app: Flask) -> None:
    sender, me = person(db), person(db, "me")
    conv = sent_to(db, sender, me)
    client = app.test_client()
    resp = client.get(f"/conversations/{conv.uid}?x=1")
    assert resp.status_code == 302
    assert resp.headers["Location"].startswith("/login?next=")
    html = page(client, resp.headers["Location"])
    assert f'name="next" value="/conversations/{conv.uid}?x=1"' in html
    resp = client.post(
        "/login",
        data={"username": "me", "password": PASSWORD, "next": f"/conversations/{conv.uid}?x=1"},
    )
    assert resp.headers["Location"] == f"/conversations/{conv.uid}?x=1"
    for url in ("/compose", "/feedback/new", "/settings"):
        assert app.test_client().get(url).status_code == 302


def test_a_form_posted_after_the_session_ended_comes_back_to_its_page(
    db: Session, app: Flask
) -> None:
    """The reply action takes POST only: signing in leads back to the conversation, not to a
    GET of the action (a 405); another site's referrer leads to the inbox."""
    sender, me = person(db), person(db, "me")
    conv = sent_to(db, sender, me)
    client = app.test_client()
    page_url = f"http://localhost/conversations/{conv.uid}"
    resp = client.post(
        f"/conversations/{conv.uid}/reply", data={"text": "Hi"}, headers={"Referer": page_url}
    )
    assert resp.status_code == 302
    assert parse_qs(urlsplit(resp.headers["Location"]).query)["next"] == [
        f"/conversations/{conv.uid}"
    ]
    resp = client.post(
        f"/conversations/{conv.uid}/reply",
        data={"text": "Hi"},
        headers={"Referer": "http://evil.example/conversations/x"},
    )
    assert parse_qs(urlsplit(resp.headers["Location"]).query)["next"] == ["/"]


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/",
        "//evil.example/x",
        "/\\evil.example",
        "javascript:alert(1)",
        "http:/evil.example",
        "/ok\r\nLocation: x",
        "",
    ],
)
def test_login_never_redirects_off_site(db: Session, app: Flask, target: str) -> None:
    person(db, "ama")
    client = app.test_client()
    resp = client.post("/login", data={"username": "ama", "password": PASSWORD, "next": target})
    assert resp.status_code == 302 and resp.headers["Location"] == "/"


def test_safe_next_keeps_local_paths_only() -> None:
    assert safe_next("/conversations/abc?x=1#m", "/") == "/conversations/abc?x=1#m"
    assert safe_next("https://a.b/", "/") == "/"
    assert safe_next("//a.b", "/") == "/"
    assert safe_next(None, "/d") == "/d"


def test_post_without_csrf_token_is_refused_and_the_pages_token_works(
    db: Session, app: Flask
) -> None:
    app.config["WTF_CSRF_ENABLED"] = True
    sender, other = person(db), person(db)
    client = app.test_client()
    # Even signing in needs the token.
    assert (
        client.post("/login", data={"username": sender.username, "password": PASSWORD}).status_code
        == 400
    )
    token = csrf_from(page(client, "/login"))
    resp = client.post(
        "/login", data={"username": sender.username, "password": PASSWORD, "csrf_token": token}
    )
    assert resp.status_code == 302
    data = {"subject": "S", "text": "T", "users": other.uid, "reply_mode": "auto"}
    html = checked(client.post("/compose", data=data), 400)
    assert "security token is missing" in html
    assert db.scalar(select(Conversation).where(Conversation.subject == "S")) is None
    token = csrf_from(page(client, "/compose"))
    resp = client.post("/compose", data={**data, "csrf_token": token})
    assert resp.status_code == 302
    assert client.post("/logout").status_code == 400
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302


def test_a_form_with_csrf_still_refuses_percent_escapes_that_are_not_utf8(
    db: Session, app: Flask
) -> None:
    """The CSRF check reads the form too; the raw body is checked all the same."""
    app.config["WTF_CSRF_ENABLED"] = True
    sender, other = person(db), person(db)
    client = app.test_client()
    token = csrf_from(page(client, "/login"))
    data = {"username": sender.username, "password": PASSWORD, "csrf_token": token}
    assert client.post("/login", data=data).status_code == 302
    token = csrf_from(page(client, "/compose"))
    body = f"csrf_token={token}&subject=Caf%E9&text=T&users={other.uid}&reply_mode=auto"
    resp = client.post("/compose", data=body, content_type="application/x-www-form-urlencoded")
    assert resp.status_code == 400
    assert "subject is not valid UTF-8" in resp.get_data(as_text=True)
    assert db.scalar(select(Conversation).where(Conversation.subject.like("Caf%"))) is None


# ---------------------------------------------------------------------------------------------
# The inbox


def test_inbox_pages_with_correct_totals_newest_first(db: Session, app: Flask) -> None:
    other = person(db, first_name="Fatmata", surname="Sesay")
    me = person(db)
    convs = [sent_to(db, other, me, subject=f"Subject {i:02}") for i in range(27)]
    client = signed_in(app, me)
    html = page(client, "/")
    assert "Page 1 of 2" in html and "(27 conversations)" in html
    assert html.count('name="ids"') == 25
    assert html.index("Subject 26") < html.index("Subject 25")  # newest first
    assert "Subject 01" not in html
    assert 'rel="next"' in html and 'rel="prev"' not in html
    assert "Fatmata Sesay" in html
    assert "Unread: </span>Subject 26" in html  # unread is said, not only shown in bold
    html = page(client, "/?page=2")
    assert "Page 2 of 2" in html and html.count('name="ids"') == 2
    assert "Subject 00" in html and 'rel="prev"' in html
    assert client.get("/?page=9").headers["Location"] == "/?page=2"
    page(client, "/?page=nonsense")
    assert convs


def test_inbox_filters_unread_followup_search_and_folders(db: Session, app: Flask) -> None:
    other = person(db, first_name="Ama", surname="Kamara")
    me = person(db)
    a = sent_to(db, other, me, subject="Malaria stock", text="Need more ACT")
    b = sent_to(db, other, me, subject="Vaccines")
    msg.mark_read(db, me, [b.uid])
    msg.set_followup(db, me, [a.uid], on=True)
    client = signed_in(app, me)
    html = page(client, "/?unread=1")
    assert "Malaria stock" in html and "Vaccines" not in html
    html = page(client, "/?followup=1")
    assert "Malaria stock" in html and "Vaccines" not in html
    html = page(client, "/?q=act")
    assert "Malaria stock" in html and "Vaccines" not in html and 'value="act"' in html
    html = page(client, "/?folder=system")
    assert "Malaria" not in html and "No conversations" in html
    html = page(client, "/?folder=messages")
    assert "Malaria stock" in html and "Vaccines" in html
    # No Feedback folder for someone with no feedback.
    assert "folder=feedback" not in tabs(html)
    assert 'id="f-status"' not in page(client, "/?folder=feedback&status=OPEN")


def test_inbox_feedback_folder_and_filters_for_handlers(db: Session, app: Flask) -> None:
    h1, h2 = person(db), person(db)
    f.feedback_team(db, h1, h2)
    writer = person(db)
    one = fb.send_feedback(db, writer, "Broken scale", "It reads 2 kg too much")
    two = fb.send_feedback(db, writer, "Late salary", "Two months")
    fb.set_status(db, h1, one.uid, "PENDING")
    fb.set_priority(db, h1, one.uid, "HIGH")
    fb.set_assignee(db, h1, two.uid, h1.uid)
    client = signed_in(app, h1)
    html = page(client, "/?folder=feedback")
    assert 'id="f-status"' in html and 'id="f-mine"' in html
    assert "Broken scale" in html and "Late salary" in html
    html = page(client, "/?folder=feedback&status=PENDING&priority=HIGH")
    assert "Broken scale" in html and "Late salary" not in html
    html = page(client, "/?folder=feedback&mine=1")
    assert "Late salary" in html and "Broken scale" not in html
    assert "Assigned to" in html
    # The writer sees a Feedback folder (they have sent some) but no handlers' filters.
    writer_client = signed_in(app, writer)
    html = page(writer_client, "/")
    assert "folder=feedback" in tabs(html)
    html = page(writer_client, "/?folder=feedback&status=SOLVED")
    assert 'id="f-status"' not in html and "Broken scale" in html  # the filter is ignored


def test_inbox_bulk_actions_change_only_my_rows(db: Session, app: Flask) -> None:
    other, me = person(db), person(db)
    a = sent_to(db, other, me, subject="A")
    b = sent_to(db, other, me, subject="B")
    client = signed_in(app, me)
    back = "/?folder=messages"
    resp = client.post(
        "/inbox/actions", data={"action": "read", "ids": [a.uid, b.uid], "next": back}
    )
    assert resp.headers["Location"] == back
    assert row(db, me, a.uid).read and row(db, me, b.uid).read
    assert not row(db, other, a.uid).followup
    assert "Marked 2 conversations as read." in flashes(client)
    client.post("/inbox/actions", data={"action": "unread", "ids": [a.uid]})
    assert not row(db, me, a.uid).read
    client.post("/inbox/actions", data={"action": "followup", "ids": [b.uid]})
    assert row(db, me, b.uid).followup
    client.post("/inbox/actions", data={"action": "unfollowup", "ids": [b.uid]})
    assert not row(db, me, b.uid).followup
    client.post("/inbox/actions", data={"action": "remove", "ids": [b.uid]})
    assert row(db, me, b.uid).removed and not row(db, other, b.uid).removed
    html = flashes(client)
    assert "Removed 1 conversation from your inbox." in html and ">B<" not in html
    resp = client.post("/inbox/actions", data={"action": "read", "next": "https://evil.example/"})
    assert resp.headers["Location"] == "/"
    assert "Select at least one conversation first." in flashes(client)
    resp = client.post("/inbox/actions", data={"action": "explode", "ids": [a.uid]})
    assert resp.status_code == 302
    # Someone else's conversation is ignored, not changed.
    stranger = person(db)
    signed_in(app, stranger).post("/inbox/actions", data={"action": "remove", "ids": [a.uid]})
    assert row(db, stranger, a.uid) is None and not row(db, me, a.uid).removed


# ---------------------------------------------------------------------------------------------
# Writing a message


def test_compose_sends_publishes_the_plan_and_shows_progress(
    db: Session, app: Flask, publisher: RecordingPublisher, tree: dict[str, OrgUnit]
) -> None:
    sender = person(db, admin=True)
    below = [person(db, units=(tree["facility"],)) for _ in range(3)]
    group = f.user_group(db, "Nurses", (below[0],))
    client = signed_in(app, sender)
    page(client, "/compose")
    resp = client.post(
        "/compose",
        data={
            "subject": "Measles campaign",
            "text": "Starts Monday.",
            "users": f"{below[1].uid}, {below[1].uid}",
            "user_groups": group.uid,
            "org_units": tree["district"].uid,
            "include_descendants": "y",
            "reply_mode": "auto",
        },
    )
    assert resp.status_code == 302
    conv = db.scalar(select(Conversation).where(Conversation.subject == "Measles campaign"))
    assert resp.headers["Location"] == f"/conversations/{conv.uid}"
    delivery = db.scalar(select(Delivery).where(Delivery.conversation_id == conv.id))
    assert delivery.include_descendants and delivery.state == "QUEUED"
    assert publisher.published == [("delivery.plan", delivery.id)]
    html = page(client, resp.headers["Location"])
    assert (
        "Message sent to 1 user, 1 user group and 1 organisation unit (with all units below)"
        " — delivering…" in html
    )
    assert "Queued — counting recipients…" in html
    assert f'data-url="/api/messageConversations/{conv.uid}/delivery"' in html
    deliver(db, delivery.id)
    html = page(client, f"/conversations/{conv.uid}")
    assert "Delivered to all 3 recipients" in html and 'value="3"' in html
    # The recipients have it, unread.
    assert all(row(db, u, conv.uid).read is False for u in below)


def test_compose_discussion_and_announcement(
    db: Session, make_app: Callable[..., Flask], publisher: RecordingPublisher
) -> None:
    app = make_app(announcement_threshold=2)
    sender = person(db)
    people = [person(db) for _ in range(3)]
    client = signed_in(app, sender)
    ids = " ".join(p.uid for p in people)
    client.post(
        "/compose", data={"subject": "Big", "text": "T", "users": ids, "reply_mode": "auto"}
    )
    big = db.scalar(select(Conversation).where(Conversation.subject == "Big"))
    assert big.is_announcement
    assert "Announcement sent to 3 users" in flashes(client)
    client.post(
        "/compose", data={"subject": "Talk", "text": "T", "users": ids, "reply_mode": "discussion"}
    )
    talk = db.scalar(select(Conversation).where(Conversation.subject == "Talk"))
    assert not talk.is_announcement
    assert len(publisher.published) == 2


def test_compose_prefills_a_recipient_from_the_link(db: Session, app: Flask) -> None:
    me, other = person(db), person(db)
    html = page(signed_in(app, me), f"/compose?users={other.uid}&subject=About+today")
    assert f'value="{other.uid}"' in html and 'value="About today"' in html


COMPOSE_ERRORS = [
    # (what is wrong, form changes, control id, words of the message)
    ("no subject", {"subject": "  "}, "subject", "Subject is required."),
    ("no text", {"text": ""}, "text", "Text is required."),
    ("long subject", {"subject": "x" * 300}, "subject", "at most 255"),
    ("no recipients", {"users": ""}, None, "No recipients selected."),
    ("unknown user", {"users": "nosuchuser1"}, "users", "User does not exist: nosuchuser1"),
    ("unknown group", {"user_groups": "nosuchgrp01"}, "user_groups", "User group does not exist"),
    ("unknown unit", {"org_units": "nosuchunit1"}, "org_units", "Organisation unit does not exist"),
    (
        "unknown unit group",
        {"org_unit_groups": "nosuchoug01"},
        "org_unit_groups",
        "Organisation unit group does not exist",
    ),
    ("outside my units", {"org_units": "@other"}, "org_units", "within your own assigned units"),
    ("only me", {"users": "@me"}, None, "reach no active user other than you"),
    ("bad reply mode", {"reply_mode": "storm"}, "reply_mode", "Not a valid choice"),
]


@pytest.mark.parametrize(("case", "changes", "control", "words"), COMPOSE_ERRORS)
def test_compose_errors_name_the_field_and_keep_what_was_typed(
    db: Session,
    app: Flask,
    publisher: RecordingPublisher,
    tree: dict[str, OrgUnit],
    case: str,
    changes: dict[str, str],
    control: str | None,
    words: str,
) -> None:
    sender = person(db, units=(tree["district"],))
    other = person(db, units=(tree["facility"],))
    person(db, units=(tree["other"],))
    data = {
        "subject": "Stock report <due>",
        "text": "Please send it\nby Friday & not later.",
        "users": other.uid,
        "org_units": "",
        "reply_mode": "discussion",
        "include_descendants": "y",
    }
    for key, value in changes.items():
        data[key] = {"@other": tree["other"].uid, "@me": sender.uid}.get(value, value)
    before = db.scalar(select(Conversation.id).order_by(Conversation.id.desc()).limit(1))
    html = checked(signed_in(app, sender).post("/compose", data=data), 422)
    assert words in html.replace("&#39;", "'"), case
    assert "There is a problem" in html
    if control:
        assert f'id="{control}-error"' in html, case
        assert re.search(rf'<li><a href="#{control}">[^<]*{re.escape(words[:15])}', html), case
    # Everything typed is still there, escaped.
    if "subject" not in changes:
        assert 'value="Stock report &lt;due&gt;"' in html
    if "text" not in changes:
        assert "Please send it\nby Friday &amp; not later.</textarea>" in html
    if data["users"]:
        assert f'value="{data["users"]}"' in html
    assert re.search(r'<input[^>]*\bchecked\b[^>]*id="include_descendants"', html)
    assert 'id="reply_mode-1" name="reply_mode" type="radio" value="discussion"' in html
    # Nothing was created and nothing published.
    assert db.scalar(select(Conversation.id).order_by(Conversation.id.desc()).limit(1)) == before
    assert publisher.published == []


# ---------------------------------------------------------------------------------------------
# A conversation


def test_conversation_escapes_text_keeps_newlines_and_makes_links(db: Session, app: Flask) -> None:
    sender, me = person(db), person(db)
    text = (
        "<script>alert(1)</script>\nSee https://dhis2.org/docs?a=1&b=2.\n"
        'javascript:alert(2) and <a href="javascript:alert(3)">x</a>'
    )
    conv = sent_to(db, sender, me, subject="<b>Bold</b> subject", text=text)
    html = page(signed_in(app, me), f"/conversations/{conv.uid}")
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;\nSee " in html
    assert (
        '<a href="https://dhis2.org/docs?a=1&amp;b=2" rel="noopener noreferrer nofollow">'
        "https://dhis2.org/docs?a=1&amp;b=2</a>." in html
    )
    assert 'href="javascript' not in html
    assert "&lt;b&gt;Bold&lt;/b&gt; subject</h1>" in html


def test_linkify_escapes_everything_and_links_only_http() -> None:
    assert linkify("<script>x</script>") == Markup("&lt;script&gt;x&lt;/script&gt;")
    assert linkify("<i>a</i> http://a.org <b>") == Markup(
        '&lt;i&gt;a&lt;/i&gt; <a href="http://a.org" rel="noopener noreferrer nofollow">'
        "http://a.org</a> &lt;b&gt;"
    )
    assert 'href="' not in linkify("javascript:alert(1)")
    assert 'href="' not in linkify("JaVaScRiPt:alert(1)//http")
    out = str(linkify('http://x.org/"onmouseover="alert(1)'))
    assert 'href="http://x.org/"' in out and "onmouseover" in out
    assert '" onmouseover' not in out and 'onmouseover="' not in out
    out = str(linkify("(see https://en.wikipedia.org/wiki/Bo_(Sierra_Leone)), ok"))
    assert 'href="https://en.wikipedia.org/wiki/Bo_(Sierra_Leone)"' in out and out.endswith("), ok")
    out = str(linkify("http://a.org/<img src=x onerror=alert(1)>"))
    assert "<img" not in out and 'href="http://a.org/"' in out
    assert linkify("https://") == Markup("https://")
    assert linkify(None) == Markup("")


def test_opening_a_conversation_marks_it_read_for_me_only(db: Session, app: Flask) -> None:
    sender, me, other = person(db), person(db), person(db)
    conv = sent_to(db, sender, me, other)
    client = signed_in(app, me)
    assert "data-unread-count>1<" in page(client, "/")
    html = page(client, f"/conversations/{conv.uid}")
    assert row(db, me, conv.uid).read is True
    assert row(db, other, conv.uid).read is False
    assert "data-unread-count>0<" in html
    # Participants and no delivery panel for a recipient.
    assert "Participants" in html and "(you)" in html and "data-delivery" not in html


def test_conversation_is_404_for_a_stranger_and_for_nonsense(db: Session, app: Flask) -> None:
    sender, me, stranger = person(db), person(db), person(db)
    conv = sent_to(db, sender, me)
    client = signed_in(app, stranger)
    html = page(client, f"/conversations/{conv.uid}", 404)
    assert "Page not found" in html and "Message conversation does not exist" in html
    page(client, "/conversations/%3Cscript%3E", 404)
    page(client, "/no/such/page", 404)
    for path in ("reply", "followup", "unread", "remove", "feedback"):
        resp = client.post(
            f"/conversations/{conv.uid}/{path}", data={"text": "x", "status": "OPEN"}
        )
        assert resp.status_code == 404, path
    assert row(db, stranger, conv.uid) is None


def test_reply_and_empty_reply(db: Session, app: Flask, publisher: RecordingPublisher) -> None:
    sender, me = person(db), person(db)
    conv = sent_to(db, sender, me)
    client = signed_in(app, me)
    resp = client.post(f"/conversations/{conv.uid}/reply", data={"text": "Thanks!\nWill do."})
    assert resp.status_code == 302
    assert resp.headers["Location"].startswith(f"/conversations/{conv.uid}#m-")
    html = page(client, f"/conversations/{conv.uid}")
    assert "Reply sent." in html and "Thanks!\nWill do." in html
    assert row(db, sender, conv.uid).read is False
    html = checked(client.post(f"/conversations/{conv.uid}/reply", data={"text": "  "}), 422)
    assert 'id="reply-text-error"' in html and "Text is required." in html
    assert publisher.published == []


def test_large_reply_publishes_its_delivery(
    db: Session, make_app: Callable[..., Flask], publisher: RecordingPublisher
) -> None:
    app = make_app(inline_unread_limit=1)
    sender, a, b = person(db), person(db), person(db)
    conv = sent_to(db, sender, a, b)
    client = signed_in(app, a)
    assert (
        client.post(f"/conversations/{conv.uid}/reply", data={"text": "Hi all"}).status_code == 302
    )
    reply_delivery = db.scalar(
        select(Delivery).where(Delivery.conversation_id == conv.id, Delivery.kind == "REPLY")
    )
    assert publisher.published == [("delivery.plan", reply_delivery.id)]


def test_reply_to_an_announcement_goes_to_the_private_thread(
    db: Session, make_app: Callable[..., Flask]
) -> None:
    app = make_app(announcement_threshold=2)
    sender = person(db, first_name="District", surname="Officer")
    people = [person(db) for _ in range(3)]
    sent = msg.send_message(
        db,
        sender,
        "Notice",
        "T",
        msg.Recipients(users=[p.uid for p in people]),
        announcement_threshold=2,
    )
    deliver(db, sent.delivery.id)
    client = signed_in(app, people[0])
    html = page(client, f"/conversations/{sent.conversation.uid}")
    assert "your reply goes to District Officer only" in html
    assert "and 3 more" in html  # recipients see the sender, not each other
    resp = client.post(f"/conversations/{sent.conversation.uid}/reply", data={"text": "Question"})
    thread = db.scalar(select(Conversation).where(Conversation.parent_id == sent.conversation.id))
    assert resp.headers["Location"].startswith(f"/conversations/{thread.uid}#m-")
    html = page(client, f"/conversations/{thread.uid}")
    assert "Your reply went to the sender only" in html and "Question" in html
    assert "A private conversation about the announcement" in html
    page(signed_in(app, people[1]), f"/conversations/{thread.uid}", 404)


def test_followup_unread_and_remove_from_the_conversation(db: Session, app: Flask) -> None:
    sender, me = person(db), person(db)
    conv = sent_to(db, sender, me, subject="Keep")
    client = signed_in(app, me)
    page(client, f"/conversations/{conv.uid}")
    client.post(f"/conversations/{conv.uid}/followup", data={"on": "1"})
    assert row(db, me, conv.uid).followup
    html = page(client, f"/conversations/{conv.uid}")
    assert "Marked for follow-up." in html and "Remove follow-up" in html
    client.post(f"/conversations/{conv.uid}/followup", data={"on": "0"})
    assert not row(db, me, conv.uid).followup
    resp = client.post(f"/conversations/{conv.uid}/unread")
    assert resp.headers["Location"] == "/"
    assert row(db, me, conv.uid).read is False
    assert "is marked unread" in flashes(client)
    client.post(f"/conversations/{conv.uid}/remove")
    assert row(db, me, conv.uid).removed


def test_participants_show_thirty_and_how_many_more(db: Session, app: Flask) -> None:
    sender = person(db)
    people = [person(db) for _ in range(33)]
    sent = msg.send_message(
        db, sender, "Many", "T", msg.Recipients(users=[p.uid for p in people]), discussion=True
    )
    deliver(db, sent.delivery.id, batch_size=50)
    html = page(signed_in(app, sender), f"/conversations/{sent.conversation.uid}")
    assert 'Participants <span class="muted">(34)</span>' in html
    assert "and 4 more" in html
    assert '<details class="participants-details" id="participants-details">' in html
    assert "Show the 34 participants" in html
    assert "Delivered to all 33 recipients" in html
    few = sent_to(db, sender, people[0])
    html = page(signed_in(app, sender), f"/conversations/{few.uid}")
    assert 'id="participants-list"' in html and "<details" not in html


def test_delivery_progress_only_for_the_sender_and_administrators(db: Session, app: Flask) -> None:
    sender, me = person(db), person(db)
    admin = person(db, admin=True)
    sent = msg.send_message(db, sender, "S", "T", msg.Recipients(users=[me.uid]))
    deliver(db, sent.delivery.id)
    uid = sent.conversation.uid
    assert "data-delivery " in page(signed_in(app, sender), f"/conversations/{uid}")
    assert "data-delivery " not in page(signed_in(app, me), f"/conversations/{uid}")
    # An administrator who is no participant may not read it, as anyone else.
    page(signed_in(app, admin), f"/conversations/{uid}", 404)


# ---------------------------------------------------------------------------------------------
# Feedback


def test_feedback_without_a_group_shows_the_error(db: Session, app: Flask) -> None:
    writer = person(db)
    client = signed_in(app, writer)
    html = page(client, "/feedback/new")
    assert "no feedback recipients group is configured" in html
    data = {"subject": "Broken", "text": "The tablet does not start."}
    html = checked(client.post("/feedback/new", data=data), 422)
    assert "Feedback cannot be sent: no feedback recipients group is configured" in html
    assert 'value="Broken"' in html and "The tablet does not start.</textarea>" in html
    html = checked(client.post("/feedback/new", data={"subject": "", "text": "x"}), 422)
    assert 'id="subject-error"' in html


def test_feedback_arrives_open_and_handlers_work_it(db: Session, app: Flask) -> None:
    h1 = person(db, first_name="Hawa", surname="Bangura")
    h2 = person(db, first_name="Ibrahim", surname="Conteh")
    f.feedback_team(db, h1, h2)
    writer = person(db)
    writer_client = signed_in(app, writer)
    resp = writer_client.post(
        "/feedback/new", data={"subject": "Stock-out", "text": "No ORS since Monday"}
    )
    conv = db.scalar(select(Conversation).where(Conversation.subject == "Stock-out"))
    assert resp.headers["Location"] == f"/conversations/{conv.uid}"
    assert (conv.message_type, conv.status) == ("TICKET", "OPEN")
    html = page(writer_client, resp.headers["Location"])
    assert "your feedback was sent to the feedback team" in html
    assert 'id="handling-title"' not in html and 'id="reply-internal"' not in html
    assert "Hawa" not in html  # the writer does not see the handlers' names

    handler = signed_in(app, h1)
    html = page(handler, f"/conversations/{conv.uid}")
    assert 'id="handling-title"' in html and 'id="reply-internal"' in html
    assert f'<option value="{h2.uid}">Ibrahim Conteh</option>' in html
    assert f'value="{writer.uid}"' not in html  # only handlers can be assignees
    resp = handler.post(
        f"/conversations/{conv.uid}/feedback",
        data={"status": "PENDING", "priority": "HIGH", "assignee": h2.uid},
    )
    assert resp.status_code == 302
    db.expire_all()
    conv = db.get(Conversation, conv.id)
    assert (conv.status, conv.priority, conv.assignee_id) == ("PENDING", "HIGH", h2.id)
    html = page(handler, f"/conversations/{conv.uid}")
    assert "Saved: status Pending, priority High, assigned to Ibrahim Conteh." in html
    # Unassign.
    handler.post(f"/conversations/{conv.uid}/feedback", data={"assignee": ""})
    db.expire_all()
    assert db.get(Conversation, conv.id).assignee_id is None
    # Not a handler: the form answers next to the control, and nothing changes.
    html = checked(
        handler.post(
            f"/conversations/{conv.uid}/feedback",
            data={"status": "SOLVED", "assignee": writer.uid},
        ),
        422,
    )
    assert 'id="assignee-error"' in html and "must be a member of the feedback" in html
    html = checked(
        handler.post(f"/conversations/{conv.uid}/feedback", data={"status": "NONE"}), 422
    )
    assert 'id="status-error"' in html
    db.expire_all()
    assert db.get(Conversation, conv.id).status == "PENDING"

    # The writer may not; a stranger may not even see it.
    resp = writer_client.post(f"/conversations/{conv.uid}/feedback", data={"status": "SOLVED"})
    assert resp.status_code == 403 and "Only feedback handlers may change this." in resp.text
    check_page(resp.text)
    stranger = signed_in(app, person(db))
    assert (
        stranger.post(f"/conversations/{conv.uid}/feedback", data={"status": "SOLVED"}).status_code
        == 404
    )
    db.expire_all()
    assert db.get(Conversation, conv.id).status == "PENDING"


def test_internal_replies_are_hidden_from_the_feedback_writer(db: Session, app: Flask) -> None:
    h1, h2, writer, conv = team_and_feedback(db)
    handler = signed_in(app, h1)
    resp = handler.post(
        f"/conversations/{conv.uid}/reply",
        data={"text": "Check the stock card first", "internal": "y"},
    )
    assert resp.status_code == 302
    html = page(handler, f"/conversations/{conv.uid}")
    assert "Internal reply added" in html
    assert re.search(
        r'class="message internal[^"]*".*?Internal — handlers only.*?Check the stock card',
        html,
        re.S,
    )
    assert "Check the stock card" in page(signed_in(app, h2), f"/conversations/{conv.uid}")
    writer_html = page(signed_in(app, writer), f"/conversations/{conv.uid}")
    assert "Check the stock card" not in writer_html and "Internal" not in writer_html
    # The writer cannot post one either.
    html = checked(
        signed_in(app, writer).post(
            f"/conversations/{conv.uid}/reply", data={"text": "sneaky", "internal": "y"}
        ),
        422,
    )
    assert "Only feedback handlers may write internal replies." in html


# ---------------------------------------------------------------------------------------------
# Settings and the header


def test_settings_are_for_administrators_only(db: Session, app: Flask) -> None:
    user = person(db)
    client = signed_in(app, user)
    html = page(client, "/settings", 403)
    assert "Only administrators may change the settings." in html
    assert client.post("/settings", data={"group": "x"}).status_code == 403
    assert 'href="/settings"' not in page(client, "/")


def test_settings_choose_find_and_clear_the_feedback_group(db: Session, app: Flask) -> None:
    admin = person(db, admin=True)
    h = person(db, first_name="Hawa", surname="Bangura")
    team = f.user_group(db, "Feedback Message Recipients", (h,))
    f.user_group(db, "Nurses")
    f.user_group(db, "nurses")  # a second group of the same name, in other case
    client = signed_in(app, admin)
    html = page(client, "/settings")
    assert "No group is configured" in html and 'href="/settings"' in html
    html = page(client, "/settings?q=feedback")
    assert f'name="group" value="{team.uid}"' in html
    # By id, from the search results.
    assert client.post("/settings", data={"action": "set", "group": team.uid}).status_code == 302
    assert feedback_group(db).id == team.id
    html = page(client, "/settings")
    assert "Feedback now goes to the user group" in html and "Hawa Bangura" in html
    # By name; an unknown or ambiguous one is refused next to the field, with the text kept.
    client.post("/settings", data={"action": "set", "group": "feedback message recipients"})
    html = checked(client.post("/settings", data={"action": "set", "group": "Nobody <here>"}), 422)
    assert 'id="group-error"' in html and 'value="Nobody &lt;here&gt;"' in html
    assert "No user group has the id or name" in html
    html = checked(client.post("/settings", data={"action": "set", "group": "Nurses"}), 422)
    assert "Several user groups are named" in html
    checked(client.post("/settings", data={"action": "set", "group": ""}), 422)
    db.expire_all()
    assert feedback_group(db).id == team.id
    client.post("/settings", data={"action": "clear"})
    db.expire_all()
    assert feedback_group(db) is None
    assert "Feedback recipients cleared" in page(client, "/settings")
    assert db.scalar(select(UserGroup).where(UserGroup.uid == team.uid)) is not None


def test_header_and_security_headers(db: Session, app: Flask) -> None:
    other, me = person(db), person(db, first_name="Mohamed", surname="Koroma")
    sent_to(db, other, me)
    sent_to(db, other, me)
    client = signed_in(app, me)
    resp = client.get("/")
    html = resp.get_data(as_text=True)
    assert 'data-unread-count>2</span><span class="visually-hidden"> unread' in html
    assert 'data-url="/unread-counts"' in html
    assert "Mohamed Koroma" in html and 'action="/logout"' in html
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    assert "<script>" not in html  # no inline scripts: the CSP would refuse them
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/app.css").status_code == 200
    # The JSON endpoints the scripts poll answer with the session cookie.
    assert client.get("/api/me/dashboard").get_json()["unreadMessageConversations"] == 2


def test_signed_out_error_page_and_disabled_user(db: Session, app: Flask) -> None:
    html = page(app.test_client(), "/login?next=/x")
    assert "Sign out" not in html
    me = person(db)
    client = signed_in(app, me)
    db.execute(User.__table__.update().where(User.id == me.id).values(disabled=True))
    resp = client.get("/")
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/login")


def test_inbox_snippets_show_the_latest_message_i_may_see(db: Session, app: Flask) -> None:
    h1, h2, writer, conv = team_and_feedback(db)
    msg.reply(db, h1, conv.uid, "Public answer <b>soon</b>\n\n  with   spaces")
    msg.reply(db, h1, conv.uid, "Internal: budget is gone", internal=True)
    long = sent_to(db, h1, writer, subject="Long", text="word " * 100)
    html = page(signed_in(app, writer), "/")
    assert f'id="snippet-{conv.uid}">Public answer &lt;b&gt;soon&lt;/b&gt; with spaces<' in html
    assert "budget is gone" not in html
    snippet = re.search(rf'id="snippet-{long.uid}">([^<]*)<', html)
    assert snippet and len(snippet.group(1)) <= msg.SNIPPET_LENGTH
    html = page(signed_in(app, h2), "/?folder=feedback")
    assert f'id="snippet-{conv.uid}">Internal: budget is gone<' in html


# ---------------------------------------------------------------------------------------------
# Handlers triage several feedback conversations at once


def _ticket_states(db: Session, *convs: Conversation) -> list[tuple[str, str, int | None]]:
    db.expire_all()
    out = []
    for c in convs:
        got = db.get(Conversation, c.id)
        assert got is not None
        out.append((got.status, got.priority, got.assignee_id))
    return out


def test_handlers_set_status_priority_and_assignee_of_the_selected(db: Session, app: Flask) -> None:
    h1, h2, writer, one = team_and_feedback(db)
    h2.first_name, h2.surname = "Ibrahim", "Conteh"
    two = fb.send_feedback(db, writer, "Late salary", "Two months")
    untouched = fb.send_feedback(db, writer, "Other", "Not selected")
    client = signed_in(app, h1)
    html = page(client, "/?folder=feedback")
    assert 'id="bulk-triage"' in html and 'id="bulk-status"' in html
    assert f'<option value="{h2.uid}">Ibrahim Conteh</option>' in html
    ids = [one.uid, two.uid]
    resp = client.post(
        "/inbox/actions",
        data={"action": "status", "set_status": "PENDING", "ids": ids, "next": "/?folder=feedback"},
    )
    assert resp.headers["Location"] == "/?folder=feedback"
    assert "Status set to Pending on 2 conversations." in flashes(client)
    client.post("/inbox/actions", data={"action": "priority", "set_priority": "HIGH", "ids": ids})
    assert "Priority set to High on 2 conversations." in flashes(client)
    client.post("/inbox/actions", data={"action": "assign", "set_assignee": h2.uid, "ids": ids})
    assert "Assigned 2 conversations to Ibrahim Conteh." in flashes(client)
    assert _ticket_states(db, one, two, untouched) == [
        ("PENDING", "HIGH", h2.id),
        ("PENDING", "HIGH", h2.id),
        ("OPEN", "NONE", None),
    ]
    client.post("/inbox/actions", data={"action": "assign", "set_assignee": "", "ids": [two.uid]})
    assert "Unassigned 1 conversation." in flashes(client)
    assert _ticket_states(db, two) == [("PENDING", "HIGH", None)]


def test_bulk_triage_is_all_or_nothing(db: Session, app: Flask) -> None:
    h1, _h2, writer, one = team_and_feedback(db)
    private = sent_to(db, writer, h1, subject="Private")
    client = signed_in(app, h1)
    # A private message among the selection: nothing changes, and the handler is told why.
    resp = client.post(
        "/inbox/actions",
        data={"action": "status", "set_status": "SOLVED", "ids": [one.uid, private.uid]},
    )
    # The refused selection is ticked again (only on that page).
    html = page(client, resp.headers["Location"])
    assert "1 of the selected conversations is not feedback" in html
    for uid in (one.uid, private.uid):
        assert f'id="sel-{uid}" checked>' in html
    assert f'id="sel-{one.uid}">' in page(client, "/")
    client.post("/inbox/actions", data={"action": "status", "set_status": "NONE", "ids": [one.uid]})
    assert "messageConversationStatus must be one of" in flashes(client)
    client.post(
        "/inbox/actions", data={"action": "assign", "set_assignee": writer.uid, "ids": [one.uid]}
    )
    assert "must be a member of the feedback recipients group" in flashes(client)
    client.post(
        "/inbox/actions",
        data={"action": "priority", "set_priority": "HIGH", "ids": [one.uid, "nosuchconv1"]},
    )
    assert "1 of the selected conversations is not feedback" in flashes(client)
    assert _ticket_states(db, one) == [("OPEN", "NONE", None)]


def test_bulk_triage_is_for_handlers_only(db: Session, app: Flask) -> None:
    _h1, _h2, writer, one = team_and_feedback(db)
    writer_client = signed_in(app, writer)
    html = page(writer_client, "/?folder=feedback")
    assert 'id="bulk-triage"' not in html and "Scale" in html
    writer_client.post(
        "/inbox/actions", data={"action": "status", "set_status": "SOLVED", "ids": [one.uid]}
    )
    assert "Only feedback handlers may change this." in flashes(writer_client)
    assert _ticket_states(db, one) == [("OPEN", "NONE", None)]


# ---------------------------------------------------------------------------------------------
# The header's unread counts per folder


def _failed_delivery(db: Session, sender: User, *recipients: User) -> None:
    """A send whose every batch gives up: the sender gets the SYSTEM notice."""
    sent = msg.send_message(
        db, sender, "Stock report", "Due", msg.Recipients(users=[r.uid for r in recipients])
    )
    plan = delivery_svc.plan(db, sent.delivery.id, 10)
    for seq in plan.batch_seqs:
        assert delivery_svc.begin_attempt(db, sent.delivery.id, seq, max_attempts=5)
        delivery_svc.fail_batch(db, sent.delivery.id, seq)


def test_header_counts_unread_per_folder(db: Session, app: Flask) -> None:
    h, other = person(db), person(db)
    team = f.feedback_team(db, h)
    writer = person(db)
    fb.send_feedback(db, writer, "Fridge", "Broken")
    sent_to(db, other, h)
    sent_to(db, other, h)
    _failed_delivery(db, h, person(db))
    client = signed_in(app, h)
    resp = client.get("/unread-counts")
    assert resp.status_code == 200 and resp.headers["Cache-Control"] == "no-store"
    assert resp.get_json() == {
        "total": 4,
        "messages": 2,
        "feedback": 1,
        "system": 1,
        "handler": True,
        "showFeedback": True,
    }
    html = page(client, "/")
    assert 'id="unread-messages" data-unread-folder-count>2<' in html
    assert 'id="unread-feedback" data-unread-folder-count>1<' in html
    assert 'id="unread-system" data-unread-folder-count>1<' in html
    assert re.search(r'id="unread-feedback-item" data-unread-folder="feedback">', html)
    assert 'href="/?folder=system&amp;unread=1"' in html
    # Reading one changes the numbers at the next poll.
    conv = db.scalar(select(Conversation).where(Conversation.subject == "Fridge"))
    page(client, f"/conversations/{conv.uid}")
    assert client.get("/unread-counts").get_json()["feedback"] == 0
    # Leaving the feedback team: the feedback is no longer counted, nor the Feedback count shown.
    db.execute(user_group_members.delete().where(user_group_members.c.group_id == team.id))
    fb_conv = fb.send_feedback(db, writer, "Scale", "Broken too")
    body = client.get("/unread-counts").get_json()
    assert body["feedback"] == 0 and body["handler"] is False and body["showFeedback"] is False
    html = page(client, "/")
    assert re.search(r'id="unread-feedback-item" data-unread-folder="feedback" hidden>', html)
    assert fb_conv.uid


def test_header_counts_never_count_internal_replies(db: Session, app: Flask) -> None:
    h1, h2, writer, conv = team_and_feedback(db)
    writer_client = signed_in(app, writer)
    page(writer_client, f"/conversations/{conv.uid}")
    msg.reply(db, h1, conv.uid, "Internal note", internal=True)
    body = writer_client.get("/unread-counts").get_json()
    assert (body["total"], body["feedback"], body["showFeedback"]) == (0, 0, False)
    assert signed_in(app, h2).get("/unread-counts").get_json()["feedback"] == 1
    # A public answer is the writer's to read: their Feedback count appears while it is unread.
    msg.reply(db, h1, conv.uid, "Fixed on Monday")
    body = writer_client.get("/unread-counts").get_json()
    assert (body["feedback"], body["handler"], body["showFeedback"]) == (1, False, True)


def test_unread_counts_need_signing_in(db: Session, app: Flask) -> None:
    resp = app.test_client().get("/unread-counts")
    assert resp.status_code == 401 and resp.get_json()["message"] == "Sign in first."


def test_unread_counts_are_one_statement(db: Session, app: Flask) -> None:
    me = person(db)
    counted: list[str] = []

    def count(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        if "inbox" in statement.lower():
            counted.append(statement)

    engine = db.get_bind().engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        assert msg.unread_counts(db, me).total == 0
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(counted) == 1


def test_the_unread_badge_is_two_statements_for_a_signed_in_user(db: Session, app: Flask) -> None:
    """The caller is read once per request (without their org units, which a count does not
    need) and reused by the view; then the count."""
    me = person(db, units=(f.org_unit(db),))
    client = signed_in(app, me)
    db.expunge_all()  # nothing of the caller is left in memory from the test's side
    del me
    statements: list[str] = []

    def count(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        if "SAVEPOINT" not in statement:  # the test's rolled-back transaction, not the request's
            statements.append(" ".join(statement.split())[:120])

    engine = db.get_bind().engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        resp = client.get("/api/me/dashboard")
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert resp.status_code == 200 and resp.json == {
        "unreadMessageConversations": 0,
        "unreadInterpretations": 0,
    }
    assert len(statements) == 2, statements


# ---------------------------------------------------------------------------------------------
# The composer's live recipient count


def test_recipient_count_follows_delivery_rules(
    db: Session, app: Flask, tree: dict[str, OrgUnit]
) -> None:
    sender = person(db, units=(tree["district"],))
    in_district = f.user(db, units=(tree["district"],))
    in_facility = f.user(db, units=(tree["facility"],))
    f.user(db, units=(tree["facility"],), disabled=True)
    both = f.user(db, units=(tree["facility"],))
    group = f.user_group(db, members=(both, in_district, sender))
    ou_group = f.org_unit_group(db, (tree["facility"],))
    client = signed_in(app, sender)

    def count(**args: str) -> Any:
        resp = client.get("/compose/recipient-count", query_string=args)
        return resp.status_code, resp.get_json()

    assert count() == (
        200,
        {"count": 0, "text": "No recipients chosen yet.", "announcement": False},
    )
    # The unit itself only; the sender is not counted.
    assert count(org_units=tree["district"].uid)[1]["count"] == 1
    # With the units below: the disabled user is not counted.
    status, body = count(org_units=tree["district"].uid, include_descendants="y")
    assert (status, body["count"]) == (200, 3)
    assert body["text"] == "This message will reach 3 people."
    # Several routes to one person count once.
    ids = f"{both.uid} {in_facility.uid}"
    assert count(users=ids, user_groups=group.uid, org_unit_groups=ou_group.uid)[1]["count"] == 3
    assert count(users=in_facility.uid)[1]["text"] == "This message will reach 1 person."


def test_recipient_count_refusals_name_the_control(
    db: Session, make_app: Callable[..., Flask], tree: dict[str, OrgUnit]
) -> None:
    app = make_app(announcement_threshold=1)
    sender = person(db, units=(tree["district"],))
    f.user(db, units=(tree["other"],))
    f.user(db, units=(tree["facility"],))
    f.user(db, units=(tree["facility"],))
    client = signed_in(app, sender)
    resp = client.get("/compose/recipient-count", query_string={"org_units": tree["other"].uid})
    assert resp.status_code == 403
    assert resp.get_json()["field"] == "org_units"
    assert "within your own assigned units" in resp.get_json()["message"]
    resp = client.get("/compose/recipient-count", query_string={"users": "nosuchuser1"})
    assert resp.status_code == 409 and resp.get_json()["field"] == "users"
    too_many = " ".join(f"u{i:010d}" for i in range(msg.MAX_RECIPIENT_IDS + 1))
    resp = client.get("/compose/recipient-count", query_string={"users": too_many})
    assert resp.status_code == 400
    # Large enough to be an announcement, unless a discussion is asked for.
    args = {"org_units": tree["district"].uid, "include_descendants": "y"}
    body = client.get("/compose/recipient-count", query_string=args).get_json()
    assert body["announcement"] is True and "announcement" in body["text"]
    args["reply_mode"] = "discussion"
    assert (
        client.get("/compose/recipient-count", query_string=args).get_json()["announcement"]
        is False
    )
    # A broadcaster may count anywhere; nobody signed out may count at all.
    broadcaster = signed_in(app, person(db, broadcaster=True))
    resp = broadcaster.get(
        "/compose/recipient-count",
        query_string={"org_units": tree["country"].uid, "include_descendants": "y"},
    )
    assert resp.get_json()["count"] == 4  # the three users and the first sender
    assert app.test_client().get("/compose/recipient-count").status_code == 401
    # Counting wrote nothing.
    assert db.scalar(select(func.count()).select_from(Delivery)) == 0


def test_compose_page_has_the_live_count_and_a_count_button(
    db: Session, app: Flask, tree: dict[str, OrgUnit]
) -> None:
    sender = person(db, units=(tree["district"],))
    f.user(db, units=(tree["facility"],))
    client = signed_in(app, sender)
    html = page(client, "/compose")
    assert 'id="recipient-count"' in html and 'data-url="/compose/recipient-count"' in html
    # Send comes first: Enter in a text box sends, it does not count.
    assert html.index('id="send-message"') < html.index('id="count-recipients"')
    # Without scripts, the button counts and keeps everything typed; nothing is sent.
    data = {
        "subject": "Stock <count>",
        "text": "Text kept",
        "org_units": tree["district"].uid,
        "include_descendants": "y",
        "reply_mode": "auto",
        "action": "count",
    }
    html = checked(client.post("/compose", data=data), 200)
    assert ">This message will reach 1 person.</p>" in html
    assert 'value="Stock &lt;count&gt;"' in html and "Text kept</textarea>" in html
    box = re.search(r'<input[^>]*id="include_descendants"[^>]*>', html)
    assert box and "checked" in box.group(0)
    data["org_units"] = tree["other"].uid
    html = checked(client.post("/compose", data=data), 422)
    assert 'id="org_units-error"' in html and "within your own assigned units" in html
    assert db.scalar(select(func.count()).select_from(Conversation)) == 0


@pytest.fixture(autouse=True)
def _no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """A 500 in any test is a bug, even where the test looks only at something else."""
    yield
    crashes = [r for r in caplog.records if r.name == "web.errors" and r.levelname == "ERROR"]
    assert not crashes, [r.getMessage() for r in crashes]


def test_controls_carry_no_none_attributes(db: Session, app: Flask) -> None:
    """WTForms writes a None attribute as "None"; aria-invalid="None" would read as invalid."""
    client = signed_in(app, person(db, admin=True))
    for url in ("/compose", "/feedback/new", "/settings", "/account"):
        html = page(client, url)
        assert '="None"' not in html, url
    html = checked(client.post("/feedback/new", data={"subject": "", "text": "x"}), 422)
    assert 'aria-invalid="true"' in html and 'aria-describedby="subject-error"' in html
    assert html.count('aria-invalid="true"') == 1
