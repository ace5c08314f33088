"""Writing a message with the recipient pickers, the live count, and the delivery's progress."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect
from sqlalchemy import Engine

from tests.browser.conftest import (
    BADGE_RECIPIENT,
    BADGE_SENDER,
    COMPOSER,
    Browser,
    row,
    scalar,
    screenshot,
)

pytestmark = pytest.mark.e2e

KAMBIA, DEMA = "PMa2VCrupOd", "DNRAeXT9IwS"  # a district, and a chiefdom of Bonthe


def reach(
    engine: Engine, sender: str, units: list[str], users: list[str], descendants: bool
) -> int:
    """How many active users other than `sender` the units (and below them, with
    `descendants`) and the users reach: the number the pages must show."""
    return int(
        scalar(
            engine,
            "SELECT count(DISTINCT u.id) FROM app_user u "
            "LEFT JOIN user_org_unit uo ON uo.user_id = u.id "
            "LEFT JOIN org_unit o ON o.id = uo.org_unit_id "
            "WHERE NOT u.disabled AND u.username <> :sender AND ("
            " (:descendants AND string_to_array(o.path, '/') && :units)"
            " OR (NOT :descendants AND o.uid = ANY(:units)) OR u.username = ANY(:users))",
            descendants=descendants,
            sender=sender,
            units=units,
            users=users,
        )
    )


def pick(page, field: str, noun: str, query: str, result: str) -> None:  # type: ignore[no-untyped-def]
    """Search a picker and click the result whose text has `result` (a name or an id)."""
    page.get_by_label(f"Search {noun}").fill(query)
    page.locator(f"#{field}-results button", has_text=result).click()


def test_compose_with_pickers_counts_sends_and_follows_delivery(
    browser: Browser, db_engine: Engine
) -> None:
    page = browser.signed_in(COMPOSER)
    page.get_by_role("link", name="Write message").click()
    expect(page.get_by_role("heading", name="Write a message", level=1)).to_be_visible()
    count = page.locator("#recipient-count")
    expect(count).to_have_text("No recipients chosen yet.")

    # An organisation unit by search ...
    pick(page, "org_units", "organisation units", "Kambia", KAMBIA)
    chips = page.get_by_role("list", name="Chosen organisation units")
    expect(chips.get_by_role("listitem")).to_have_count(1)
    expect(chips).to_contain_text("Kambia")
    expect(page.locator("#org_units")).to_have_value(KAMBIA)
    # ... and one by browsing the tree: Sierra Leone > Bonthe > Dema.
    page.get_by_role("button", name="Browse the tree").click()
    page.get_by_role("button", name="Show units in Sierra Leone").click()
    page.get_by_role("button", name="Show units in Bonthe").click()
    page.get_by_role("button", name="Add Dema", exact=True).click()
    expect(chips.get_by_role("listitem")).to_have_count(2)
    expect(page.locator("#org_units")).to_have_value(f"{KAMBIA} {DEMA}")
    # A user by name.
    pick(page, "users", "users", "Koinadugu DHMT", "koinadugu_dhmt")
    expect(page.get_by_role("list", name="Chosen users")).to_contain_text("Koinadugu DHMT Officer")

    # The live count: the units' own users first, then everyone below them.
    to = {"units": [KAMBIA, DEMA], "users": ["koinadugu_dhmt"]}
    only = reach(db_engine, COMPOSER, descendants=False, **to)
    assert only == 4  # two district officers, a chiefdom supervisor, one user
    expect(count).to_have_text(f"This message will reach {only} people.")
    page.get_by_label("Include all units below the chosen organisation units").check()
    everyone = reach(db_engine, COMPOSER, descendants=True, **to)
    assert everyone > 50  # an announcement
    expect(count).to_have_text(
        f"This message will reach {everyone} people. "
        "It will be an announcement: replies come to you only."
    )

    page.get_by_role("textbox", name="Subject").fill("Measles campaign dates")
    page.get_by_role("textbox", name="Message").fill(
        "The campaign runs from 12 to 16 May in Kambia and Dema."
    )
    screenshot(page, "compose")
    page.get_by_role("button", name="Send message").click()

    expect(page.get_by_role("heading", name="Measles campaign dates", level=1)).to_be_visible()
    expect(page.locator(".flashes")).to_contain_text(
        "Announcement sent to 1 user and 2 organisation units (with all units below)"
    )
    # The progress bar follows the worker to the end without a reload.
    box = page.locator("[data-delivery]")
    expect(box.locator("[data-delivery-text]")).to_have_text(
        f"Delivered to all {everyone} recipients", timeout=90_000
    )
    expect(box).to_have_attribute("data-state", "DELIVERED")
    bar = box.locator("[data-delivery-bar]")
    assert bar.evaluate("b => [b.value, b.max]") == [everyone, everyone]
    screenshot(page, "delivered")
    delivered = scalar(
        db_engine,
        "SELECT count(*) FROM inbox i JOIN conversation c ON c.id = i.conversation_id "
        "WHERE c.subject = 'Measles campaign dates'",
    )
    assert delivered == everyone + 1  # and the sender's own row
    # Shown again, the conversation counts everyone it reached.
    page.reload()
    expect(page.locator("#participants-title")).to_contain_text(f"({everyone + 1})")


def test_rejected_message_says_why_and_keeps_what_was_typed(browser: Browser) -> None:
    page = browser.signed_in(COMPOSER)
    page.goto("/compose")
    page.get_by_role("textbox", name="Subject").fill("Nobody to send to")
    page.get_by_role("textbox", name="Message").fill("This text must survive the error.")
    page.get_by_role("button", name="Send message").click()
    summary = page.get_by_role("alert")
    expect(summary).to_contain_text("There is a problem")
    expect(summary).to_contain_text(re.compile("[Nn]o recipients"))
    expect(page.locator("#recipients .field-error")).to_contain_text(re.compile("[Nn]o recipients"))
    expect(page.get_by_role("textbox", name="Subject")).to_have_value("Nobody to send to")
    expect(page.get_by_role("textbox", name="Message")).to_have_value(
        "This text must survive the error."
    )


def test_unread_badge_updates_without_reload(browser: Browser, db_engine: Engine) -> None:
    recipient = browser.signed_in(BADGE_RECIPIENT)
    badge = recipient.locator("[data-unread-badge]")
    expect(badge).to_be_hidden()
    expect(recipient.locator("#unread-messages")).to_have_text("0")
    recipient.evaluate("window.__notReloaded = true")

    sender = browser.signed_in(BADGE_SENDER)
    sender.goto("/compose")
    pick(sender, "users", "users", "Port Loko District", BADGE_RECIPIENT)
    expect(sender.locator("#recipient-count")).to_have_text("This message will reach 1 person.")
    sender.get_by_role("textbox", name="Subject").fill("Stock report overdue")
    sender.get_by_role("textbox", name="Message").fill("Please send the stock report today.")
    sender.get_by_role("button", name="Send message").click()
    expect(sender.locator("[data-delivery-text]")).to_have_text(
        "Delivered to 1 recipient", timeout=60_000
    )
    delivered_at = time.monotonic()

    # The header polls every 10 seconds: the new message shows within one period (and a little
    # for the request itself on a loaded machine), on the page that was open all along.
    expect(badge.locator("[data-unread-count]")).to_have_text("1", timeout=13_000)
    waited = time.monotonic() - delivered_at
    expect(badge).to_be_visible()
    expect(recipient.locator("#unread-messages")).to_have_text("1")
    assert recipient.evaluate("window.__notReloaded") is True
    assert waited < 13, waited
    # The list itself is what the page had: the new row appears on the next visit.
    recipient.reload()
    expect(row(recipient, "Stock report overdue")).to_have_class(re.compile(r"\bunread\b"))
