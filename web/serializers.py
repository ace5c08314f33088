"""JSON shapes, following DHIS2's Web API field names."""

from __future__ import annotations

import datetime as dt
from typing import Any

from service.delivery import progress
from service.messaging import Summary, View
from service.models import Message, User


def iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def user_ref(user: User | None) -> dict[str, Any] | None:
    if user is None:
        return None
    return {"id": user.uid, "displayName": user.display_name, "username": user.username}


def summary(s: Summary) -> dict[str, Any]:
    c = s.conversation
    return {
        "id": c.uid,
        "subject": c.subject,
        "displayName": c.subject,
        "messageType": c.message_type,
        "status": c.status,
        "priority": c.priority,
        "read": s.read,
        "followUp": s.followup,
        "lastMessage": iso(s.last_message),
        "lastSender": user_ref(s.last_sender),
        "messageCount": s.message_count,
        "created": iso(c.created_at),
        "lastUpdated": iso(s.last_message),
        "createdBy": user_ref(c.created_by),
        # Who handles feedback is the handlers' business.
        "assignee": user_ref(c.assignee) if s.handler else None,
        "announcement": c.is_announcement,
    }


def message(m: Message) -> dict[str, Any]:
    return {
        "id": m.uid,
        "text": m.text,
        "created": iso(m.created_at),
        "sender": user_ref(m.sender),
        "internal": m.internal,
    }


def conversation(v: View, *, include_delivery: bool = False) -> dict[str, Any]:
    body = summary(v.summary)
    body["messages"] = [message(m) for m in v.messages]
    body["userMessages"] = [{"user": user_ref(u)} for u in v.participants]
    body["participantCount"] = v.participant_count
    if include_delivery and v.delivery is not None:
        body["delivery"] = progress(v.delivery)
    return body
