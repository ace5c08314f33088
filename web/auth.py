"""Who is calling: session login (pages and API), HTTP Basic auth and DHIS2 personal access tokens
(`Authorization: ApiToken d2pat_…`, API)."""

from __future__ import annotations

from typing import Any

from flask import Flask, Request, g
from flask_login import LoginManager, UserMixin, current_user
from sqlalchemy import select
from sqlalchemy.orm import lazyload

from service import api_tokens
from service.models import User
from service.passwords import verify_password

login_manager = LoginManager()
login_manager.login_view = "pages.login"
login_manager.session_protection = "basic"


class CurrentUser(UserMixin):
    """The signed-in user as the web layer sees it: ids and flags, re-read every request."""

    def __init__(self, user: User) -> None:
        # The ORM object stays referenced for the request, so that the request's session (whose
        # identity map holds objects weakly) answers a later `get` of the caller without a query.
        self.user = user
        self.id = user.uid  # Flask-Login stores this in the session
        self.pk = user.id
        self.uid = user.uid
        self.username = user.username
        self.display_name = user.display_name
        self.is_admin = user.is_admin
        self.is_broadcaster = user.is_broadcaster


def _session() -> Any:
    from web.app import db

    return db()


@login_manager.user_loader
def _load_user(uid: str) -> CurrentUser | None:
    # The caller's org units are loaded only when a request needs them (sending rights).
    user = _session().scalar(select(User).where(User.uid == uid).options(lazyload(User.org_units)))
    if user is None or user.disabled:
        return None
    return CurrentUser(user)


@login_manager.request_loader
def _load_from_request(request: Request) -> CurrentUser | None:
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "apitoken":
        user = api_tokens.authenticate(_session(), credential.strip())
        if user is None:
            g.auth_error = "The API token is invalid, expired or revoked."
            return None
        g.auth_method = "token"
        return CurrentUser(user)
    auth = request.authorization
    if auth is None or auth.type != "basic" or not auth.username or auth.password is None:
        return None
    user = authenticate(auth.username, auth.password)
    if user is not None:
        g.auth_method = "basic"
    return user


def authenticate(username: str, password: str) -> CurrentUser | None:
    """The user with these credentials, or None. Disabled users cannot sign in."""
    if "\x00" in username or len(username) > 255:  # cannot be a stored username
        return None
    user = _session().scalar(
        select(User).where(User.username == username).options(lazyload(User.org_units))
    )
    ok = verify_password(password, user.password_hash if user else None)
    if user is None or not ok or user.disabled:
        return None
    return CurrentUser(user)


def me() -> CurrentUser:
    return current_user  # type: ignore[return-value]


def init_app(app: Flask) -> None:
    login_manager.init_app(app)
