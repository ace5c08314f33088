"""Worker logging: the format and level from the settings, and each task's log records carrying
its id, name, delivery and batch (from its arguments, which are ids only) and conversation."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import setup_logging, task_postrun, task_prerun
from sqlalchemy import select

from service import logs
from service.models import Delivery
from tasks.celery_app import app
from tasks.db import session_scope

log = logging.getLogger(__name__)


@setup_logging.connect
def _configure(loglevel: Any = None, **_kwargs: Any) -> None:
    """Connected, so Celery leaves logging to us (worker, beat)."""
    settings = app.conf.messaging_settings
    level = loglevel if isinstance(loglevel, int) else settings.log_level
    logs.configure(settings.log_format, level)


def _conversation_of(delivery_id: int) -> int | None:
    try:
        with session_scope(app.conf.messaging_settings) as session:
            return session.scalar(
                select(Delivery.conversation_id).where(Delivery.id == delivery_id)
            )
    except Exception:  # only a log field: the task itself meets and handles the failure
        log.debug("conversation of delivery %s not found", delivery_id, exc_info=True)
        return None


@task_prerun.connect
def _bind(task_id: str, task: Any, args: Any = None, **_kwargs: Any) -> None:
    fields: dict[str, Any] = {"task_id": task_id, "task_name": task.name}
    args = list(args or ())
    if task.name.startswith("delivery.") and args and isinstance(args[0], int):
        fields["delivery_id"] = args[0]
        if len(args) > 1:
            fields["batch"] = args[1]
        fields["conversation_id"] = _conversation_of(args[0])
    logs.clear()
    logs.bind(**fields)


@task_postrun.connect
def _unbind(**_kwargs: Any) -> None:
    logs.clear()
