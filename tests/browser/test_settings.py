"""Administrators' settings: the feedback group and user administration; my account; lockout."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from playwright.sync_api import expect

from tests.browser.conftest import (
    ADMIN,
    FEEDBACK_GROUP_NAME,
    FEEDBACK_GROUP_UID,
    PASSWORD,
    Browser,
    screenshot,
    sign_in,
    sign_out,
)

pytestmark = pytest.mark.e2e

MANAGED, MANAGED_NAME = "moyamba_dhmt", "Moyamba DHMT Officer"  # administered by admin
OWN_ACCOUNT = "moyamba_me"  # changes their own password
LOCKED = "kono_me"  # locked out by wrong passwords


def bad_sign_in(page, username: str, password: str) -> None:  # type: ignore[no-untyped-def]
    page.goto("/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def refused(page) -> None:  # type: ignore[no-untyped-def]
    expect(page.get_by_role("alert")).to_contain_text(
        "The username or password is not right. Please try again."
    )


@pytest.fixture
def restore_feedback_group(base_url: str) -> Iterator[None]:
    """Whatever the test does, feedback goes to the demo's group again afterwards."""
    yield
    resp = requests.post(
        f"{base_url}/api/configuration/feedbackRecipients",
        data=FEEDBACK_GROUP_UID,
        headers={"Content-Type": "text/plain"},
        auth=(ADMIN, PASSWORD),
        timeout=30,
    )
    assert resp.ok, resp.text


def test_administrator_chooses_the_feedback_group(
    browser: Browser, restore_feedback_group: None
) -> None:
    page = browser.signed_in(ADMIN)
    page.get_by_role("link", name="Settings").click()
    feedback = page.get_by_role("region", name="Feedback recipients")
    expect(feedback).to_contain_text(f"Currently: {FEEDBACK_GROUP_NAME}")
    screenshot(page, "settings")

    # Find a group by name and use it.
    finder = page.get_by_role("search", name="Find a user group")
    finder.get_by_label("Name or id").fill("malaria")
    finder.get_by_role("button", name="Find").click()
    page.get_by_role("button", name="Use Malaria program").click()
    expect(page.locator(".flashes")).to_contain_text(
        "Feedback now goes to the user group “Malaria program”."
    )
    expect(feedback).to_contain_text("Currently: Malaria program")

    # Back to the feedback group, chosen with the picker's search.
    page.get_by_label("Search user groups").fill("Feedback Message")
    feedback.locator(".picker-results button", has_text=FEEDBACK_GROUP_UID).click()
    expect(page.get_by_label("Feedback recipients user group")).to_have_value(FEEDBACK_GROUP_UID)
    feedback.get_by_role("button", name="Save").click()
    expect(page.locator(".flashes")).to_contain_text(
        f"Feedback now goes to the user group “{FEEDBACK_GROUP_NAME}”."
    )
    expect(feedback).to_contain_text(f"Currently: {FEEDBACK_GROUP_NAME}")
    # A name that is no group is refused next to the field, and what was typed stays (submitted
    # with Enter here; test_typed_group_then_save_click_submits clicks Save after typing).
    page.get_by_label("Feedback recipients user group").fill("No such group at all")
    page.get_by_label("Feedback recipients user group").press("Enter")
    expect(page.locator("#group-error")).to_contain_text(
        "No user group has the id or name “No such group at all”."
    )
    expect(page.get_by_label("Feedback recipients user group")).to_have_value(
        "No such group at all"
    )


def test_typed_group_then_save_click_submits(
    browser: Browser, restore_feedback_group: None
) -> None:
    page = browser.signed_in(ADMIN)
    page.goto("/settings")
    field = page.get_by_label("Feedback recipients user group")
    field.fill("Malaria program")
    page.get_by_role("region", name="Feedback recipients").get_by_role(
        "button", name="Save"
    ).click()
    expect(page.locator(".flashes")).to_contain_text(
        "Feedback now goes to the user group “Malaria program”.", timeout=5_000
    )


def test_settings_are_for_administrators_only(browser: Browser) -> None:
    page = browser.signed_in("national3")
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()
    expect(page.get_by_role("link", name="Settings")).to_have_count(0)
    page.goto("/settings")
    expect(page.get_by_role("heading", name="You may not do this", level=1)).to_be_visible()


def test_administrator_manages_a_user(browser: Browser) -> None:
    admin = browser.signed_in(ADMIN)
    admin.goto("/settings")
    users = admin.get_by_role("search", name="Find users")
    users.get_by_label("Username, name or id").fill("Moyamba DHMT")
    users.get_by_role("button", name="Find users").click()
    expect(admin.get_by_role("heading", name="Users", level=1)).to_be_visible()
    found = admin.locator("#user-results > li")
    expect(found).to_have_count(1)
    screenshot(admin, "users")
    found.get_by_role("link", name=MANAGED_NAME).click()
    expect(admin.locator("#user-username")).to_have_text(MANAGED)
    expect(admin.locator("#user-status")).to_have_text("Enabled")
    expect(admin.locator("#user-roles")).to_have_text("None")

    # Disabled (after a confirmation): the user can no longer sign in.
    admin.get_by_role("button", name="Disable").click()
    expect(admin.locator(".flashes")).to_contain_text(
        f"{MANAGED_NAME} is disabled and can no longer sign in."
    )
    expect(admin.locator("#user-status")).to_contain_text("Disabled")
    assert ("confirm", f"Disable {MANAGED_NAME}? They can no longer sign in.") in browser.dialogs
    other = browser.page()
    bad_sign_in(other, MANAGED, PASSWORD)
    refused(other)

    # Enabled with a new password and both roles: they sign in with it and see the settings.
    admin.get_by_role("button", name="Enable").click()
    expect(admin.locator("#user-status")).to_have_text("Enabled")
    admin.get_by_label("New password", exact=True).fill("fresh-pass-42")
    admin.get_by_label("New password again").fill("fresh-pass-4")
    admin.get_by_role("button", name="Set password").click()
    expect(admin.locator("#confirm_password-error")).to_contain_text(
        "The two new passwords are not the same."
    )
    admin.get_by_label("New password", exact=True).fill("fresh-pass-42")
    admin.get_by_label("New password again").fill("fresh-pass-42")
    admin.get_by_role("button", name="Set password").click()
    expect(admin.locator(".flashes")).to_contain_text(
        f"The password of {MANAGED_NAME} was changed."
    )
    admin.get_by_role("button", name="Make broadcaster").click()
    expect(admin.locator("#user-roles")).to_have_text("Broadcaster")
    admin.get_by_role("button", name="Make administrator").click()
    expect(admin.locator("#user-roles")).to_have_text("Administrator, Broadcaster")

    bad_sign_in(other, MANAGED, PASSWORD)
    refused(other)
    sign_in(other, MANAGED, "fresh-pass-42")
    expect(other.get_by_role("link", name="Settings")).to_be_visible()

    admin.get_by_role("button", name="Remove administrator role").click()
    admin.get_by_role("button", name="Remove broadcaster role").click()
    expect(admin.locator("#user-roles")).to_have_text("None")
    other.goto("/settings")
    expect(other.get_by_role("heading", name="You may not do this", level=1)).to_be_visible()

    # Administrators cannot lock themselves out.
    admin.goto("/settings/users?q=admin")
    admin.locator("#user-results").get_by_role("link", name="John Traore").click()
    expect(admin.locator("#self-note")).to_be_visible()
    expect(admin.get_by_role("button", name="Disable")).to_have_count(0)
    expect(admin.get_by_role("button", name="Remove administrator role")).to_have_count(0)


def test_user_changes_their_own_password(browser: Browser) -> None:
    page = browser.signed_in(OWN_ACCOUNT)
    page.locator("#account-link").click()
    expect(page.get_by_role("heading", name="My account", level=1)).to_be_visible()
    expect(page.locator("#account-username")).to_have_text(OWN_ACCOUNT)
    screenshot(page, "account")
    form = page.locator("#change-password-form")
    form.get_by_label("Current password").fill("not-my-password")
    form.get_by_label("New password", exact=True).fill("my-new-pass-1")
    form.get_by_label("New password again").fill("my-new-pass-1")
    form.get_by_role("button", name="Change password").click()
    expect(page.locator("#current_password-error")).to_be_visible()
    # Passwords are never sent back.
    expect(form.get_by_label("Current password")).to_have_value("")

    form.get_by_label("Current password").fill(PASSWORD)
    form.get_by_label("New password", exact=True).fill("my-new-pass-1")
    form.get_by_label("New password again").fill("my-new-pass-1")
    form.get_by_role("button", name="Change password").click()
    expect(page.locator(".flashes")).to_contain_text("Your password was changed.")

    sign_out(page)
    bad_sign_in(page, OWN_ACCOUNT, PASSWORD)
    refused(page)
    sign_in(page, OWN_ACCOUNT, "my-new-pass-1")


def test_repeated_failures_lock_the_username(browser: Browser) -> None:
    page = browser.page()
    for n in range(5):
        bad_sign_in(page, LOCKED, f"wrong-{n}")
        refused(page)
    # Locked: even the right password is not checked now.
    bad_sign_in(page, LOCKED, PASSWORD)
    expect(page.get_by_role("alert")).to_contain_text(
        "Too many failed sign-in attempts. Wait 15 minutes and try again."
    )
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
    # Another username from the same address is not locked by it.
    sign_in(page, "kono_dhmt")
