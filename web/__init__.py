"""Flask front end: `create_app(settings=None)`; `flask --app web ...` finds it here."""

from web.app import create_app

__all__ = ["create_app"]
