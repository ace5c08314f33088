"""Celery app and thin tasks. `celery -A tasks worker` finds `app` here."""

from tasks import delivery as delivery
from tasks import logcontext as logcontext
from tasks.celery_app import app

__all__ = ["app"]
