"""Phone width and what assistive technology is told about the controls."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import (
    ADMIN,
    INBOX_USER,
    REPLY_RECIPIENT,
    SEEDED_REPLY_SUBJECT,
    Browser,
    row,
    screenshot,
)

pytestmark = pytest.mark.e2e

PHONE = {"width": 375, "height": 740}
OVERFLOW = """() => {
  const doc = document.documentElement;
  const wide = [...document.querySelectorAll('body *')]
    .filter(e => e.getBoundingClientRect().right > doc.clientWidth + 1 && e.offsetParent !== null
                 && !e.closest('.visually-hidden, .skip-link'))
    .slice(0, 5).map(e => e.outerHTML.slice(0, 120));
  return {scrollWidth: doc.scrollWidth, clientWidth: doc.clientWidth, wide};
}"""


def assert_no_horizontal_scroll(page, what: str) -> None:  # type: ignore[no-untyped-def]
    m = page.evaluate(OVERFLOW)
    assert m["clientWidth"] == PHONE["width"], m
    assert m["scrollWidth"] <= m["clientWidth"], f"{what} scrolls sideways: {m}"


def test_inbox_fits_a_phone(browser: Browser) -> None:
    page = browser.signed_in(INBOX_USER, **PHONE)
    expect(page.locator("li.conversation")).to_have_count(25)
    assert_no_horizontal_scroll(page, "the inbox")
    # The rows stay readable: sender and subject both on screen, inside the viewport.
    first = page.locator("li.conversation").first
    for part in (".sender", ".subject"):
        box = first.locator(part).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    screenshot(page, "inbox-phone")


def test_other_pages_fit_a_phone(browser: Browser) -> None:
    page = browser.signed_in(REPLY_RECIPIENT, **PHONE)
    row(page, SEEDED_REPLY_SUBJECT).get_by_role("link").click()
    expect(page.get_by_role("heading", name=SEEDED_REPLY_SUBJECT)).to_be_visible()
    assert_no_horizontal_scroll(page, "a conversation")
    screenshot(page, "conversation-phone")
    page.goto("/compose")
    page.get_by_role("button", name="Browse the tree").click()
    page.get_by_role("button", name="Show units in Sierra Leone").click()
    expect(page.get_by_role("button", name="Add Bo", exact=True)).to_be_visible()
    assert_no_horizontal_scroll(page, "the composer with the tree open")
    screenshot(page, "compose-phone")

    admin = browser.signed_in(ADMIN, **PHONE)
    admin.goto("/settings")
    assert_no_horizontal_scroll(admin, "the settings")
    admin.goto("/?folder=feedback")
    assert_no_horizontal_scroll(admin, "the feedback desk")
    screenshot(admin, "feedback-desk-phone")


def test_controls_without_errors_are_not_announced_invalid(browser: Browser) -> None:
    # WTForms writes a None attribute as the text "None", which browsers read as invalid.
    page = browser.page()
    page.goto("/login")
    username = page.get_by_role("textbox", name="Username")
    expect(username).to_be_visible()
    # What a screen reader is told: not "invalid" before anything was typed.
    assert username.evaluate("e => e.ariaInvalid") in (None, "false")
    broken = page.evaluate(
        """() => [...document.querySelectorAll('[aria-describedby]')]
             .filter(e => e.getAttribute('aria-describedby').split(/\\s+/)
                           .some(id => !document.getElementById(id)))
             .map(e => e.id)"""
    )
    assert broken == []
