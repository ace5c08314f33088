"""JSON shapes, following DHIS2's Web API field names."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from service.delivery import progress
from service.errors import InvalidInput
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
        "name": c.subject,
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


def listed(s: Summary, messages: list[Message] | None = None) -> dict[str, Any]:
    """A list entry; with its messages when `fields` asked for them."""
    body = summary(s)
    if messages is not None:
        body["messages"] = [message(m) for m in messages]
    return body


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


# ---------------------------------------------------------------------------------------------
# DHIS2's `fields` parameter: `id,subject,messages[id,text,sender[id,displayName]]`, `*`, `!x`

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.]*$")
_PRESETS = {
    ":identifiable": ("id", "name", "displayName", "created", "lastUpdated"),
    ":nameable": ("id", "name", "displayName", "created", "lastUpdated"),
}
MAX_FIELDS_LENGTH = 1_000


@dataclass
class FieldSpec:
    include: dict[str, FieldSpec | None] = field(default_factory=dict)
    exclude: set[str] = field(default_factory=set)
    everything: bool = False

    def wants(self, name: str) -> bool:
        return name not in self.exclude and (self.everything or name in self.include)


def _split_top(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
            if depth < 0:
                raise InvalidInput(f"Unbalanced brackets in fields: {text!r}.", field="fields")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise InvalidInput(f"Unbalanced brackets in fields: {text!r}.", field="fields")
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def parse_fields(text: str) -> FieldSpec:
    """Parse a `fields` value; unknown names are simply absent from answers, as in DHIS2."""
    if len(text) > MAX_FIELDS_LENGTH:
        raise InvalidInput(f"fields must be at most {MAX_FIELDS_LENGTH} characters.", "fields")
    spec = FieldSpec()
    for token in _split_top(text):
        if token in ("*", ":all", ":owner"):
            spec.everything = True
        elif token in _PRESETS:
            spec.include.update((name, None) for name in _PRESETS[token])
        elif token.startswith("!"):
            spec.exclude.add(token[1:])
        else:
            name, bracket, rest = token.partition("[")
            name = name.strip()
            if not _NAME.match(name) or (bracket and not rest.endswith("]")):
                raise InvalidInput(f"Cannot read field {token!r} in fields.", field="fields")
            spec.include[name] = parse_fields(rest[:-1]) if bracket else None
    return spec


def select(value: Any, spec: FieldSpec | None) -> Any:
    """Keep only the fields asked for, at every level."""
    if spec is None:
        return value
    if isinstance(value, list):
        return [select(v, spec) for v in value]
    if not isinstance(value, dict):
        return value
    keys = list(value) if spec.everything else [k for k in spec.include if k in value]
    return {k: select(value[k], spec.include.get(k)) for k in keys if k not in spec.exclude}
