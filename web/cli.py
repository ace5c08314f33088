"""Command-line tools: `flask --app web <command>`."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    pass
