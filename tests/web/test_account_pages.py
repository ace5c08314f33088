# ruff: noqa: F811  (the fixtures imported from test_pages.py are, by design, test parameters)
"""My account, the administrators' user pages and the sign-in lockout, through Flask's test client
on PostgreSQL and SQLite. The fixtures and page checks are those of test_pages.py: every page
fetched through `page()` or `checked()` is checked for one h1, unique ids, labels and CSRF tokens.
"""

from __future__ import annotations

import re

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service import login_throttle as throttle
from service.models import LoginFailure, User
from service.passwords import verify_password
from tests.web.test_pages import (  # noqa: F401  (fixtures, found by pytest by name)
    PASSWORD,
    _no_server_errors,
    app,
    checked,
    csrf_from,
    make_app,
    page,
    person,
    publisher,
    signed_in,
)

NEW_PASSWORD = "a brand new one 2"


def fresh(db: Session, user: User) -> User:
    db.expire_all()
    got = db.get(User, user.id)
    assert got is not None
    return got


def no_passwords_in(html: str, *passwords: str) -> None:
    """Passwords are never sent back: every password control is empty."""
    for p in passwords:
        assert p not in html
    for control in re.findall(r'<input[^>]*type="password"[^>]*>', html):
        assert 'value="' not in control or 'value=""' in control, control


# ---------------------------------------------------------------------------------------------
# My account


def test_account_page_changes_my_password(db: Session, app: Flask) -> None:
    me = person(db, "ama", first_name="Ama", surname="Kamara")
    client = signed_in(app, me)
    html = page(client, "/")
    assert 'id="account-link" href="/account"' in html
    html = page(client, "/account")
    assert 'id="account-username">ama<' in html
    for name in ("current_password", "new_password", "confirm_password"):
        assert f'id="{name}"' in html
    data = {
        "current_password": PASSWORD,
        "new_password": NEW_PASSWORD,
        "confirm_password": NEW_PASSWORD,
    }
    resp = client.post("/account", data=data)
    assert resp.status_code == 302 and resp.headers["Location"] == "/account"
    assert "Your password was changed." in page(client, "/account")
    assert verify_password(NEW_PASSWORD, fresh(db, me).password_hash)
    # The new password signs in; the old one no longer does.
    resp = app.test_client().post("/login", data={"username": "ama", "password": PASSWORD})
    assert resp.status_code == 422
    assert (
        app.test_client()
        .post("/login", data={"username": "ama", "password": NEW_PASSWORD})
        .status_code
        == 302
    )


def test_account_errors_are_next_to_the_field(db: Session, app: Flask) -> None:
    me = person(db)
    client = signed_in(app, me)
    before = fresh(db, me).password_hash

    def post(current: str, new: str, confirm: str) -> str:
        data = {"current_password": current, "new_password": new, "confirm_password": confirm}
        html = checked(client.post("/account", data=data), 422)
        no_passwords_in(html, *(p for p in (current, new, confirm) if len(p) > 3))
        return html

    html = post("not my password", NEW_PASSWORD, NEW_PASSWORD)
    assert 'id="current_password-error"' in html and "current password is not right" in html
    assert 'aria-invalid="true"' in html and 'href="#current_password"' in html
    html = post(PASSWORD, NEW_PASSWORD, NEW_PASSWORD + "x")
    assert 'id="confirm_password-error"' in html and "not the same" in html
    html = post(PASSWORD, "short", "short")
    assert 'id="new_password-error"' in html and "at least 8 characters" in html
    html = post(PASSWORD, PASSWORD, PASSWORD)
    assert 'id="new_password-error"' in html and "different from the current one" in html
    html = post("", "", "")
    assert "Enter your current password." in html and "Enter the new password." in html
    assert fresh(db, me).password_hash == before
    # Signed out: the sign-in page, not the account.
    resp = app.test_client().get("/account")
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/login")


def test_account_form_needs_its_csrf_token(db: Session, app: Flask) -> None:
    app.config["WTF_CSRF_ENABLED"] = True
    me = person(db)
    client = app.test_client()
    token = csrf_from(page(client, "/login"))
    client.post("/login", data={"username": me.username, "password": PASSWORD, "csrf_token": token})
    data = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    data["confirm_password"] = NEW_PASSWORD
    assert client.post("/account", data=data).status_code == 400
    assert verify_password(PASSWORD, fresh(db, me).password_hash)
    data["csrf_token"] = csrf_from(page(client, "/account"))
    assert client.post("/account", data=data).status_code == 302


# ---------------------------------------------------------------------------------------------
# Users (administrators)


def test_user_pages_are_for_administrators_only(db: Session, app: Flask) -> None:
    target = person(db)
    client = signed_in(app, person(db, broadcaster=True))
    assert "Only administrators may manage users." in page(client, "/settings/users", 403)
    page(client, f"/settings/users/{target.uid}", 403)
    for action in ("disable", "grant_admin", "grant_broadcaster"):
        resp = client.post(f"/settings/users/{target.uid}/access", data={"action": action})
        assert resp.status_code == 403
    data = {"new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD}
    assert client.post(f"/settings/users/{target.uid}/password", data=data).status_code == 403
    target = fresh(db, target)
    assert not (target.disabled or target.is_admin or target.is_broadcaster)
    assert verify_password(PASSWORD, target.password_hash)
    resp = app.test_client().get("/settings/users")
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/login")


def test_find_users_by_name_username_or_id_in_pages(db: Session, app: Flask) -> None:
    admin = person(db, "admin", admin=True)
    hawa = person(db, "hbangura", first_name="Hawa", surname="Bangura")
    for i in range(30):
        person(db, f"nurse{i:02d}", first_name="Nurse", surname=f"N{i:02d}")
    client = signed_in(app, admin)
    assert 'action="/settings/users"' in page(client, "/settings")
    html = page(client, "/settings/users?q=bangura")
    assert f'id="user-{hawa.uid}"' in html and "Hawa Bangura" in html and "(1 user)" in html
    assert "nurse" not in html
    assert f'id="user-{hawa.uid}"' in page(client, f"/settings/users?q={hawa.uid}")
    assert f'id="user-{hawa.uid}"' in page(client, "/settings/users?q=HAWA+bang")
    html = page(client, "/settings/users?q=nurse")
    assert "Page 1 of 2" in html and "(30 users)" in html and 'rel="next"' in html
    assert html.count('class="user-row') == 25
    html = page(client, "/settings/users?q=nurse&page=2")
    assert html.count('class="user-row') == 5 and "nurse29" in html
    # Past the end goes to the last page; nonsense and wildcards are just text.
    resp = client.get("/settings/users?q=nurse&page=9")
    assert resp.status_code == 302 and "page=2" in resp.headers["Location"]
    assert "No user matches" in page(client, "/settings/users?q=%25_%5C")
    assert "Page 1 of 1" in page(client, "/settings/users?page=abc&q=admin")
    html = page(client, "/settings/users?q=<script>")
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_administrator_disables_and_enables_a_user(db: Session, app: Flask) -> None:
    admin = person(db, admin=True)
    target = person(db, first_name="Musa", surname="Sesay")
    target_client = signed_in(app, target)
    client = signed_in(app, admin)
    html = page(client, f"/settings/users/{target.uid}?back=/settings/users%3Fq%3Dmusa")
    assert 'id="action-disable"' in html and "data-confirm=" in html
    assert 'href="/settings/users?q=musa"' in html  # back to the search
    resp = client.post(
        f"/settings/users/{target.uid}/access",
        data={"action": "disable", "back": "/settings/users?q=musa"},
    )
    assert resp.status_code == 302
    assert resp.headers["Location"].startswith(f"/settings/users/{target.uid}?back=")
    html = page(client, resp.headers["Location"])
    assert "Musa Sesay is disabled and can no longer sign in." in html
    assert 'id="action-enable"' in html and 'id="action-disable"' not in html
    assert fresh(db, target).disabled
    # Signed out at the next request, and cannot sign in again.
    assert target_client.get("/").status_code == 302
    resp = app.test_client().post(
        "/login", data={"username": target.username, "password": PASSWORD}
    )
    assert resp.status_code == 422
    client.post(f"/settings/users/{target.uid}/access", data={"action": "enable"})
    assert not fresh(db, target).disabled
    assert "is enabled and can sign in again" in page(client, f"/settings/users/{target.uid}")
    signed_in(app, target)
    # Nonsense actions and unknown users.
    resp = client.post(f"/settings/users/{target.uid}/access", data={"action": "delete"})
    assert resp.status_code == 302
    assert "Choose what to change" in page(client, f"/settings/users/{target.uid}")
    page(client, "/settings/users/nosuchuser1", 404)
    assert (
        client.post("/settings/users/nosuchuser1/access", data={"action": "disable"}).status_code
        == 404
    )


def test_administrator_grants_and_revokes_roles(db: Session, app: Flask) -> None:
    admin = person(db, admin=True)
    target = person(db)
    client = signed_in(app, admin)

    def act(action: str) -> User:
        resp = client.post(f"/settings/users/{target.uid}/access", data={"action": action})
        assert resp.status_code == 302
        return fresh(db, target)

    assert act("grant_admin").is_admin
    html = page(client, f"/settings/users/{target.uid}")
    assert "is now an administrator" in html and 'id="action-revoke_admin"' in html
    assert 'id="user-roles">Administrator<' in html
    # The new administrator may now use the settings.
    page(signed_in(app, target), "/settings/users")
    assert not act("revoke_admin").is_admin
    assert act("grant_broadcaster").is_broadcaster
    assert "may send to any organisation unit" in page(client, f"/settings/users/{target.uid}")
    assert not act("revoke_broadcaster").is_broadcaster
    page(signed_in(app, target), "/settings/users", 403)


def test_administrators_cannot_lock_themselves_out(db: Session, app: Flask) -> None:
    admin = person(db, admin=True)
    client = signed_in(app, admin)
    html = page(client, f"/settings/users/{admin.uid}")
    assert 'id="self-note"' in html
    assert 'id="action-disable"' not in html and 'id="action-revoke_admin"' not in html
    for action, text in (
        ("disable", "You cannot disable your own account."),
        ("revoke_admin", "You cannot remove your own administrator role"),
    ):
        client.post(f"/settings/users/{admin.uid}/access", data={"action": action})
        assert text in page(client, f"/settings/users/{admin.uid}")
    admin = fresh(db, admin)
    assert admin.is_admin and not admin.disabled
    # Another administrator may.
    other = signed_in(app, person(db, admin=True))
    other.post(f"/settings/users/{admin.uid}/access", data={"action": "revoke_admin"})
    assert not fresh(db, admin).is_admin


def test_administrator_resets_a_password(db: Session, app: Flask) -> None:
    admin = person(db, admin=True)
    target = person(db, "musa")
    client = signed_in(app, admin)
    url = f"/settings/users/{target.uid}/password"
    html = checked(
        client.post(url, data={"new_password": NEW_PASSWORD, "confirm_password": "other one 3"}),
        422,
    )
    assert 'id="confirm_password-error"' in html and "not the same" in html
    no_passwords_in(html, NEW_PASSWORD, "other one 3")
    html = checked(
        client.post(url, data={"new_password": "short", "confirm_password": "short"}), 422
    )
    assert 'id="new_password-error"' in html and "at least 8 characters" in html
    html = checked(client.post(url, data={"new_password": "", "confirm_password": ""}), 422)
    assert "Enter the new password." in html
    assert verify_password(PASSWORD, fresh(db, target).password_hash)
    resp = client.post(url, data={"new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD})
    assert resp.status_code == 302
    assert "The password of musa was changed." in page(client, resp.headers["Location"])
    resp = app.test_client().post("/login", data={"username": "musa", "password": NEW_PASSWORD})
    assert resp.status_code == 302


def test_user_actions_need_the_csrf_token(db: Session, app: Flask) -> None:
    app.config["WTF_CSRF_ENABLED"] = True
    admin, target = person(db, admin=True), person(db)
    client = app.test_client()
    token = csrf_from(page(client, "/login"))
    client.post(
        "/login", data={"username": admin.username, "password": PASSWORD, "csrf_token": token}
    )
    url = f"/settings/users/{target.uid}/access"
    assert client.post(url, data={"action": "disable"}).status_code == 400
    assert not fresh(db, target).disabled
    token = csrf_from(page(client, f"/settings/users/{target.uid}"))
    assert client.post(url, data={"action": "disable", "csrf_token": token}).status_code == 302
    assert fresh(db, target).disabled


# ---------------------------------------------------------------------------------------------
# The sign-in lockout


def _fail(client: FlaskClient, username: str, times: int, status: int = 422) -> str:
    html = ""
    for _ in range(times):
        resp = client.post("/login", data={"username": username, "password": "wrong password"})
        assert resp.status_code == status, resp.status_code
        html = resp.get_data(as_text=True)
    return html


def test_repeated_failures_lock_the_username(db: Session, app: Flask) -> None:
    ama = person(db, "ama")
    person(db, "musa")
    client = app.test_client()
    _fail(client, "ama", throttle.USER_LIMIT)
    # Locked: even the right password is refused, without being checked.
    resp = client.post("/login", data={"username": "ama", "password": PASSWORD})
    html = checked(resp, 429)
    assert "Too many failed sign-in attempts. Wait 15 minutes and try again." in html
    assert 'value="ama"' in html and PASSWORD not in html
    # Another username from the same address is not locked, nor "ama" elsewhere after the lock.
    assert client.post("/login", data={"username": "musa", "password": PASSWORD}).status_code == 302
    assert ama.uid


def test_a_success_clears_the_username_failures(db: Session, app: Flask) -> None:
    person(db, "ama")
    client = app.test_client()
    _fail(client, "ama", throttle.USER_LIMIT - 1)
    assert client.post("/login", data={"username": "ama", "password": PASSWORD}).status_code == 302
    client.post("/logout")
    _fail(client, "ama", throttle.USER_LIMIT - 1)
    assert client.post("/login", data={"username": "ama", "password": PASSWORD}).status_code == 302


def test_repeated_failures_lock_the_address(db: Session, app: Flask) -> None:
    person(db, "ama")
    spray = app.test_client()
    for i in range(throttle.IP_LIMIT):
        resp = spray.post(
            "/login",
            data={"username": f"guess{i}", "password": "wrong password"},
            environ_base={"REMOTE_ADDR": "10.0.0.9"},
        )
        assert resp.status_code == 422
    resp = spray.post(
        "/login",
        data={"username": "ama", "password": PASSWORD},
        environ_base={"REMOTE_ADDR": "10.0.0.9"},
    )
    assert resp.status_code == 429
    resp = app.test_client().post(
        "/login",
        data={"username": "ama", "password": PASSWORD},
        environ_base={"REMOTE_ADDR": "10.0.0.10"},
    )
    assert resp.status_code == 302
    # The table holds one row per key that failed, no more.
    assert db.scalar(select(func.count()).select_from(LoginFailure)) == throttle.IP_LIMIT + 1


HOSTILE = [
    "",
    "   ",
    "x" * 20_000,
    "a\x00b",
    "<script>alert(1)</script>",
    "' OR 1=1 --",
    "\u202egnp.exe",
]


def test_hostile_input_to_the_new_pages_is_a_4xx_or_a_form_message(db: Session, app: Flask) -> None:
    admin, target = person(db, admin=True), person(db)
    client = signed_in(app, admin)
    for value in HOSTILE:
        for url, data in (
            (
                "/account",
                {"current_password": value, "new_password": value, "confirm_password": value},
            ),
            (
                f"/settings/users/{target.uid}/password",
                {"new_password": value, "confirm_password": value},
            ),
            (f"/settings/users/{target.uid}/access", {"action": value, "back": value}),
            ("/inbox/actions", {"action": "status", "set_status": value, "ids": value}),
            ("/compose", {"action": "count", "users": value, "org_units": value}),
        ):
            resp = client.post(url, data=data)
            assert resp.status_code < 500, (url, value)
            assert "<script>alert" not in resp.get_data(as_text=True)
        for url in ("/settings/users", "/compose/recipient-count", "/unread-counts"):
            resp = client.get(url, query_string={"q": value, "users": value, "page": value})
            assert resp.status_code < 500, (url, value)
            # JSON is never read as HTML (nosniff); app.js shows its text with textContent.
            if resp.mimetype != "application/json":
                assert "<script>alert" not in resp.get_data(as_text=True)
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
    # (Some of the values are acceptable passwords, so the reset may have been done.)
    assert not fresh(db, target).disabled
