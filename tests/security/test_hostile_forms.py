"""Every HTML form posted with hostile values: oversized, empty, malformed, non-UTF-8, JSON
(deeply nested) instead of a form, unicode, HTML/script and SQL-looking. Never a 5xx; a refusal
is a 4xx that names the field (or the form again with the field's message) and writes nothing;
what is accepted is stored as typed and shown escaped."""

from __future__ import annotations

import itertools
from typing import Any
from urllib.parse import urlencode

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.messaging import MAX_SUBJECT, MAX_TEXT
from service.models import Message
from tests.security.conftest import World
from web.app import MAX_CONTENT_LENGTH

SCRIPT = '<script>alert("x")</script><img src=x onerror=alert(1)>'
SQL = "'; DROP TABLE inbox; -- \" OR 1=1"
UNICODE = "Ƒɑʈɱɑʈɑ 👩🏽‍⚕️ مرحبا שלום e\u0301 \u202etxt.exe"

# Each form: who posts it, where, and a valid submission to vary one field of.
FORMS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "compose": (
        "sender",
        "/compose",
        {
            "subject": "Subject",
            "text": "Text",
            "users": "{participant}",
            "user_groups": "",
            "org_units": "",
            "org_unit_groups": "",
            "reply_mode": "auto",
        },
    ),
    "feedback": ("participant", "/feedback/new", {"subject": "Subject", "text": "Text"}),
    "reply": ("participant", "/conversations/{private}/reply", {"text": "Text"}),
    "triage": (
        "handler",
        "/conversations/{ticket}/feedback",
        {"status": "PENDING", "priority": "HIGH", "assignee": ""},
    ),
    "settings": ("admin", "/settings", {"group": "{group}"}),
    "inbox": ("participant", "/inbox/actions", {"action": "read", "ids": "{private}"}),
    "login": ("anonymous", "/login", {"username": "sec_sender", "password": "x"}),
}

HOSTILE = {
    "empty": "",
    "blank": "   \t\n ",
    "long": "x" * (MAX_TEXT + 1),
    "nul": "a\x00b",
    "script": SCRIPT,
    "sql": SQL,
    "unicode": UNICODE,
    "control": "\x1b[31m\x07\x08",
}


def _fill(world: World, data: dict[str, Any]) -> dict[str, Any]:
    ids = {
        "participant": world.users["participant"].uid,
        "private": world.private.uid,
        "ticket": world.ticket.uid,
        "group": world.extra.get("group_uid", ""),
    }
    return {k: v.format(**ids) if isinstance(v, str) else v for k, v in data.items()}


def _form(app: Flask, world: World, name: str):  # type: ignore[no-untyped-def]
    """A client signed in as the form's user, the form's URL and a valid submission."""
    role, url, valid = FORMS[name]
    return world.client(app, role), _fill(world, {"u": url})["u"], _fill(world, valid)


@pytest.fixture
def world_with_group(world: World, app: Flask) -> World:
    r = app.test_client().get(
        "/api/configuration/feedbackRecipients", headers=world.auth("participant")
    )
    world.extra["group_uid"] = r.json["id"]
    return world


def _messages(db: Session) -> list[str]:
    db.expire_all()
    return list(db.scalars(select(Message.text).order_by(Message.id)))


def _check_refusal(resp, field: str, unchanged) -> None:  # type: ignore[no-untyped-def]
    html = resp.get_data(as_text=True)
    assert 400 <= resp.status_code < 500, (resp.status_code, html[:300])
    if resp.status_code == 422:
        # The form again, with a message by the field or in the summary at the top.
        assert "field-error" in html or "error-summary" in html, html[:2000]
    else:
        assert field in html or "security token" in html, html[:2000]
    unchanged()


@pytest.mark.parametrize("form_name", list(FORMS))
def test_each_field_with_each_hostile_value(
    app: Flask,
    world_with_group: World,
    db: Session,
    unchanged,
    form_name: str,
) -> None:
    world = world_with_group
    client, url, valid = _form(app, world, form_name)
    for value_name, field in itertools.product(HOSTILE, valid):
        data = {**valid, field: HOSTILE[value_name]}
        before = _messages(db)
        resp = client.post(url, data=data)
        assert resp.status_code < 500, (form_name, field, value_name)
        if resp.status_code >= 400:
            _check_refusal(resp, field, unchanged)
            continue
        unchanged(accepted=True)
        # Accepted: only values that are legitimate text for that field.
        if field in ("subject", "text") and form_name in ("compose", "feedback", "reply"):
            assert value_name in ("script", "sql", "unicode", "control")
            after = _messages(db)
            if field == "text":
                assert after[-1] == HOSTILE[value_name].strip("\n\r ")
            assert len(after) == len(before) + 1
            page = client.get(resp.headers["Location"])
            html = page.get_data(as_text=True)
            assert page.status_code == 200
            assert "<script>alert" not in html and "<img src=x" not in html


@pytest.mark.parametrize("form_name", ["compose", "feedback", "reply"])
def test_limits_are_named_next_to_the_field(
    app: Flask, world_with_group: World, unchanged, form_name: str
) -> None:
    world = world_with_group
    client, url, valid = _form(app, world, form_name)
    cases = [("text", "x" * (MAX_TEXT + 1), f"at most {MAX_TEXT:,}".replace(",", ""))]
    cases.append(("text", "", "required"))
    if "subject" in valid:
        cases += [("subject", "s" * (MAX_SUBJECT + 1), f"at most {MAX_SUBJECT}")]
        cases += [("subject", " ", "required")]
    for field, value, words in cases:
        resp = client.post(url, data={**valid, field: value})
        html = resp.get_data(as_text=True)
        assert resp.status_code == 422, (field, resp.status_code)
        assert 'class="field-error"' in html
        assert words.lower() in html.lower().replace(",", ""), (field, words)
        unchanged()


@pytest.mark.parametrize("form_name", list(FORMS))
def test_malformed_bodies(app: Flask, world_with_group: World, unchanged, form_name: str) -> None:
    world = world_with_group
    client, url, _ = _form(app, world, form_name)
    bodies = [
        # Not UTF-8 at all.
        (
            b"subject=\xff\xfe\xfa&text=\xc3\x28&status=\xe2\x82",
            "application/x-www-form-urlencoded",
        ),
        # Broken percent-encoding and repeated keys.
        (b"subject=%ZZ%&text=%&text=%00&&&==", "application/x-www-form-urlencoded"),
        # Deeply nested JSON where a form is expected.
        (b"[" * 20_000 + b"]" * 20_000, "application/json"),
        (b'{"subject": {"$gt": ""}, "text": [[[[["x"]]]]]}', "application/json"),
        # A multipart body without its boundary.
        (b"--x\r\nContent-Disposition: form-data\r\n\r\n", "multipart/form-data"),
        (b"", "application/x-www-form-urlencoded"),
    ]
    for raw, ctype in bodies:
        resp = client.post(url, data=raw, content_type=ctype)
        assert resp.status_code < 500, (form_name, raw[:30], resp.status_code)
        unchanged(accepted=resp.status_code < 400)


@pytest.mark.parametrize("form_name", ["compose", "feedback", "reply"])
def test_percent_escapes_that_are_not_utf8_are_refused_naming_the_field(
    app: Flask, world_with_group: World, unchanged, form_name: str
) -> None:
    """Werkzeug would store "%ED%A0%80" (an encoded surrogate) or "%FF" as literal text."""
    world = world_with_group
    client, url, valid = _form(app, world, form_name)
    for bad in (b"%FF", b"%ED%A0%80", b"ok%C3"):
        body = urlencode({k: v for k, v in valid.items() if k != "text"}).encode()
        resp = client.post(
            url, data=body + b"&text=" + bad, content_type="application/x-www-form-urlencoded"
        )
        assert resp.status_code == 400, (form_name, bad, resp.status_code)
        assert "text is not valid UTF-8" in resp.get_data(as_text=True)
        unchanged()


@pytest.mark.parametrize("form_name", list(FORMS))
def test_oversized_body_is_413(
    app: Flask, world_with_group: World, unchanged, form_name: str
) -> None:
    world = world_with_group
    client, url, valid = _form(app, world, form_name)
    resp = client.post(url, data={**valid, "text": "x" * MAX_CONTENT_LENGTH})
    assert resp.status_code == 413
    assert "too large" in resp.get_data(as_text=True)
    unchanged()
