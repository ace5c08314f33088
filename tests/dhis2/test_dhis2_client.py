"""An existing DHIS2 client from PyPI — dhis2.py 2.3.0, imported as `dhis2` — drives the service
unchanged, against a real web server process and a real Celery worker.

What the client does, and so what this checks: `Api.get()` asks for `<endpoint>.json`; `post()`
sends JSON only (a dict, never a list), so plain-text replies, feedback and read marks go through
its `requests` session, as a DHIS2 user of the client does; `info`/`version` read
`/api/system/info`; `get_paged()` follows `pager.pageCount`.
"""

from __future__ import annotations

import time

import pytest
from dhis2 import Api
from dhis2.exceptions import RequestException

from tests.dhis2.conftest import PASSWORD
from tests.e2e.conftest import Proc

pytestmark = pytest.mark.e2e

TEXT = {"Content-Type": "text/plain"}


def wait_delivered(api: Api, conv: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = api.get(f"messageConversations/{conv}/delivery").json()
        if state["state"] in ("DELIVERED", "FAILED") or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def test_dhis2_py_sends_lists_replies_and_sends_feedback(
    web_server: str, worker: Proc, seeded: dict[str, str]
) -> None:
    boss = Api(web_server, "boss", PASSWORD)
    nurse = Api(web_server, "nurse", PASSWORD)
    assert boss.version == "2.40.0" and boss.version_int == 40
    nurse_id = nurse.get("me").json()["id"]
    # The client's api_version puts the version in the path: /api/40/me.json.
    assert Api(web_server, "nurse", PASSWORD, api_version=40).get("me").json()["id"] == nurse_id

    # Send: JSON through the client's own post().
    r = boss.post(
        "messageConversations",
        json={"subject": "Stock count", "text": "Please count ORS.", "users": [{"id": nurse_id}]},
    )
    assert r.status_code == 201
    conv = r.json()["id"]
    assert r.headers["Location"].endswith(f"/api/messageConversations/{conv}")
    assert wait_delivered(boss, conv)["state"] == "DELIVERED", worker.log()[-3000:]

    # List: the nurse finds it unread, with filters, fields and the client's paging.
    listed = nurse.get(
        "messageConversations",
        params={"filter": ["read:eq:false"], "fields": "id,subject,read,lastSender[id]"},
    ).json()
    assert listed["messageConversations"] == [
        {
            "id": conv,
            "subject": "Stock count",
            "read": False,
            "lastSender": {"id": boss.get("me").json()["id"]},
        }
    ]
    assert nurse.get("me/dashboard").json()["unreadMessageConversations"] == 1

    # Reply: a plain-text body through the client's session.
    r = nurse.session.post(
        f"{nurse.api_url}/messageConversations/{conv}", data="Counted: 40.", headers=TEXT
    )
    assert r.status_code == 201, r.text
    r = nurse.session.post(f"{nurse.api_url}/messageConversations/read", json=[conv])
    assert r.json() == {"markedRead": [conv]}
    view = boss.get(f"messageConversations/{conv}", params={"fields": "read,messages[text]"}).json()
    assert view == {
        "read": False,
        "messages": [{"text": "Please count ORS."}, {"text": "Counted: 40."}],
    }

    # Feedback: plain text with ?subject= through the session; the handler triages it.
    r = nurse.session.post(
        f"{nurse.api_url}/messageConversations/feedback",
        params={"subject": "Fridge broken"},
        data="The vaccine fridge is warm.",
        headers=TEXT,
    )
    assert r.status_code == 201, r.text
    ticket = r.json()["id"]
    tickets = boss.get_paged(
        "messageConversations", params={"filter": "messageType:eq:TICKET"}, page_size=1, merge=True
    )
    assert [c["id"] for c in tickets["messageConversations"]] == [ticket]
    r = boss.post(
        f"messageConversations/{ticket}/status", params={"messageConversationStatus": "PENDING"}
    )
    assert r.json()["PENDING"] == [ticket]
    r = boss.post(
        f"messageConversations/{ticket}/priority", params={"messageConversationPriority": "HIGH"}
    )
    assert r.json()["HIGH"] == [ticket]
    r = boss.session.post(
        f"{boss.api_url}/messageConversations/{ticket}",
        params={"internal": "true"},
        data="Budget line 4711.",
        headers=TEXT,
    )
    assert r.status_code == 201
    seen = nurse.get(f"messageConversations/{ticket}").json()
    assert (seen["status"], seen["priority"]) == ("PENDING", "HIGH")
    assert [m["text"] for m in seen["messages"]] == ["The vaccine fridge is warm."]
    found = nurse.get("messageConversations", params={"queryString": "4711"}).json()
    assert found["pager"]["total"] == 0

    # Errors come back as the client's RequestException with DHIS2's status codes.
    with pytest.raises(RequestException) as missing:
        nurse.get("messageConversations/nosuchconv1")
    assert missing.value.code == 404
    with pytest.raises(RequestException) as triage:
        nurse.post(
            f"messageConversations/{ticket}/status", params={"messageConversationStatus": "SOLVED"}
        )
    assert triage.value.code == 403

    # A personal access token instead of the password.
    key = nurse.post("apiToken", json={"name": "script"}).json()["response"]["key"]
    scripted = Api(web_server, "nurse", "not-the-password")
    scripted.session.auth = None
    scripted.session.headers["Authorization"] = f"ApiToken {key}"
    assert scripted.get("me").json()["id"] == nurse_id
    assert len(scripted.get("messageConversations").json()["messageConversations"]) == 2
