"""The OpenAPI description: valid, served, and in step with the app's routes both ways."""

from __future__ import annotations

import re

from flask import Flask
from openapi_spec_validator import validate

from web import openapi

IGNORED_METHODS = {"HEAD", "OPTIONS"}


def _shape(path: str) -> str:
    """A path with every parameter written `{}` and no DHIS2 `.json` suffix."""
    path = re.sub(r"<(?:[^:>]+:)?[^>]+>", "{}", path)
    path = re.sub(r"\{[^}]*\}", "{}", path)
    return path.removesuffix(".json")


def _app_operations(app: Flask) -> set[tuple[str, str]]:
    ops = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/"):
            continue
        for method in rule.methods or ():
            if method not in IGNORED_METHODS:
                ops.add((method, _shape(rule.rule)))
    return ops


def _described_operations(doc: dict) -> set[tuple[str, str]]:
    ops = set()
    for path, item in doc["paths"].items():
        for method in item:
            if method != "parameters":
                ops.add((method.upper(), _shape(path)))
    return ops


def test_the_description_is_valid_openapi() -> None:
    validate(openapi.document())


def test_it_is_served_without_signing_in(app: Flask) -> None:
    r = app.test_client().get("/api/openapi.json")
    assert r.status_code == 200
    assert r.json == openapi.document()
    assert r.json["openapi"].startswith("3.")


def test_every_api_route_is_described_and_everything_described_exists(app: Flask) -> None:
    app_ops = _app_operations(app)
    described = _described_operations(openapi.document())
    assert app_ops - described == set(), "routes missing from web/openapi.py"
    assert described - app_ops == set(), "described operations the app does not have"


def test_documented_limits_are_the_enforced_ones() -> None:
    from service.messaging import MAX_SUBJECT, MAX_TEXT
    from web.app import MAX_CONTENT_LENGTH

    new = openapi.document()["components"]["schemas"]["NewMessage"]["properties"]
    assert new["subject"]["maxLength"] == MAX_SUBJECT
    assert new["text"]["maxLength"] == MAX_TEXT
    assert f"{MAX_CONTENT_LENGTH // 1024} KiB" in openapi.document()["info"]["description"]
