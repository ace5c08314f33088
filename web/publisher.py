"""The boundary to the broker: publish a task by name, after the data it needs is committed."""

from __future__ import annotations

import logging
from typing import Any

from service.config import Settings

log = logging.getLogger(__name__)


class CeleryPublisher:
    """Sends tasks by name. A broker outage is logged and survived: the sweep republishes
    whatever the database records as unfinished.

    A request must never wait long on the broker: every socket operation is bounded by
    BROKER_CONNECT_TIMEOUT and a failed publish is not retried here (the sweep does that), so a
    broker that is down — or accepts connections but never answers — costs a submission about
    BROKER_CONNECT_TIMEOUT seconds, after which it is accepted anyway (the work is committed).
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._celery: Any = None

    def _app(self) -> Any:
        if self._celery is None:
            from tasks.celery_app import make_celery

            celery = make_celery(self._settings)
            timeout = self._settings.broker_connect_timeout
            celery.conf.broker_transport_options = {
                **celery.conf.broker_transport_options,
                "socket_timeout": timeout,
                "retry_on_timeout": False,
            }
            celery.conf.task_publish_retry_policy = {
                **celery.conf.task_publish_retry_policy,
                "max_retries": 0,
            }
            self._celery = celery
        return self._celery

    def publish(self, name: str, *args: int) -> bool:
        from tasks.celery_app import TASK_QUEUES

        try:
            self._app().send_task(name, args=list(args), queue=TASK_QUEUES[name])
        except Exception:  # any broker failure: the database still records the work
            log.warning(
                "publish of %s%s failed; the sweep will retry it", name, args, exc_info=True
            )
            return False
        return True
