"""The pages' forms (Flask-WTF): parsing, CSRF, and where each domain error is shown.

The rules live in the service layer; these forms only parse what people type and carry the CSRF
token. A domain error names the input at fault with its API name (`organisationUnits`, ...);
`show_error` puts the message next to the matching control, or at the top when no control matches.
Every form is rendered by hand in the templates (never `hidden_tag()`), so no two forms on one
page share an element id.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    HiddenField,
    PasswordField,
    RadioField,
    SelectField,
    StringField,
    TextAreaField,
)

from service.feedback import TICKET_STATUSES
from service.messaging import MAX_SUBJECT, MAX_TEXT
from service.models import Priority

_ID_SEPARATORS = re.compile(r"[\s,;]+")

try:  # WTForms 3.3 deprecates (value, label) tuples for choices in favour of SelectChoice.
    from wtforms import SelectChoice as _SelectChoice
except ImportError:  # pragma: no cover - older WTForms
    _SelectChoice = None


def choice(value: str, label: str) -> Any:
    """One option of a select or radio control, in the form this WTForms wants."""
    return (value, label) if _SelectChoice is None else _SelectChoice(value, label)


def split_ids(raw: str | None) -> list[str]:
    """Ids typed into a text box, separated by commas, semicolons or whitespace; order kept,
    duplicates dropped."""
    return list(dict.fromkeys(p for p in _ID_SEPARATORS.split(raw or "") if p))


class PageForm(FlaskForm):
    """A form whose domain errors can be shown next to its controls."""

    # The service's field name -> this form's field name.
    domain_fields: ClassVar[dict[str, str]] = {}
    # Errors that belong to no single control (shown in the summary and, where the template has
    # one, at the top of a group of controls).
    general_errors: list[str]

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.general_errors = []

    def show_error(self, field: str | None, message: str) -> str | None:
        """Attach `message` to the control the service named; return that control's name."""
        name = self.domain_fields.get(field or "", field or "")
        if name in self._fields and name != "csrf_token":
            target = self._fields[name]
            target.errors = [*target.errors, message]
            return name
        self.general_errors.append(message)
        return None

    def error_list(self) -> list[tuple[str | None, str]]:
        """Every error as (control id or None, message), for the summary at the top."""
        out: list[tuple[str | None, str]] = [(None, m) for m in self.general_errors]
        for name, f in self._fields.items():
            if name == "csrf_token":
                continue
            out.extend((f.id, str(m)) for m in f.errors)
        return out


class LoginForm(PageForm):
    username = StringField(
        "Username",
        render_kw={
            "autocomplete": "username",
            "autocapitalize": "none",
            "spellcheck": "false",
            "required": True,
        },
    )
    password = PasswordField(
        "Password", render_kw={"autocomplete": "current-password", "required": True}
    )
    next = HiddenField()


class ComposeForm(PageForm):
    domain_fields: ClassVar[dict[str, str]] = {
        "users": "users",
        "userGroups": "user_groups",
        "organisationUnits": "org_units",
        "organisationUnitGroups": "org_unit_groups",
        "ouMode": "include_descendants",
        "discussion": "reply_mode",
        # "recipients" (none chosen, too many, nobody reached) stays general: it is about them all.
    }

    subject = StringField("Subject", render_kw={"maxlength": MAX_SUBJECT, "required": True})
    text = TextAreaField("Message", render_kw={"rows": 8, "maxlength": MAX_TEXT, "required": True})
    users = StringField("User ids", render_kw={"autocomplete": "off", "spellcheck": "false"})
    user_groups = StringField(
        "User group ids", render_kw={"autocomplete": "off", "spellcheck": "false"}
    )
    org_units = StringField(
        "Organisation unit ids", render_kw={"autocomplete": "off", "spellcheck": "false"}
    )
    org_unit_groups = StringField(
        "Organisation unit group ids", render_kw={"autocomplete": "off", "spellcheck": "false"}
    )
    include_descendants = BooleanField("Include all units below the chosen organisation units")
    reply_mode = RadioField(
        "Who sees replies",
        # The labels are written out in the template, with their explanations.
        choices=[choice("auto", "Automatic"), choice("discussion", "Discussion")],
        default="auto",
    )

    @property
    def discussion(self) -> bool | None:
        """None lets the service decide (announcement when large); True forces a discussion."""
        return True if self.reply_mode.data == "discussion" else None


class FeedbackForm(PageForm):
    domain_fields: ClassVar[dict[str, str]] = {}

    subject = StringField("Subject", render_kw={"maxlength": MAX_SUBJECT, "required": True})
    text = TextAreaField(
        "Your feedback", render_kw={"rows": 8, "maxlength": MAX_TEXT, "required": True}
    )


class ReplyForm(PageForm):
    domain_fields: ClassVar[dict[str, str]] = {}

    text = TextAreaField(
        "Reply", id="reply-text", render_kw={"rows": 5, "maxlength": MAX_TEXT, "required": True}
    )
    internal = BooleanField("Internal reply — seen by feedback handlers only", id="reply-internal")


STATUS_CHOICES = [choice(s.value, s.value.title()) for s in TICKET_STATUSES]
PRIORITY_CHOICES = [choice(p.value, p.value.title()) for p in Priority]


class HandlingForm(PageForm):
    """A feedback handler's controls; the assignee choices are the feedback group's members."""

    domain_fields: ClassVar[dict[str, str]] = {
        "messageConversationStatus": "status",
        "messageConversationPriority": "priority",
    }

    status = SelectField("Status", choices=STATUS_CHOICES, validate_choice=False)
    priority = SelectField("Priority", choices=PRIORITY_CHOICES, validate_choice=False)
    # Any value is passed on: the service says whether it is a current handler.
    assignee = SelectField("Assignee", choices=[choice("", "Nobody")], validate_choice=False)


class SettingsForm(PageForm):
    domain_fields: ClassVar[dict[str, str]] = {"id": "group"}

    group = StringField(
        "Feedback recipients user group",
        render_kw={"autocomplete": "off", "spellcheck": "false"},
    )


def _new_password(label: str) -> Any:
    return PasswordField(
        label, render_kw={"autocomplete": "new-password", "required": True, "maxlength": 72}
    )


class NewPasswordForm(PageForm):
    """A new password typed twice: an administrator's reset of someone's password."""

    domain_fields: ClassVar[dict[str, str]] = {"password": "new_password"}

    new_password = _new_password("New password")
    confirm_password = _new_password("New password again")

    def check_confirmation(self) -> bool:
        """Whether the two new passwords are there and match; if not, say so next to them."""
        ok = True
        if not self.new_password.data:
            self.show_error("new_password", "Enter the new password.")
            ok = False
        if self.new_password.data and self.confirm_password.data != self.new_password.data:
            self.show_error("confirm_password", "The two new passwords are not the same.")
            ok = False
        return ok

    def clear_passwords(self) -> None:
        """Passwords are never sent back in a page."""
        for f in self._fields.values():
            if isinstance(f, PasswordField):
                f.data = ""


class ChangePasswordForm(NewPasswordForm):
    """My own password: the current one first."""

    domain_fields: ClassVar[dict[str, str]] = {
        "password": "new_password",
        "current_password": "current_password",
    }

    current_password = PasswordField(
        "Current password", render_kw={"autocomplete": "current-password", "required": True}
    )
    # Declared again so that they follow the current password on the page and in the summary.
    new_password = _new_password("New password")
    confirm_password = _new_password("New password again")

    def check_confirmation(self) -> bool:
        ok = True
        if not self.current_password.data:
            self.show_error("current_password", "Enter your current password.")
            ok = False
        return super().check_confirmation() and ok
