"""Command-line tools: `flask --app web <command>`.

Each command opens one session from the app's session factory, does its work through `service/`,
and commits once at the end; on a domain error it rolls back, prints the message and exits with
status 1, so a failed command never leaves part of its work behind.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service import accounts, api_tokens, demo
from service.db import make_engine, utcnow
from service.dhis2_import import import_metadata, load_file
from service.errors import DomainError
from service.models import ApiToken
from service.passwords import check_new_password

ROOT = Path(__file__).resolve().parent.parent
# Below this many records a progress line per stage is noise; above it, a silent minute worries.
PROGRESS_MIN_RECORDS = 2000

db_cli = AppGroup("db", help="Database schema migrations (Alembic).")


@contextmanager
def _session() -> Iterator[Session]:
    """One session for a command: commit on success; on a domain error roll back and exit 1."""
    session: Session = current_app.extensions["session_factory"]()
    try:
        yield session
        session.commit()
    except DomainError as exc:
        session.rollback()
        raise click.ClickException(exc.message) from None
    finally:
        session.close()


def _progress_printer() -> Callable[[str, int, int], None]:
    def report(stage: str, done: int, total: int) -> None:
        if total >= PROGRESS_MIN_RECORDS:
            click.echo(f"{stage}: {done}/{total}", err=True)

    return report


@click.command("import-metadata")
@with_appcontext
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def import_metadata_command(files: tuple[str, ...]) -> None:
    """Import DHIS2 metadata JSON files (.json or .json.gz): organisation units and their groups,
    user groups and users. All files are checked first; nothing is written unless all are valid.
    """
    try:
        documents = [load_file(path) for path in files]
    except DomainError as exc:
        raise click.ClickException(exc.message) from None
    with _session() as session:
        report = import_metadata(
            session,
            documents,
            progress=_progress_printer(),
            names=[Path(path).name for path in files],
        )
    click.echo(report.summary())


@click.command("create-user")
@with_appcontext
@click.argument("username")
@click.option("--password", help="The password (at least 8 characters).")
@click.option("--org-unit", "org_units", multiple=True, metavar="UID", help="Assign a unit.")
@click.option("--group", "groups", multiple=True, metavar="UID", help="Add to a user group.")
@click.option("--admin/--no-admin", default=None, help="Grant or revoke administration.")
@click.option(
    "--broadcaster/--no-broadcaster", default=None, help="Allow or stop messages to everyone."
)
@click.option("--first-name", help="First name (new users only).")
@click.option("--surname", help="Surname (new users only).")
def create_user_command(
    username: str,
    password: str | None,
    org_units: tuple[str, ...],
    groups: tuple[str, ...],
    admin: bool | None,
    broadcaster: bool | None,
    first_name: str | None,
    surname: str | None,
) -> None:
    """Create user USERNAME, or when it exists, apply the given password, flags and memberships
    to it (memberships are only added)."""
    with _session() as session:
        user = accounts.get_user_by_username(session, username)
        if user is None:
            user = accounts.create_user(
                session,
                username,
                password=password,
                org_unit_uids=org_units,
                group_uids=groups,
                admin=bool(admin),
                broadcaster=bool(broadcaster),
                first_name=first_name,
                surname=surname,
            )
            verb = "created"
        else:
            accounts.update_user(
                session,
                user,
                password=password,
                add_org_unit_uids=org_units,
                add_group_uids=groups,
                admin=admin,
                broadcaster=broadcaster,
            )
            verb = "updated"
        uid = user.uid
    click.echo(f"user {username} ({uid}) {verb}")
    if verb == "created" and password is None:
        click.echo(f"{username} has no password yet: set one with `set-password {username}`.")


def _check_password(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    problem = check_new_password(value)
    if problem is not None:
        raise click.BadParameter(problem)
    return value


@click.command("set-password")
@with_appcontext
@click.argument("username")
@click.option(
    "--password",
    prompt="New password",
    hide_input=True,
    confirmation_prompt=True,
    callback=_check_password,
    help="The new password; asked for (twice, hidden) when not given.",
)
def set_password_command(username: str, password: str) -> None:
    """Set the password of user USERNAME."""
    with _session() as session:
        user = accounts.get_user_by_username(session, username)
        if user is None:
            raise click.ClickException(f"no user named {username}")
        accounts.update_user(session, user, password=password)
    click.echo(f"password of {username} set")


@click.command("seed-demo")
@with_appcontext
@click.option(
    "--data-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=demo.DATA_DIR,
    show_default=True,
    help="Where the Sierra Leone DHIS2 files are.",
)
def seed_demo_command(data_dir: Path) -> None:
    """Import the Sierra Leone hierarchy if needed and add the demo users (safe to run again)."""
    with _session() as session:
        report = demo.seed_demo(session, data_dir)
    if report.imported is not None:
        click.echo(report.imported.summary())
    click.echo(
        f"demo users: {report.users_created} created, {report.users_total} in all; "
        f"{report.groups_created} groups created, {report.memberships_added} memberships added"
    )
    if report.feedback_group_set:
        click.echo("feedback recipients group: Feedback Message Recipients (QYrzIjSfI8z)")
    click.echo("demo logins (username / password: role, organisation unit):")
    for login in report.logins:
        click.echo(f"  {login.username} / {login.password}: {login.role}, {login.org_unit}")


@click.command("create-api-token")
@with_appcontext
@click.argument("username")
@click.option("--days", type=click.IntRange(1, 365), default=30, show_default=True)
@click.option("--name", help="What the token is for (shown in lists).")
def create_api_token_command(username: str, days: int, name: str | None) -> None:
    """Make a personal access token for USERNAME and print its key (shown only this once)."""
    with _session() as session:
        user = accounts.get_user_by_username(session, username)
        if user is None:
            raise click.ClickException(f"no user named {username}")
        expires_at = utcnow() + dt.timedelta(days=days)
        token, key = api_tokens.create(session, user, expires_at=expires_at, name=name)
        uid = token.uid
    click.echo(f"token {uid} for {username}, valid {days} days; use the header:", err=True)
    click.echo(f"Authorization: ApiToken {key}", err=True)
    click.echo(key)


@click.command("revoke-api-token")
@with_appcontext
@click.argument("uid")
def revoke_api_token_command(uid: str) -> None:
    """Revoke the personal access token UID (see GET /api/apiToken)."""
    with _session() as session:
        token = session.scalar(select(ApiToken).where(ApiToken.uid == uid))
        if token is None:
            raise click.ClickException(f"no token {uid}")
        session.delete(token)
    click.echo(f"token {uid} revoked")


def _alembic_config() -> Config:
    url: str = current_app.extensions["settings"].database_url
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    # Alembic's own logging setup would replace the application's; we print the outcome instead.
    cfg.attributes["configure_logger"] = False
    return cfg


def _current_revision() -> str | None:
    engine = make_engine(current_app.extensions["settings"].database_url, pool=False)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def _prepare_sqlite_dir() -> None:
    """A first `db upgrade` of the demo database must not fail because var/ does not exist yet."""
    url = make_url(current_app.extensions["settings"].database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)


def _migrate(step: Callable[[Config, str], Any], revision: str) -> None:
    _prepare_sqlite_dir()
    try:
        step(_alembic_config(), revision)
    except (CommandError, SQLAlchemyError) as exc:
        raise click.ClickException(f"migration failed: {exc}") from None
    click.echo(f"database at revision {_current_revision() or 'base (empty)'}")


@db_cli.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Upgrade the schema to REVISION (default: the newest)."""
    _migrate(command.upgrade, revision)


@db_cli.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Downgrade the schema to REVISION ("base" removes every table)."""
    _migrate(command.downgrade, revision)


def init_app(app: Flask) -> None:
    for cmd in (
        import_metadata_command,
        create_user_command,
        set_password_command,
        seed_demo_command,
        create_api_token_command,
        revoke_api_token_command,
        db_cli,
    ):
        app.cli.add_command(cmd)
