"""The Celery application, built from the same environment settings as the web app."""

from __future__ import annotations

import sys
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from service.config import BULK_QUEUE, INTERACTIVE_QUEUE, ConfigError, Settings, load_settings

# Stable names, each `domain.verb`; bulk fan-out never shares a queue with interactive work.
TASK_QUEUES: dict[str, str] = {
    "delivery.plan": BULK_QUEUE,
    "delivery.fan_out_batch": BULK_QUEUE,
    "delivery.sweep": INTERACTIVE_QUEUE,
}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings. Time limits: soft < hard < visibility timeout (checked by Settings)."""
    transport_options: dict[str, Any] = {
        "visibility_timeout": settings.broker_visibility_timeout,
        "socket_connect_timeout": settings.broker_connect_timeout,
        "socket_timeout": max(settings.broker_connect_timeout, 5.0),
        "retry_on_timeout": True,
    }
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": transport_options,
        # Visibility timeout is also read here by some code paths (e.g. the result backend).
        "result_backend_transport_options": {
            "visibility_timeout": settings.broker_visibility_timeout
        },
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": settings.broker_connect_timeout,
        # Completion is tracked in SQL; results are not kept.
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": INTERACTIVE_QUEUE,
        "task_queues": [
            Queue(BULK_QUEUE, Exchange(BULK_QUEUE), routing_key=BULK_QUEUE),
            Queue(INTERACTIVE_QUEUE, Exchange(INTERACTIVE_QUEUE), routing_key=INTERACTIVE_QUEUE),
        ],
        "task_create_missing_queues": False,
        "task_routes": {name: {"queue": q, "routing_key": q} for name, q in TASK_QUEUES.items()},
        # Flower and operators see tasks from the moment they are sent: task-sent from every
        # publisher (web, workers, beat), task-received/started/succeeded/failed from workers.
        # With results ignored, STARTED reaches Flower through the task-started event;
        # task_track_started also records it wherever a result backend is configured.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 1.0,
        },
        # Beat writes its schedule file after every task it sends, so the file's age tells a
        # health check that beat is still ticking (docker-compose.yml, service `beat`).
        "beat_sync_every": 1,
        "beat_schedule": {
            "delivery-sweep": {
                "task": "delivery.sweep",
                "schedule": settings.sweep_interval,
                "options": {"queue": INTERACTIVE_QUEUE, "expires": settings.sweep_interval},
            }
        },
        "worker_hijack_root_logger": False,
    }


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or load_settings()
    celery = Celery("messaging")
    celery.conf.update(celery_config(settings))
    celery.conf.messaging_settings = settings
    return celery


try:
    app = make_celery()
except ConfigError as exc:
    # Every Celery entry point (worker, beat, flower) imports this first: stop with the message.
    sys.exit(f"configuration error: {exc}")
