"""The documented limits (README "Limits"), enforced through the JSON API: each refusal is a 4xx
naming the field, and nothing is written."""

from __future__ import annotations

import io
import json

import pytest
from flask import Flask

from service.messaging import MAX_RECIPIENT_IDS, MAX_SUBJECT, MAX_TEXT
from tests.security.conftest import World
from web.app import MAX_CONTENT_LENGTH

API = "/api/messageConversations"


def _send(world: World, **body: object) -> dict:
    base = {"subject": "S", "text": "T", "users": [{"id": world.users["participant"].uid}]}
    return {**base, **body}


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"subject": "x" * (MAX_SUBJECT + 1)}, 400, "subject"),
        ({"subject": "   "}, 400, "subject"),
        ({"text": "x" * (MAX_TEXT + 1)}, 400, "text"),
        ({"text": ""}, 400, "text"),
        ({"subject": "nul\x00inside"}, 400, "subject"),
        ({"text": "lone \ud800 surrogate"}, 400, "text"),
        (
            {"users": [{"id": f"u{i:010d}"} for i in range(MAX_RECIPIENT_IDS + 1)]},
            400,
            "recipients",
        ),
        ({"users": [{"id": "a\x00b"}]}, 400, "users[0].id"),
        ({"ouMode": "EVERYTHING"}, 400, "ouMode"),
        ({"users": "everyone"}, 400, "users"),
    ],
)
def test_send_limits(
    app: Flask, world: World, unchanged, body: dict, code: int, field: str
) -> None:
    r = app.test_client().post(API, json=_send(world, **body), headers=world.auth("sender"))
    assert r.status_code == code, r.json
    assert r.json["field"] == field and r.json["message"]
    unchanged()


def test_the_limits_themselves_are_accepted(app: Flask, world: World) -> None:
    body = _send(world, subject="s" * MAX_SUBJECT, text="t" * MAX_TEXT)
    r = app.test_client().post(API, json=body, headers=world.auth("sender"))
    assert r.status_code == 201, r.json


def test_oversized_body_is_413_with_a_clear_json_message(
    app: Flask, world: World, unchanged
) -> None:
    big = json.dumps(_send(world, text="x" * MAX_CONTENT_LENGTH))
    r = app.test_client().post(
        API, data=big, content_type="application/json", headers=world.auth("sender")
    )
    assert r.status_code == 413
    assert r.is_json and "1024 KiB" in r.json["message"]
    r = app.test_client().post(
        f"{API}/{world.private.uid}",
        data="y" * (MAX_CONTENT_LENGTH + 1),
        content_type="text/plain",
        headers=world.auth("sender"),
    )
    assert r.status_code == 413 and r.is_json
    unchanged()


@pytest.mark.parametrize("over", [1, 1024 * 1024])
def test_a_chunked_body_over_the_limit_is_413_too(
    app: Flask, world: World, unchanged, over: int
) -> None:
    """Without a Content-Length (Transfer-Encoding: chunked, which gunicorn and the development
    server pass on as a terminated stream) the limit holds as it does with one."""
    big = json.dumps(_send(world, text="x" * MAX_CONTENT_LENGTH)).encode()
    for path, body, mimetype in (
        (API, big[: MAX_CONTENT_LENGTH + over], "application/json"),
        (f"{API}/{world.private.uid}", b"y" * (MAX_CONTENT_LENGTH + over), "text/plain"),
    ):
        r = app.test_client().post(
            path,
            input_stream=io.BytesIO(body),
            content_type=mimetype,
            headers={**world.auth("sender"), "Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True},
        )
        assert r.status_code == 413, (path, r.status_code, r.get_data()[:200])
        assert r.is_json and "1024 KiB" in r.json["message"]
    unchanged()


def test_query_parameters_that_are_not_utf8_are_refused_naming_them(
    app: Flask, world: World, unchanged
) -> None:
    client = app.test_client()
    for query, field in (
        ("subject=bad%FFx", "subject"),
        ("subject=ok&x%ED%A0%80=1", "x\ufffd\ufffd\ufffd"),
    ):
        r = client.post(
            f"{API}/feedback?{query}",
            data="Text",
            content_type="text/plain",
            headers=world.auth("participant"),
        )
        assert r.status_code == 400, (query, r.json)
        assert r.json["field"] == field
        assert "not valid UTF-8" in r.json["message"]
    r = client.get(f"{API}?queryString=%FF", headers=world.auth("participant"))
    assert r.status_code == 400 and r.json["field"] == "queryString"
    unchanged()


def test_deeply_nested_and_malformed_json_are_400(app: Flask, world: World, unchanged) -> None:
    client = app.test_client()
    for raw in (b"[" * 50_000 + b"]" * 50_000, b'{"subject": ', b"\xff\xfe{}", b"null", b"[1,2]"):
        r = client.post(
            API, data=raw, content_type="application/json", headers=world.auth("sender")
        )
        assert r.status_code == 400, (raw[:20], r.status_code, r.get_data()[:200])
        assert r.json["field"] == "body", r.json
    deep = {"subject": "S", "text": "T", "users": [{"id": [[[[[[[[["x"]]]]]]]]]}]}
    r = client.post(API, json=deep, headers=world.auth("sender"))
    assert r.status_code == 400 and "nested" in r.json["message"]
    unchanged()


def test_too_many_ids_in_bulk_actions(app: Flask, world: World, unchanged) -> None:
    client = app.test_client()
    ids = [world.private.uid] * (MAX_RECIPIENT_IDS + 1)
    r = client.post(f"{API}/read", json=ids, headers=world.auth("participant"))
    assert r.status_code == 400 and r.json["field"] == "body"
    query = "&".join(f"mc={world.private.uid}" for _ in range(MAX_RECIPIENT_IDS + 1))
    r = client.delete(f"{API}?{query}", headers=world.auth("participant"))
    assert r.status_code == 400 and r.json["field"] == "mc"
    unchanged()


@pytest.mark.parametrize(
    "url",
    [
        "/api/userLookup?query=ab%00",
        "/api/userGroups?query=%00",
        "/api/organisationUnits?query=%00",
        "/api/organisationUnits?level=abc",
        "/api/messageConversations?queryString=%00",
        "/api/messageConversations?queryString=" + "q" * 201,
        "/api/messageConversations/abc%00def",
        "/api/messageConversations?pageSize=501",
    ],
)
def test_hostile_query_values_are_400_naming_the_parameter(
    app: Flask, world: World, url: str
) -> None:
    r = app.test_client().get(url, headers=world.auth("participant"))
    assert r.status_code == 400, (r.status_code, r.json)
    assert r.json["field"]


def test_nul_in_basic_auth_username_is_just_a_failed_sign_in(app: Flask) -> None:
    import base64

    token = base64.b64encode(b"adm\x00in:whatever").decode()
    r = app.test_client().get("/api/me", headers={"Authorization": f"Basic {token}"})
    assert r.status_code == 401
