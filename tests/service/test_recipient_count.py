"""The composer's count before sending equals what the fan-out then delivers, on PostgreSQL and
SQLite, for every mix of routes; and it is refused exactly where a send would be."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service import messaging as msg
from service.errors import Forbidden, NotFound, UnknownReference
from service.models import Delivery, DeliveryTarget, Inbox
from tests import factories as f
from tests.helpers import deliver


@pytest.fixture
def world(db: Session) -> dict:
    country = f.org_unit(db, "Sierra Leone")
    bo = f.org_unit(db, "Bo", country)
    kenema = f.org_unit(db, "Kenema", country)
    facility = f.org_unit(db, "Bo Govt. Hospital", bo)
    sender = f.user(db, units=(bo,))
    a = f.user(db, units=(bo,))
    b = f.user(db, units=(facility,))
    c = f.user(db, units=(facility, kenema))
    f.user(db, units=(facility,), disabled=True)
    d = f.user(db, units=(kenema,))
    group = f.user_group(db, members=(a, d, sender))
    ou_group = f.org_unit_group(db, (facility, kenema))
    return {
        "country": country, "bo": bo, "kenema": kenema, "facility": facility,
        "sender": sender, "a": a, "b": b, "c": c, "d": d, "group": group, "ou_group": ou_group,
    }  # fmt: skip


CASES = {
    "one unit": ({"org_units": ["bo"]}, "SELECTED"),
    "subtree": ({"org_units": ["bo"]}, "DESCENDANTS"),
    "users and a group": ({"users": ["a", "b"], "user_groups": ["group"]}, "SELECTED"),
    "unit group": ({"org_unit_groups": ["ou_group"]}, "SELECTED"),
    "everything twice": (
        {"users": ["c"], "user_groups": ["group"], "org_units": ["bo", "facility"]},
        "DESCENDANTS",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_count_is_what_the_fan_out_delivers(db: Session, world: dict, case: str) -> None:
    spec, ou_mode = CASES[case]
    to = msg.Recipients(**{k: [world[n].uid for n in v] for k, v in spec.items()})
    sender = f.user(db, broadcaster=True)  # may send anywhere
    before = db.scalar(select(func.count()).select_from(DeliveryTarget))
    n = msg.count_recipients(db, sender, to, ou_mode=ou_mode)
    assert db.scalar(select(func.count()).select_from(DeliveryTarget)) == before  # writes nothing
    sent = msg.send_message(db, sender, "S", "T", to, ou_mode=ou_mode)
    deliver(db, sent.delivery.id)
    delivery = db.get(Delivery, sent.delivery.id)
    assert delivery is not None and delivery.total == delivery.delivered == n
    rows = db.scalar(
        select(func.count()).select_from(Inbox).where(Inbox.conversation_id == sent.conversation.id)
    )
    assert rows == n + 1  # and the sender's own row


def test_the_sender_is_not_counted_and_nothing_chosen_is_zero(db: Session, world: dict) -> None:
    sender = world["sender"]
    assert msg.count_recipients(db, sender, msg.Recipients()) == 0
    to = msg.Recipients(user_groups=[world["group"].uid])
    assert msg.count_recipients(db, sender, to) == 2


def test_the_count_is_refused_where_a_send_would_be(db: Session, world: dict) -> None:
    sender = world["sender"]
    outside = msg.Recipients(org_units=[world["kenema"].uid])
    with pytest.raises(Forbidden) as exc:
        msg.count_recipients(db, sender, outside)
    assert exc.value.field == "organisationUnits"
    with pytest.raises(Forbidden):
        msg.count_recipients(db, sender, msg.Recipients(org_unit_groups=[world["ou_group"].uid]))
    with pytest.raises(UnknownReference):
        msg.count_recipients(db, sender, msg.Recipients(users=["nosuchuser1"]))
    with pytest.raises(NotFound):
        msg.count_recipients(db, sender, msg.Recipients(user_groups=["nosuchgrp01"]))
    # Inside the sender's own subtree, the units below are fine.
    inside = msg.Recipients(org_units=[world["facility"].uid])
    assert msg.count_recipients(db, sender, inside, ou_mode="DESCENDANTS") == 2
