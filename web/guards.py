"""Input every view can trust: checked once, before any view runs.

What no field may hold is refused here with a 400 naming it: NUL characters and unpaired
surrogates (PostgreSQL text cannot store them), and JSON nested deeper than any request of this
API needs (Python's parser would otherwise exhaust its recursion limit). Over-long bodies are
refused earlier by MAX_CONTENT_LENGTH (413). Field-specific rules (lengths, required values)
stay with the service layer.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request

from service.errors import InvalidInput

# The deepest a legitimate body goes is an object holding a list of {"id": ...} objects.
MAX_JSON_DEPTH = 8
FORM_TYPES = {"application/x-www-form-urlencoded", "multipart/form-data"}


def bad_text(value: str) -> bool:
    """Whether `value` cannot be stored as PostgreSQL text (NUL, or not encodable as UTF-8)."""
    if "\x00" in value:
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _refuse(name: str) -> InvalidInput:
    return InvalidInput(
        f"{name} contains characters that are not allowed (NUL or invalid Unicode).", field=name
    )


def _walk(value: Any, path: str, depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise InvalidInput(
            f"The JSON body is nested too deeply (more than {MAX_JSON_DEPTH} levels).",
            field=path or "body",
        )
    if isinstance(value, str):
        if bad_text(value):
            raise _refuse(path or "body")
    elif isinstance(value, dict):
        for key, item in value.items():
            if bad_text(key):
                raise _refuse(path or "body")
            _walk(item, f"{path}.{key}" if path else key, depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _walk(item, f"{path}[{i}]", depth + 1)


def check_request() -> None:
    for source in (request.view_args or {}, request.args):
        for name, value in (
            source.items(multi=True) if hasattr(source, "getlist") else source.items()
        ):
            if isinstance(value, str) and bad_text(value):
                raise _refuse(name)
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    if request.mimetype in FORM_TYPES:
        for name, value in request.form.items(multi=True):
            if bad_text(value):
                raise _refuse(name)
        return
    raw = request.get_data(cache=True)
    if not raw:
        return
    if request.is_json:
        try:
            data = request.get_json(silent=True)  # cached for the view
        except RecursionError:
            raise InvalidInput(
                f"The JSON body is nested too deeply (more than {MAX_JSON_DEPTH} levels).",
                field="body",
            ) from None
        if data is not None:
            _walk(data, "", 0)
    elif b"\x00" in raw:
        raise _refuse("body")


def init_app(app: Flask) -> None:
    app.before_request(check_request)
