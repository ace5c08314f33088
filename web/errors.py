"""Error handlers: JSON (DHIS2's web-message shape) for /api, HTML elsewhere."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    pass
