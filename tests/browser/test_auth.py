"""Signing in and out, as a person at the keyboard would."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import PASSWORD, Browser, screenshot, sign_out

pytestmark = pytest.mark.e2e


def test_bad_password_says_so_and_keeps_the_username(browser: Browser) -> None:
    page = browser.page()
    page.goto("/")
    # Not signed in: the inbox sends you to the sign-in page, and back after it.
    expect(page).to_have_url(re.compile(r"/login\?next=%2F$|/login\?next=/$"))
    screenshot(page, "login")
    page.get_by_label("Username").fill("national3")
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Sign in").click()
    summary = page.get_by_role("alert")
    expect(summary).to_contain_text("The username or password is not right. Please try again.")
    # The summary takes the focus (read out first); what was typed is kept, the password is not.
    expect(summary).to_be_focused()
    expect(page.get_by_label("Username")).to_have_value("national3")
    expect(page.get_by_label("Password")).to_have_value("")
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
    screenshot(page, "login-error")

    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Inbox", level=1)).to_be_visible()
    expect(page.locator(".site-user-name")).to_contain_text("National HMIS Officer")


def test_sign_out_ends_the_session(browser: Browser) -> None:
    page = browser.signed_in("national4")
    sign_out(page)
    expect(page.get_by_role("status")).to_contain_text("You have signed out.")
    page.goto("/compose")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    expect(page.get_by_role("heading", name="Sign in", level=1)).to_be_visible()


def test_keyboard_alone_signs_in(browser: Browser) -> None:
    page = browser.page()
    page.goto("/login")
    # The username box has the focus on arrival; before it come the skip link and the brand.
    username = page.get_by_label("Username")
    expect(username).to_be_focused()
    page.keyboard.press("Shift+Tab")
    expect(page.locator("a.brand")).to_be_focused()
    page.keyboard.press("Shift+Tab")
    expect(page.get_by_role("link", name="Skip to main content")).to_be_focused()
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(username).to_be_focused()
    page.keyboard.type("national3")
    page.keyboard.press("Tab")
    expect(page.get_by_label("Password")).to_be_focused()
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Sign in")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Inbox", level=1)).to_be_visible()
