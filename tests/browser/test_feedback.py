"""Feedback: written by a user, triaged on the desk by handlers; internal replies stay theirs."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import (
    ASSIGNEE,
    ASSIGNEE_NAME,
    FEEDBACK_WRITER,
    HANDLER,
    Browser,
    row,
    screenshot,
)

pytestmark = pytest.mark.e2e

SUBJECT = "Vaccine fridge broken in Magburaka"
INTERNAL = "Internal: the cold-chain budget line 4 covers a new fridge."
PUBLIC = "A technician will visit on Tuesday."


def apply_filters(page, **selects: str) -> None:  # type: ignore[no-untyped-def]
    filters = page.get_by_role("search", name="Search and filter")
    for label, value in selects.items():
        filters.get_by_label(label.title()).select_option(value)
    filters.get_by_role("button", name="Apply").click()


def test_feedback_is_triaged_and_internal_replies_stay_with_handlers(browser: Browser) -> None:
    writer = browser.signed_in(FEEDBACK_WRITER)
    writer.get_by_role("link", name="Write feedback").click()
    screenshot(writer, "feedback-new")
    writer.get_by_role("textbox", name="Subject").fill(SUBJECT)
    writer.get_by_role("textbox", name="Your feedback").fill("The fridge stopped on Monday.")
    writer.get_by_role("button", name="Send feedback").click()
    expect(writer.locator(".flashes")).to_contain_text(
        "Thank you — your feedback was sent to the feedback team."
    )
    expect(writer.get_by_role("heading", name=SUBJECT, level=1)).to_be_visible()
    expect(writer.locator(".conversation-tags")).to_contain_text("Status: Open")
    feedback_url = writer.url

    # The handler's header counts it under Feedback, not Messages.
    handler = browser.signed_in(HANDLER)
    expect(handler.locator("#unread-feedback")).to_have_text("1")
    expect(handler.locator("#unread-messages")).to_have_text("0")
    # The handler's desk: the Feedback folder, filtered by status.
    handler.get_by_role("navigation", name="Folders").get_by_role("link", name="Feedback").click()
    apply_filters(handler, status="OPEN")
    item = row(handler, SUBJECT)
    expect(item).to_be_visible()
    expect(item.locator(".meta")).to_contain_text("Open")
    screenshot(handler, "feedback-desk")
    item.get_by_role("link").click()

    panel = handler.get_by_role("region", name="Handle feedback")
    panel.get_by_label("Status").select_option("PENDING")
    panel.get_by_label("Priority").select_option("HIGH")
    panel.get_by_label("Assignee").select_option(label=ASSIGNEE_NAME)
    panel.get_by_role("button", name="Save").click()
    expect(handler.locator(".flashes")).to_contain_text(
        f"Saved: status Pending, priority High, assigned to {ASSIGNEE_NAME}."
    )
    tags = handler.locator(".conversation-tags")
    expect(tags).to_contain_text("Status: Pending")
    expect(tags).to_contain_text("Priority: High")
    expect(tags).to_contain_text(f"Assigned to {ASSIGNEE_NAME}")
    expect(panel.get_by_label("Status")).to_have_value("PENDING")

    handler.get_by_role("textbox", name="Reply").fill(INTERNAL)
    handler.get_by_label("Internal reply — seen by feedback handlers only").check()
    handler.get_by_role("button", name="Send reply").click()
    expect(handler.locator(".flashes")).to_contain_text(
        "Internal reply added — only feedback handlers see it."
    )
    internal = handler.locator("ol.messages > li.internal")
    expect(internal).to_have_count(1)
    expect(internal).to_contain_text("Internal — handlers only")
    expect(internal).to_contain_text(INTERNAL)
    # An internal reply marks nobody but handlers unread: the writer's count stays at nothing.
    writer.goto("/")
    expect(writer.locator("[data-unread-badge]")).to_be_hidden()
    expect(writer.locator("#unread-feedback")).to_have_text("0")
    handler.get_by_role("textbox", name="Reply").fill(PUBLIC)
    handler.get_by_role("button", name="Send reply").click()
    expect(handler.locator("ol.messages > li")).to_have_count(3)
    screenshot(handler, "feedback-conversation")

    # The desk's filters find it by its new status and priority, not by its old one.
    handler.get_by_role("link", name="← Inbox").click()
    handler.get_by_role("navigation", name="Folders").get_by_role("link", name="Feedback").click()
    apply_filters(handler, status="PENDING", priority="HIGH")
    expect(row(handler, SUBJECT)).to_be_visible()
    expect(row(handler, SUBJECT).locator(".meta")).to_contain_text(f"Assigned to {ASSIGNEE_NAME}")
    apply_filters(handler, status="OPEN", priority="")
    expect(row(handler, SUBJECT)).to_have_count(0)

    # The assignee finds it under "Assigned to me".
    assignee = browser.signed_in(ASSIGNEE)
    assignee.goto("/?folder=feedback")
    assignee.get_by_label("Assigned to me").check()
    assignee.get_by_role("button", name="Apply").click()
    expect(row(assignee, SUBJECT)).to_be_visible()

    # The public reply does: the writer's header counts it under Feedback.
    writer.goto("/")
    expect(writer.locator("#unread-feedback-item")).to_be_visible()
    expect(writer.locator("#unread-feedback")).to_have_text("1")
    expect(writer.locator("[data-unread-count]")).to_have_text("1")
    # The writer sees the new status and the public reply, and never the internal one.
    writer.goto(feedback_url)
    expect(writer.locator(".conversation-tags")).to_contain_text("Status: Pending")
    messages = writer.locator("ol.messages > li")
    expect(messages).to_have_count(2)
    expect(messages.last).to_contain_text(PUBLIC)
    expect(writer.locator("main")).not_to_contain_text(INTERNAL)
    expect(writer.locator("main")).not_to_contain_text("Internal — handlers only")
    expect(writer.locator("main")).not_to_contain_text(ASSIGNEE_NAME)  # assignee: handlers only
    expect(writer.get_by_label("Internal reply — seen by feedback handlers only")).to_have_count(0)
    expect(writer.get_by_role("region", name="Handle feedback")).to_have_count(0)
    # Nor in the inbox, where the writer's row shows the public reply as the last word.
    writer.get_by_role("link", name="← Inbox").click()
    expect(row(writer, SUBJECT).locator(".sender")).to_have_text("National M&E Officer")
    writer.get_by_label("Search subject, text and sender").fill("cold-chain budget")
    writer.get_by_role("button", name="Apply").click()
    expect(writer.locator("li.conversation")).to_have_count(0)
