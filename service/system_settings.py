"""Run-time settings an administrator changes, kept in the database."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.models import SystemSetting, UserGroup

FEEDBACK_RECIPIENTS = "feedback_recipients_group_id"


def get_value(session: Session, key: str) -> str | None:
    return session.scalar(select(SystemSetting.value).where(SystemSetting.key == key))


def set_value(session: Session, key: str, value: str | None) -> None:
    """Set or clear a setting. The caller commits."""
    if value is None:
        session.execute(delete(SystemSetting).where(SystemSetting.key == key))
        return
    row = session.get(SystemSetting, key)
    if row is None:
        session.add(SystemSetting(key=key, value=value))
    else:
        row.value = value
    session.flush()


def feedback_group(session: Session) -> UserGroup | None:
    """The user group configured as feedback recipients, or None."""
    raw = get_value(session, FEEDBACK_RECIPIENTS)
    if raw is None:
        return None
    return session.get(UserGroup, int(raw))


def set_feedback_group(session: Session, group: UserGroup | None) -> None:
    """Configure (or with None, clear) the feedback recipients group. The caller commits."""
    set_value(session, FEEDBACK_RECIPIENTS, None if group is None else str(group.id))
