"""Input every view can trust: checked once, before any view runs.

What no field may hold is refused here with a 400 naming it: NUL characters and unpaired
surrogates (PostgreSQL text cannot store them), %-escapes in a query string or form that are not
UTF-8, and JSON nested deeper than any request of this API needs (Python's parser would
otherwise exhaust its recursion limit). Over-long bodies are refused by MAX_CONTENT_LENGTH (413),
whether or not they say their length. Field-specific rules (lengths, required values) stay with
the service layer.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

from flask import Flask, request
from werkzeug.exceptions import RequestEntityTooLarge

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


def _check_unsized_body() -> None:
    """A body sent without a Content-Length (chunked) is held to the same limit as one with it.

    Werkzeug stops reading such a stream at MAX_CONTENT_LENGTH without saying so, which would
    hand the views a silently cut body; read it here (cached for the views and the form parser)
    and refuse it when it reaches the limit."""
    limit = request.max_content_length
    if request.content_length is not None or limit is None:
        return
    if len(request.get_data(cache=True)) >= limit:
        raise RequestEntityTooLarge()


def _undecodable(raw: bytes) -> str | None:
    """The name of the first field of a query string or form body whose %-escapes are not UTF-8
    (Werkzeug would keep them as literal "%FF" text rather than refuse them)."""
    for pair in raw.split(b"&"):
        name, _, value = pair.partition(b"=")
        for part in (name, value):
            try:
                unquote_to_bytes(part.replace(b"+", b" ")).decode("utf-8")
            except UnicodeDecodeError:
                return unquote_to_bytes(name).decode("utf-8", "replace") or "query"
    return None


def _refuse_undecodable(name: str) -> InvalidInput:
    return InvalidInput(f"{name} is not valid UTF-8 text.", field=name)


def check_request() -> None:
    _check_unsized_body()
    if (name := _undecodable(request.query_string)) is not None:
        raise _refuse_undecodable(name)
    if request.mimetype == "application/x-www-form-urlencoded" and (
        name := _undecodable(request.get_data(cache=True))
    ):
        raise _refuse_undecodable(name)
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
