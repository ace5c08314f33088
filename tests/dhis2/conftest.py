"""DHIS2 compatibility. Contract tests use the app on a rolled-back session (the web fixtures);
the client test uses real web server and worker processes (the end-to-end fixtures) with a small
committed data set instead of the whole Sierra Leone hierarchy."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import e2e_env, web_server, worker  # noqa: F401  (fixtures)
from tests.web.conftest import app, client, login_user, publisher  # noqa: F401  (fixtures)

PASSWORD = "client-test-password"


@pytest.fixture(scope="module")
def seeded(e2e_env: dict[str, str]) -> dict[str, str]:  # noqa: F811
    """An administrator who handles feedback, a facility nurse and the feedback group."""
    from service import accounts
    from service.db import make_engine, make_session_factory
    from service.models import UserGroup
    from service.system_settings import set_feedback_group

    engine = make_engine(e2e_env["DATABASE_URL"], pool=False)
    with make_session_factory(engine)() as session:
        group = UserGroup(name="Feedback Message Recipients")
        session.add(group)
        session.flush()
        accounts.create_user(
            session,
            "boss",
            PASSWORD,
            group_uids=[group.uid],
            admin=True,
            first_name="John",
            surname="Traore",
        )
        accounts.create_user(session, "nurse", PASSWORD, first_name="Fatmata", surname="Sesay")
        set_feedback_group(session, group)
        session.commit()
    engine.dispose()
    return e2e_env
