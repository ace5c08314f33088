"""Opening a conversation, replying, and what the other person then sees; hostile text."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import (
    ESCAPE_RECIPIENT,
    ESCAPE_SENDER,
    REPLY_RECIPIENT,
    REPLY_SENDER,
    SEEDED_ESCAPE_SUBJECT,
    SEEDED_REPLY_SUBJECT,
    Browser,
    row,
    screenshot,
)

pytestmark = pytest.mark.e2e

UNREAD = re.compile(r"\bunread\b")


def messages_of(page):  # type: ignore[no-untyped-def]
    return page.locator("ol.messages > li")


def test_reply_reaches_the_other_person_unread(browser: Browser) -> None:
    recipient = browser.signed_in(REPLY_RECIPIENT)
    item = row(recipient, SEEDED_REPLY_SUBJECT)
    expect(item).to_have_class(UNREAD)
    expect(item.locator(".sender")).to_have_text("Bo District M&E Officer")
    item.get_by_role("link").click()
    expect(recipient.get_by_role("heading", name=SEEDED_REPLY_SUBJECT, level=1)).to_be_visible()
    messages = messages_of(recipient)
    expect(messages).to_have_count(1)
    expect(messages.first.locator(".message-sender")).to_have_text("Bo District M&E Officer")
    expect(messages.first.locator(".message-text")).to_have_text(
        "Can you present the DHMT figures on Thursday?"
    )
    participants = recipient.locator("ul.participants")
    expect(participants).to_contain_text("Bo District M&E Officer")
    expect(participants).to_contain_text("Bo DHMT Officer (you)")

    recipient.get_by_role("textbox", name="Reply").fill("Yes, I will bring the DHMT figures.")
    recipient.get_by_role("button", name="Send reply").click()
    expect(recipient.get_by_role("status").first).to_contain_text("Reply sent.")
    # Oldest first, the new reply last and marked as mine.
    expect(messages).to_have_count(2)
    expect(messages.last).to_have_class(re.compile(r"\bmine\b"))
    expect(messages.last.locator(".message-text")).to_have_text(
        "Yes, I will bring the DHMT figures."
    )
    screenshot(recipient, "conversation")
    # Opened and answered: read in the recipient's own inbox.
    recipient.get_by_role("link", name="← Inbox").click()
    expect(row(recipient, SEEDED_REPLY_SUBJECT)).not_to_have_class(UNREAD)

    sender = browser.signed_in(REPLY_SENDER)
    item = row(sender, SEEDED_REPLY_SUBJECT)
    expect(item).to_have_class(UNREAD)
    expect(item.locator(".sender")).to_have_text("Bo DHMT Officer")
    expect(item.locator(".count")).to_have_text("2 messages")
    expect(sender.locator("[data-unread-count]")).to_have_text("1")
    item.get_by_role("link").click()
    expect(messages_of(sender).last).to_contain_text("Yes, I will bring the DHMT figures.")
    sender.get_by_role("link", name="← Inbox").click()
    expect(row(sender, SEEDED_REPLY_SUBJECT)).not_to_have_class(UNREAD)
    expect(sender.locator("[data-unread-badge]")).to_be_hidden()


HOSTILE = (
    '<script>alert("xss")</script> <img src=x onerror="alert(2)"> '
    "The register is at https://example.org/register?id=7. javascript:alert(3)"
)


def test_message_text_is_shown_as_text_and_links_work(browser: Browser) -> None:
    writer = browser.signed_in(ESCAPE_RECIPIENT)
    row(writer, SEEDED_ESCAPE_SUBJECT).get_by_role("link").click()
    writer.get_by_role("textbox", name="Reply").fill(HOSTILE)
    writer.get_by_role("button", name="Send reply").click()
    expect(messages_of(writer)).to_have_count(2)

    reader = browser.signed_in(ESCAPE_SENDER)
    row(reader, SEEDED_ESCAPE_SUBJECT).get_by_role("link").click()
    text = messages_of(reader).last.locator(".message-text")
    # Every character shows as typed (the link included), and none of it became markup.
    expect(text).to_have_text(HOSTILE)
    expect(text.locator("script, img")).to_have_count(0)
    link = text.get_by_role("link")
    expect(link).to_have_count(1)
    expect(link).to_have_attribute("href", "https://example.org/register?id=7")
    expect(link).to_have_text("https://example.org/register?id=7")
    assert browser.dialogs == [], browser.dialogs

    # The link is clickable (the outside site is answered here: there is no network).
    reader.route(
        "https://example.org/**",
        lambda route: route.fulfill(
            status=200, content_type="text/html", body="<title>Register</title>The register"
        ),
    )
    link.click()
    expect(reader).to_have_url("https://example.org/register?id=7")
    expect(reader).to_have_title("Register")
    assert browser.dialogs == [], browser.dialogs
