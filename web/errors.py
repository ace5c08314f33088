"""Error handling: one place maps domain errors to HTTP, answering JSON (DHIS2's web-message
shape) under /api and an HTML page elsewhere. The 500 handler rolls the transaction back."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from service.errors import (
    Conflict,
    DomainError,
    Forbidden,
    InvalidInput,
    NotFound,
    UnknownReference,
)

log = logging.getLogger(__name__)

STATUS_FOR: list[tuple[type[DomainError], int]] = [
    (InvalidInput, 400),
    (Forbidden, 403),
    (NotFound, 404),
    (UnknownReference, 409),
    (Conflict, 409),
]


def status_for(exc: DomainError) -> int:
    for kind, code in STATUS_FOR:
        if isinstance(exc, kind):
            return code
    return 400


def wants_json() -> bool:
    return request.path.startswith("/api") or request.path.startswith("/health")


def web_message(code: int, message: str, **extra: Any) -> dict[str, Any]:
    """DHIS2's web-message body."""
    body: dict[str, Any] = {
        "httpStatus": HTTPStatus(code).phrase,
        "httpStatusCode": code,
        "status": "OK" if code < 400 else "ERROR",
        "message": message,
    }
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def json_error(code: int, message: str, field: str | None = None) -> Response:
    resp = jsonify(web_message(code, message, field=field))
    resp.status_code = code
    if code == 401:
        resp.headers["WWW-Authenticate"] = 'Basic realm="DHIS2 messaging"'
    return resp


def _rollback() -> None:
    session = g.get("db")
    if session is not None:
        session.rollback()


def init_app(app: Flask) -> None:
    @app.errorhandler(DomainError)
    def _domain(exc: DomainError) -> Any:
        _rollback()
        code = status_for(exc)
        if wants_json():
            return json_error(code, exc.message, exc.field)
        return render_template("error.html", code=code, message=exc.message), code

    @app.errorhandler(CSRFError)
    def _csrf(exc: CSRFError) -> Any:
        _rollback()
        message = "The form's security token is missing or expired; reload the page and try again."
        if wants_json():
            return json_error(400, message, "csrf_token")
        return render_template("error.html", code=400, message=message), 400

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Any:
        _rollback()
        code = exc.code or 500
        message = exc.description or HTTPStatus(code).phrase
        if code == 413:
            limit = current_app.config.get("MAX_CONTENT_LENGTH") or 0
            message = (
                f"The request is too large: bodies may be at most {limit // 1024} KiB "
                "(a message's text at most 10,000 characters)."
            )
        if wants_json():
            resp = json_error(code, message)
            if code == 405 and exc.get_response().headers.get("Allow"):
                resp.headers["Allow"] = exc.get_response().headers["Allow"]
            return resp
        return render_template("error.html", code=code, message=message), code

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        _rollback()
        log.exception("unhandled error on %s %s", request.method, request.path)
        message = "Something went wrong on our side; nothing was changed. Please try again."
        if wants_json():
            return json_error(500, message)
        return render_template("error.html", code=500, message=message), 500
