"""Domain errors. They know nothing of HTTP; web/ maps each kind to a status code."""

from __future__ import annotations


class DomainError(Exception):
    """Base class; `field` names the input at fault where there is one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(DomainError):
    """The request is malformed (HTTP 400)."""


class NotFound(DomainError):
    """The object does not exist, or the caller may not know it does (HTTP 404)."""


class UnknownReference(DomainError):
    """A referenced user or organisation unit does not exist (HTTP 409, as DHIS2 answers)."""


class Conflict(DomainError):
    """The request cannot be done in the current state (HTTP 409)."""


class Forbidden(DomainError):
    """The caller may see the object but not do this to it (HTTP 403)."""
