"""The inbox of a user with 30 seeded conversations (20 unread, one marked for follow-up)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import INBOX_TOTAL, INBOX_UNREAD, INBOX_USER, Browser, row, screenshot

pytestmark = pytest.mark.e2e

UNREAD = re.compile(r"\bunread\b")


def pager(page):  # type: ignore[no-untyped-def]
    return page.get_by_role("navigation", name="Pages")


def test_inbox_lists_pages_searches_filters_and_marks_read(browser: Browser) -> None:
    page = browser.signed_in(INBOX_USER)
    rows = page.locator("li.conversation")
    badge = page.locator("[data-unread-badge]")

    # Page 1: the 25 newest, unread ones styled as such; the header counts every unread one.
    expect(pager(page)).to_contain_text(f"Page 1 of 2 ({INBOX_TOTAL} conversations)")
    expect(rows).to_have_count(25)
    expect(rows.first.locator(".subject")).to_contain_text("Weekly report 28")
    expect(rows.first.locator(".sender")).to_have_text("Kenema DHMT Officer")
    expect(badge).to_be_visible()
    expect(badge.locator("[data-unread-count]")).to_have_text(str(INBOX_UNREAD))
    expect(page.locator("#unread-messages")).to_have_text(str(INBOX_UNREAD))
    # Weekly reports 11-28 are unread, 04-10 (the rest of page 1) read.
    expect(page.locator("li.conversation.unread")).to_have_count(18)
    unread, read = row(page, "Weekly report 28"), row(page, "Weekly report 10")
    expect(unread).to_have_class(UNREAD)
    expect(unread.locator(".subject")).to_contain_text("Unread:")  # said to screen readers too
    expect(read).not_to_have_class(UNREAD)
    weight = unread.locator(".subject").evaluate("e => getComputedStyle(e).fontWeight")
    plain = read.locator(".subject").evaluate("e => getComputedStyle(e).fontWeight")
    assert int(weight) >= 600 > int(plain), (weight, plain)
    screenshot(page, "inbox")

    page.get_by_role("link", name="Next page").click()
    expect(pager(page)).to_contain_text(f"Page 2 of 2 ({INBOX_TOTAL} conversations)")
    expect(rows).to_have_count(INBOX_TOTAL - 25)
    expect(rows.last.locator(".subject")).to_contain_text("Malaria stock-out in Dama")
    page.get_by_role("link", name="Previous page").click()
    expect(pager(page)).to_contain_text("Page 1 of 2")

    # Search: a word only in a message's text, then a sender's display name.
    search = page.get_by_label("Search subject, text and sender")
    search.fill("artemether")
    search.press("Enter")
    expect(rows).to_have_count(1)
    expect(rows.first.locator(".subject")).to_contain_text("Malaria stock-out in Dama")
    expect(pager(page)).to_contain_text("Page 1 of 1 (1 conversation)")
    search.fill("Dodo Chiefdom")
    page.get_by_role("button", name="Apply").click()
    expect(rows).to_have_count(1)
    expect(rows.first.locator(".subject")).to_contain_text("Generator fuel")
    search.fill("no such words anywhere")
    search.press("Enter")
    expect(page.locator("p.empty")).to_have_text("No conversations match these filters.")
    page.get_by_role("link", name="Clear filters").click()
    expect(pager(page)).to_contain_text(f"({INBOX_TOTAL} conversations)")

    # Filters.
    page.get_by_label("Unread only").check()
    page.get_by_role("button", name="Apply").click()
    expect(pager(page)).to_contain_text(f"Page 1 of 1 ({INBOX_UNREAD} conversations)")
    expect(page.locator("li.conversation:not(.unread)")).to_have_count(0)
    page.get_by_label("Unread only").uncheck()
    page.get_by_label("Follow-up only").check()
    page.get_by_role("button", name="Apply").click()
    expect(rows).to_have_count(1)
    expect(rows.first.locator(".subject")).to_contain_text("Weekly report 01")
    expect(rows.first.locator(".tag-followup")).to_have_text("Follow-up")
    page.get_by_role("link", name="Clear filters").click()

    # Select several, mark them read: their styling and the header count follow.
    for n in (28, 27, 26):
        row(page, f"Weekly report {n}").get_by_role("checkbox").check()
    page.get_by_role("button", name="Mark read").click()
    expect(page.get_by_role("status")).to_contain_text("Marked 3 conversations as read.")
    for n in (28, 27, 26):
        expect(row(page, f"Weekly report {n}")).not_to_have_class(UNREAD)
    expect(row(page, "Weekly report 25")).to_have_class(UNREAD)
    expect(page.locator("li.conversation.unread")).to_have_count(15)
    expect(badge.locator("[data-unread-count]")).to_have_text(str(INBOX_UNREAD - 3))
    expect(page.locator("#unread-messages")).to_have_text(str(INBOX_UNREAD - 3))

    # "Select all on this page" (added by app.js), then follow-up on: the filter finds them.
    page.get_by_role("link", name="Next page").click()
    page.get_by_label("Select all on this page").check()
    expect(page.locator('input[name="ids"]:checked')).to_have_count(INBOX_TOTAL - 25)
    page.get_by_role("button", name="Follow up", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text("Marked 5 conversations for follow-up.")
    page.get_by_label("Follow-up only").check()
    page.get_by_role("button", name="Apply").click()
    expect(pager(page)).to_contain_text("(5 conversations)")

    # And back to unread, from the selection: the header count goes up again.
    page.get_by_label("Select all on this page").check()
    page.get_by_role("button", name="Mark unread").click()
    expect(page.get_by_role("status")).to_contain_text("Marked 5 conversations as unread.")
    expect(badge.locator("[data-unread-count]")).to_have_text(str(INBOX_UNREAD - 3 + 3))
