"""Browser tests: the pages driven by Playwright in Debian's headless Chromium.

The package runs one real web server (`flask run`) and one real Celery worker on a PostgreSQL
database of its own (the Sierra Leone demo data plus the conversations below, committed) and the
shared Redis (database index TEST_E2E_REDIS_DB). The fixtures are package-scoped so that, in a
whole-suite run, this worker is stopped before tests/e2e and the others start theirs on the same
Redis index (it would take their tasks to the wrong database). One Chromium is launched for all;
each user gets a browser context of their own (own cookies), so several people can be signed in
at once. Nothing downloads a browser: Chromium comes from the `chromium` Debian package that
`make install` installs, and a missing one fails the tests, it never skips them.

Screenshots of the main pages go to test-artifacts/screenshots/ (git-ignored); a failing test
leaves a screenshot of every page it had open in test-artifacts/failures/.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import Engine, select, text

from tests.conftest import ROOT, create_pg_database, migrate, run_db_name
from tests.e2e.conftest import E2E_REDIS_DB, VENV_BIN, Proc, free_port, purge_queues, start_worker
from tests.faults.conftest import wait_until

CHROMIUM = os.environ.get("TEST_CHROMIUM", "/usr/bin/chromium")
# Chromium as root in a container: no sandbox, no GPU, and nothing that talks to the network on
# its own (there is no network beyond the package registries here).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"
SCREENSHOTS = ARTIFACTS / "screenshots"
FAILURES = ARTIFACTS / "failures"
PASSWORD = "district"  # every demo user's
# Generous: two cores are shared with other test runs.
ACTION_TIMEOUT_MS = 30_000
EXPECT_TIMEOUT_MS = 20_000

# Who plays which part. Each test works in a part of the hierarchy of its own, so that what one
# test sends never changes what another counts.
INBOX_USER = "kenema_me"  # 30 seeded conversations: paging, search, filters, bulk actions
INBOX_SENDERS = ("kenema_dhmt", "dama_sup", "dodo_sup")
INBOX_TOTAL = 30
INBOX_UNREAD = 20
REPLY_SENDER, REPLY_RECIPIENT = "bo_me", "bo_dhmt"
ESCAPE_SENDER, ESCAPE_RECIPIENT = "western_area_me", "western_area_dhmt"
BADGE_SENDER, BADGE_RECIPIENT = "port_loko_dhmt", "port_loko_me"
COMPOSER = "national1"  # the broadcaster
FEEDBACK_WRITER = "tonkolili_me"
HANDLER = "national2"  # a member of "Feedback Message Recipients"
ASSIGNEE, ASSIGNEE_NAME = "national5", "National Feedback Coordinator"
ADMIN = "admin"
FEEDBACK_GROUP_UID, FEEDBACK_GROUP_NAME = "QYrzIjSfI8z", "Feedback Message Recipients"

SEEDED_REPLY_SUBJECT = "Bo district review meeting"
SEEDED_ESCAPE_SUBJECT = "Western Area reporting tools"


@pytest.fixture(autouse=True)
def _browser_timeouts() -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)


# ---------------------------------------------------------------------------------------------
# The stack: database, worker, web server


def _seed(db_url: str) -> None:
    """The demo data and the conversations the tests read, committed through the service."""
    from service.db import make_engine, make_session_factory
    from service.demo import seed_demo
    from service.messaging import direct_conversation, mark_read, set_followup
    from service.models import MessageType, User

    engine = make_engine(db_url, pool=False)
    with make_session_factory(engine)() as session:
        seed_demo(session)
        session.flush()

        def user(username: str) -> User:
            return session.execute(select(User).where(User.username == username)).scalar_one()

        start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
        # (sender, recipient, subject, text, minutes after `start`). The inbox lists the newest
        # first, so "Weekly report 28" tops page 1.
        plan = [
            (
                INBOX_SENDERS[0],
                INBOX_USER,
                f"Weekly report {n:02d}",
                f"Kenema weekly surveillance summary number {n}.",
                n,
            )
            for n in range(1, INBOX_TOTAL - 1)
        ]
        plan += [
            # Two whose words appear nowhere else: one in its text, one in its sender's name.
            (
                INBOX_SENDERS[1],
                INBOX_USER,
                "Malaria stock-out in Dama",
                "We have run out of artemether-lumefantrine at two facilities.",
                -20,
            ),
            (
                INBOX_SENDERS[2],
                INBOX_USER,
                "Generator fuel",
                "The generator needs fuel before Monday.",
                -10,
            ),
            (
                REPLY_SENDER,
                REPLY_RECIPIENT,
                SEEDED_REPLY_SUBJECT,
                "Can you present the DHMT figures on Thursday?",
                0,
            ),
            (
                ESCAPE_SENDER,
                ESCAPE_RECIPIENT,
                SEEDED_ESCAPE_SUBJECT,
                "Please send me the link to the new register.",
                0,
            ),
        ]
        weekly: list[str] = []
        for sender, recipient, subject, body, minutes in plan:
            conv = direct_conversation(
                session,
                user(sender),
                [user(recipient).id],
                subject,
                body,
                message_type=MessageType.PRIVATE,
                now=start + dt.timedelta(minutes=minutes),
            )
            if subject.startswith("Weekly report"):
                weekly.append(conv.uid)
        # The ten oldest weekly reports are read; the oldest is marked for follow-up.
        inbox_user = user(INBOX_USER)
        mark_read(session, inbox_user, weekly[:10])
        set_followup(session, inbox_user, weekly[:1], on=True)
        session.commit()
    engine.dispose()


@pytest.fixture(scope="package")
def browser_env(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> dict[str, str]:
    data_dir = tmp_path_factory.mktemp("browser")
    db_url = create_pg_database(run_db_name("browser"))
    migrate(db_url)
    _seed(db_url)
    return {
        **os.environ,
        "APP_ENV": "test",
        "DATA_DIR": str(data_dir),
        "DATABASE_URL": db_url,
        "CELERY_BROKER_URL": f"{redis_url.rsplit('/', 1)[0]}/{E2E_REDIS_DB}",
        "SECRET_KEY": "browser-secret",
        "DELIVERY_BATCH_SIZE": "100",
        "SWEEP_INTERVAL": "5",
        "STALE_AFTER": "15",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="package")
def db_engine(browser_env: dict[str, str]) -> Iterator[Engine]:
    """For checking what the pages did, and for the counts the pages must show."""
    from service.db import make_engine

    engine = make_engine(browser_env["DATABASE_URL"], pool=False)
    yield engine
    engine.dispose()


@pytest.fixture(scope="package")
def worker(browser_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    purge_queues(browser_env)
    proc = start_worker(browser_env, tmp_path_factory.mktemp("worker"), concurrency=1)
    yield proc
    proc.stop()


@pytest.fixture(scope="package")
def base_url(
    browser_env: dict[str, str], worker: Proc, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The web server's address, with the worker running behind it."""
    port = free_port()
    cmd = [str(VENV_BIN / "flask"), "--app", "web", "run", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--no-reload"]
    proc = Proc("web", cmd, browser_env, tmp_path_factory.mktemp("web"))
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"web server exited:\n{proc.log()[-3000:]}")
        try:
            return requests.get(base + "/health/live", timeout=2).ok
        except requests.ConnectionError:
            return False

    wait_until(answers, 60, "the web server answering")
    yield base
    code = proc.stop()
    # A traceback in the server's log is a failure even when every page looked right.
    assert "Traceback" not in proc.log(), proc.log()[-5000:]
    assert code is not None


# ---------------------------------------------------------------------------------------------
# The browser


@pytest.fixture(scope="package")
def chromium() -> Iterator[Any]:
    """One headless Chromium (Debian's) for the session. Fails, never skips, when it is missing."""
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"Chromium is required for the browser tests and is not installed at {CHROMIUM}: "
            "run `make install` (it apt-get installs the Debian package `chromium`), "
            "or set TEST_CHROMIUM to a Chromium executable.",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "Playwright is required for the browser tests: run `make install`.", pytrace=False
        )
    pw = sync_playwright().start()
    try:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    except Exception as exc:
        pw.stop()
        pytest.fail(f"Chromium at {CHROMIUM} did not start: {exc}", pytrace=False)
    yield browser
    browser.close()
    pw.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[_FAILED] = report.failed


_FAILED = pytest.StashKey[bool]()


@dataclass
class Browser:
    """Opens pages for people; each person has a browser context of their own."""

    chromium: Any
    base_url: str
    contexts: list[Any] = field(default_factory=list)
    dialogs: list[tuple[str, str]] = field(default_factory=list)

    def page(self, width: int = 1280, height: int = 900) -> Any:
        context = self.chromium.new_context(
            base_url=self.base_url,
            viewport={"width": width, "height": height},
            locale="en-GB",
            timezone_id="UTC",
        )
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        context.set_default_navigation_timeout(ACTION_TIMEOUT_MS)
        self.contexts.append(context)
        page = context.new_page()

        def on_dialog(dialog: Any) -> None:
            # Recorded, so that a test can say no dialog (an injected alert()) ever opened.
            self.dialogs.append((dialog.type, dialog.message))
            if dialog.type == "confirm":
                dialog.accept()
            else:
                dialog.dismiss()

        page.on("dialog", on_dialog)
        return page

    def signed_in(self, username: str, **size: int) -> Any:
        page = self.page(**size)
        sign_in(page, username)
        return page


@pytest.fixture
def browser(chromium: Any, base_url: str, request: pytest.FixtureRequest) -> Iterator[Browser]:
    b = Browser(chromium, base_url)
    yield b
    failed = request.node.stash.get(_FAILED, False)
    for i, context in enumerate(b.contexts):
        if failed:
            FAILURES.mkdir(parents=True, exist_ok=True)
            for j, page in enumerate(context.pages):
                # A debugging aid must not hide the real failure.
                with contextlib.suppress(Exception):
                    page.screenshot(
                        path=str(FAILURES / f"{request.node.name}-{i}-{j}.png"), full_page=True
                    )
        context.close()


# ---------------------------------------------------------------------------------------------
# What users do


def sign_in(page: Any, username: str, password: str = PASSWORD) -> None:
    from playwright.sync_api import expect

    page.goto("/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Inbox", level=1)).to_be_visible()


def sign_out(page: Any) -> None:
    from playwright.sync_api import expect

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in", level=1)).to_be_visible()


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def row(page: Any, subject: str) -> Any:
    """The inbox row of the conversation with this subject."""
    return page.locator("li.conversation").filter(has=page.locator(".subject", has_text=subject))


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar_one()
