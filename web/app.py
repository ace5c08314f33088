"""The application factory."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from flask import Flask, g
from flask_wtf.csrf import CSRFProtect
from sqlalchemy.orm import Session, sessionmaker

from service import logs
from service.config import Settings, load_settings
from service.db import make_engine, make_session_factory

csrf = CSRFProtect()
log = logging.getLogger(__name__)

# Bound request bodies: a message is at most 10,000 characters (40 KB of UTF-8 at worst) and at
# most 1,000 recipient ids; 1 MiB leaves room for forms and JSON overhead. Larger answers 413.
MAX_CONTENT_LENGTH = 1024 * 1024


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    """Build the app. Settings come from the environment unless given.

    `overrides` lets tests inject `session_factory` (a rolled-back session) and `publisher`
    (the boundary to the broker).
    """
    if settings is None:
        # A real process (gunicorn, `flask`): settings and logging come from the environment.
        settings = load_settings()
        logs.configure(settings.log_format, settings.log_level)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.session_cookie_secure,
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=12),
        MAX_CONTENT_LENGTH=MAX_CONTENT_LENGTH,
        WTF_CSRF_TIME_LIMIT=None,
    )
    app.extensions["settings"] = settings

    session_factory: sessionmaker[Session] | Any = overrides.get("session_factory")
    if session_factory is None:
        engine = make_engine(settings.database_url)
        session_factory = make_session_factory(engine)
        app.extensions["engine"] = engine
    app.extensions["session_factory"] = session_factory

    publisher = overrides.get("publisher")
    if publisher is None:
        from web.publisher import CeleryPublisher

        publisher = CeleryPublisher(settings)
    app.extensions["publisher"] = publisher

    from web import api, auth, cli, errors, guards, openapi, ops, pages

    # The input guards run before anything reads the body: they need its raw bytes (to refuse
    # %-escapes that are not UTF-8, and a chunked body past the limit), and the CSRF check would
    # otherwise parse the form first and leave them nothing to read.
    guards.init_app(app)
    csrf.init_app(app)
    auth.init_app(app)
    errors.init_app(app)
    api.init_app(app)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(pages.bp)
    cli.init_app(app)
    ops.init_app(app, settings, injected_sessions=overrides.get("session_factory") is not None)

    @app.teardown_appcontext
    def _close_session(_exc: BaseException | None) -> None:
        session: Session | None = g.pop("db", None)
        if session is not None:
            session.rollback()
            session.close()

    return app


def db() -> Session:
    """The request's session, opened on first use.

    The view commits; teardown rolls back whatever was left uncommitted.
    """
    if "db" not in g:
        from flask import current_app

        g.db = current_app.extensions["session_factory"]()
    return g.db  # type: ignore[no-any-return]
