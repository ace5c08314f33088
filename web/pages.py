"""Server-rendered pages: sign in, the inbox, a conversation, writing messages and feedback, and
the administrators' settings.

Views call the same service functions as the JSON API (never the API over HTTP). Each view that
changes something commits the request's transaction and only then publishes the task that
continues the work. Authorization lives in the service layer: NotFound and Forbidden raised there
become the 404 and 403 pages (web/errors.py). A domain error that names a control of the
submitted form re-renders that form with the message next to the control and nothing typed lost.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user, login_user, logout_user
from markupsafe import Markup, escape
from sqlalchemy import func, or_, select
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response

from service import accounts
from service import feedback as fb
from service import login_throttle as throttle
from service import messaging as msg
from service.errors import DomainError, Forbidden, InvalidInput
from service.models import (
    Conversation,
    DeliveryState,
    MessageType,
    Priority,
    User,
    UserGroup,
    user_group_members,
)
from service.system_settings import feedback_group, set_feedback_group
from web.app import db
from web.auth import authenticate
from web.errors import status_for
from web.forms import (
    ChangePasswordForm,
    ComposeForm,
    FeedbackForm,
    HandlingForm,
    LoginForm,
    NewPasswordForm,
    PageForm,
    ReplyForm,
    SettingsForm,
    choice,
    split_ids,
)

bp = Blueprint("pages", __name__)

APP_NAME = "DHIS2 Messaging"
PAGE_SIZE = 25
MAX_QUERY = 200
PUBLIC_ENDPOINTS = {"pages.login"}
# Asked for by app.js: signed out, they answer 401 JSON instead of redirecting to the sign-in page.
JSON_ENDPOINTS = {"pages.unread_counts", "pages.recipient_count"}
# Conversations with more participants than this show them collapsed (a <details> element).
PARTICIPANTS_OPEN = 8
# Error pages re-render the form with this status: the request was understood but not accepted.
FORM_ERROR = 422


# ---------------------------------------------------------------------------------------------
# Who is calling, where to go next


@bp.before_request
def _require_login() -> Response | None:
    if request.endpoint in PUBLIC_ENDPOINTS or current_user.is_authenticated:
        return None
    if request.endpoint in JSON_ENDPOINTS:
        return _json_error(401, "Sign in first.")
    return redirect(url_for("pages.login", next=_back_after_sign_in()))


def _back_after_sign_in() -> str:
    """Where signing in leads: this page; for a form posted after the session ended, the page the
    form was on (its action takes POST only, and a GET of it after signing in would be a 405)."""
    if request.method in ("GET", "HEAD"):
        return _here()
    ref = urlsplit(request.referrer or "")
    same_site = ref.netloc == request.host
    page = ref.path + (f"?{ref.query}" if ref.query else "")
    return safe_next(page, url_for("pages.inbox")) if same_site else url_for("pages.inbox")


@bp.after_request
def _security_headers(resp: Response) -> Response:
    # Defence in depth behind autoescaping: no inline script or style can run on our pages.
    resp.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    )
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("Referrer-Policy", "same-origin")
    return resp


def _here() -> str:
    """This request's path and query, for coming back after signing in or acting."""
    return request.full_path.rstrip("?")


def safe_next(target: str | None, default: str) -> str:
    """`target` if it is a path on this site, else `default`: no open redirects."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return default
    if "\\" in target or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return default
    return target


def _me() -> User:
    """The caller as a fresh ORM object in this request's session."""
    user = db().get(User, current_user.pk)
    if user is None or user.disabled:  # deleted or disabled since signing in
        logout_user()
        abort(redirect(url_for("pages.login")))
    return user


def _settings() -> Any:
    return current_app.extensions["settings"]


def _json_error(code: int, message: str, field: str | None = None) -> Response:
    resp = jsonify({"status": "ERROR", "httpStatusCode": code, "message": message, "field": field})
    resp.status_code = code
    return resp


def _publish(name: str, *args: int) -> None:
    current_app.extensions["publisher"].publish(name, *args)


def _owned_or_raise(form: PageForm, exc: DomainError) -> None:
    """Show `exc` on `form` if it is about one of the form's controls; otherwise let the error
    handlers answer (404 for a conversation one may not see, 403 for a forbidden action)."""
    name = form.domain_fields.get(exc.field or "", exc.field or "")
    if name not in form._fields or name == "csrf_token":
        raise exc
    db().rollback()
    form.show_error(exc.field, exc.message)


# ---------------------------------------------------------------------------------------------
# Template helpers


_URL = re.compile(r"https?://[^\s<>\"'`]+", re.IGNORECASE)
_TRAILING = ".,;:!?)]}*"


def linkify(text: str | None) -> Markup:
    """Message text as HTML: everything escaped, http(s) URLs made into links.

    The text is split into URL and non-URL parts and *every* part goes through `escape` (the
    URL both as the attribute and as the link text), so no input can open a tag or attribute;
    only http and https links are made, so `javascript:` stays plain text. Trailing punctuation
    is left out of a link, except a closing parenthesis that closes one in the URL.
    """
    if not text:
        return Markup("")
    out: list[Markup] = []
    pos = 0
    for m in _URL.finditer(text):
        url = m.group(0)
        while url and url[-1] in _TRAILING:
            if url[-1] == ")" and url.count("(") >= url.count(")"):
                break
            url = url[:-1]
        if "://" not in url or url.endswith("://"):
            continue
        start = m.start()
        out.append(escape(text[pos:start]))
        out.append(Markup('<a href="{0}" rel="noopener noreferrer nofollow">{0}</a>').format(url))
        pos = start + len(url)
    out.append(escape(text[pos:]))
    return Markup("").join(out)


def when(value: dt.datetime | None) -> Markup:
    """A <time> element: short text (time today, day this year, else the date), full in title."""
    if value is None:
        return Markup("")
    value = value.astimezone(dt.UTC)
    now = dt.datetime.now(dt.UTC)
    if value.date() == now.date():
        short = value.strftime("%H:%M")
    elif value.year == now.year:
        short = f"{value.day} {value:%b}"
    else:
        short = f"{value.day} {value:%b %Y}"
    full = f"{value:%Y-%m-%d %H:%M} UTC"
    iso = value.isoformat(timespec="seconds").replace("+00:00", "Z")
    return Markup('<time datetime="{}" title="{}">{}</time>').format(iso, full, short)


def delivery_text(state: str, total: int | None, delivered: int, failed: int) -> str:
    """The words beside the progress bar (app.js writes the same ones while polling)."""
    if state == DeliveryState.QUEUED.value or total is None:
        return "Queued — counting recipients…"
    if state == DeliveryState.DELIVERING.value:
        return f"Delivering — {delivered} of {total} delivered"
    if state == DeliveryState.DELIVERED.value:
        return f"Delivered to all {total} recipients" if total != 1 else "Delivered to 1 recipient"
    return f"Failed — {delivered} of {total} delivered, {failed} not reached"


@bp.app_template_filter("linkify")
def _linkify_filter(text: str | None) -> Markup:
    return linkify(text)


@bp.app_template_filter("when")
def _when_filter(value: dt.datetime | None) -> Markup:
    return when(value)


@bp.app_context_processor
def _layout() -> dict[str, Any]:
    def header_unread() -> msg.UnreadCounts | None:
        # Also rendered by the error pages, where the database may be the very thing that failed.
        try:
            if not current_user.is_authenticated:
                return None
            user = db().get(User, current_user.pk)
            return None if user is None else msg.unread_counts(db(), user)
        except Exception:  # a header badge must never turn an error page into a second error
            current_app.logger.warning("unread badge unavailable", exc_info=True)
            return None

    return {"app_name": APP_NAME, "header_unread": header_unread, "delivery_text": delivery_text}


def unread_json(counts: msg.UnreadCounts) -> dict[str, Any]:
    """The header badge's numbers. `feedback` is shown to handlers, and to anyone else only
    while an answer to their own feedback is unread (the same rule as the Feedback tab)."""
    return {
        "total": counts.total,
        "messages": counts.messages,
        "feedback": counts.feedback,
        "system": counts.system,
        "handler": counts.handler,
        "showFeedback": counts.handler or counts.feedback > 0,
    }


@bp.get("/unread-counts")
def unread_counts() -> Response:
    """The header's unread counts per folder, polled by app.js every 8 seconds (one query)."""
    resp = jsonify(unread_json(msg.unread_counts(db(), _me())))
    resp.headers["Cache-Control"] = "no-store"
    return resp


# ---------------------------------------------------------------------------------------------
# Signing in and out


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    form = LoginForm()
    if request.method == "GET":
        form.next.data = safe_next(request.args.get("next"), "")
        if current_user.is_authenticated:
            return redirect(form.next.data or url_for("pages.inbox"))
        return render_template("login.html", form=form, title="Sign in")
    if form.validate_on_submit():
        username = (form.username.data or "").strip()
        password = form.password.data or ""
        if not username:
            form.show_error("username", "Enter your username.")
        if not password:
            form.show_error("password", "Enter your password.")
        if username and password:
            session = db()
            # The lockout is kept in the database (service/login_throttle.py): every gunicorn
            # worker sees the same counts. While locked, the password is not even checked.
            wait = throttle.locked_for(session, username, request.remote_addr)
            if wait is not None:
                minutes = max(1, math.ceil(wait.total_seconds() / 60))
                form.show_error(
                    None,
                    "Too many failed sign-in attempts. Wait "
                    f"{_plural(minutes, 'minute', 'minutes')} and try again.",
                )
                form.password.data = ""
                return render_template("login.html", form=form, title="Sign in"), 429
            user = authenticate(username, password)
            if user is not None:
                throttle.record_success(session, username)
                session.commit()
                login_user(user)
                return redirect(safe_next(form.next.data, url_for("pages.inbox")))
            throttle.record_failure(session, username, request.remote_addr)
            session.commit()
            form.show_error(None, "The username or password is not right. Please try again.")
    form.password.data = ""
    return render_template("login.html", form=form, title="Sign in"), FORM_ERROR


@bp.post("/logout")
def logout() -> Response:
    logout_user()
    flash("You have signed out.", "success")
    return redirect(url_for("pages.login"))


# ---------------------------------------------------------------------------------------------
# The inbox

FOLDERS = {
    "": ("All", None),
    "messages": ("Messages", MessageType.PRIVATE.value),
    "feedback": ("Feedback", MessageType.TICKET.value),
    "system": ("System", MessageType.SYSTEM.value),
}
STATUS_FILTERS = [s.value for s in fb.TICKET_STATUSES]
PRIORITY_FILTERS = [p.value for p in Priority]


@dataclass(frozen=True)
class InboxQuery:
    """The inbox's filters as they appear in its URL; unknown values are ignored, not errors."""

    folder: str = ""
    unread: bool = False
    followup: bool = False
    status: str = ""
    priority: str = ""
    mine: bool = False
    q: str = ""
    page: int = 1

    @classmethod
    def from_args(cls, args: MultiDict[str, str], handler: bool) -> InboxQuery:
        folder = args.get("folder", "")
        status = args.get("status", "").upper()
        priority = args.get("priority", "").upper()
        try:
            page = max(1, min(int(args.get("page", "1")), 1_000_000))
        except ValueError:
            page = 1
        return cls(
            folder=folder if folder in FOLDERS else "",
            unread=args.get("unread") == "1",
            followup=args.get("followup") == "1",
            # Feedback filters are the handlers' tools.
            status=status if handler and status in STATUS_FILTERS else "",
            priority=priority if handler and priority in PRIORITY_FILTERS else "",
            mine=handler and args.get("mine") == "1",
            q=args.get("q", "").strip()[:MAX_QUERY],
            page=page,
        )

    def filters(self, user: User) -> msg.ListFilters:
        return msg.ListFilters(
            message_type=FOLDERS[self.folder][1],
            status=self.status or None,
            priority=self.priority or None,
            read=False if self.unread else None,
            followup=True if self.followup else None,
            assignee_uid=user.uid if self.mine else None,
            query=self.q or None,
        )

    def args(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("folder", "status", "priority", "q"):
            if value := getattr(self, key):
                out[key] = value
        for key in ("unread", "followup", "mine"):
            if getattr(self, key):
                out[key] = "1"
        if self.page > 1:
            out["page"] = self.page
        return out

    def url(self, **changes: Any) -> str:
        return url_for("pages.inbox", **replace(self, **changes).args())

    @property
    def filtered(self) -> bool:
        return bool(
            self.unread or self.followup or self.status or self.priority or self.mine or self.q
        )


@bp.get("/")
def inbox() -> Any:
    user = _me()
    session = db()
    handler = msg.is_handler(session, user.id)
    query = InboxQuery.from_args(request.args, handler)
    result = msg.list_conversations(
        session,
        user,
        page=query.page,
        page_size=PAGE_SIZE,
        filters=query.filters(user),
        handler=handler,
    )
    if not result.items and query.page > result.page_count:
        return redirect(query.url(page=result.page_count))
    folders = ["", "messages", "system"]
    if handler or query.folder == "feedback" or fb.has_sent_feedback(session, user):
        folders.insert(2, "feedback")
    return render_template(
        "inbox.html",
        title="Inbox",
        nav="inbox",
        result=result,
        query=query,
        handler=handler,
        folders=[(key, FOLDERS[key][0]) for key in folders],
        statuses=STATUS_FILTERS,
        priorities=PRIORITY_FILTERS,
        triage_choices=_triage_choices(session) if handler else None,
        snippets=msg.snippets(session, handler, [s.conversation for s in result.items]),
        # Ticked again after a refused bulk action.
        selected=set(request.args.getlist("selected")[:PAGE_SIZE]),
        me=user,
    )


BULK_ACTIONS = {
    "read": ("mark_read", {"read": True}, "Marked {n} as read."),
    "unread": ("mark_read", {"read": False}, "Marked {n} as unread."),
    "followup": ("set_followup", {"on": True}, "Marked {n} for follow-up."),
    "unfollowup": ("set_followup", {"on": False}, "Removed the follow-up mark from {n}."),
    "remove": ("remove_from_inbox", {}, "Removed {n} from your inbox."),
}


TRIAGE_ACTIONS = ("status", "priority", "assign")


def _keeping_selection(back: str, ids: list[str]) -> str:
    """`back` (a local inbox URL) with the refused selection, so that it is ticked again."""
    parts = urlsplit(back)
    query = parse_qsl(parts.query)
    query += [("selected", i) for i in ids[:PAGE_SIZE]]
    return urlunsplit(("", "", parts.path, urlencode(query), ""))


def _triage_choices(session: Any) -> dict[str, list[tuple[str, str]]]:
    """(value, label) options of the inbox's bulk status, priority and assignee controls."""
    return {
        "status": [(s, s.title()) for s in STATUS_FILTERS],
        "priority": [(p, p.title()) for p in PRIORITY_FILTERS],
        "assignee": [("", "Nobody")] + [(m.uid, m.display_name) for m in fb.handlers(session)],
    }


def _triage(user: User, ids: list[str], action: str, back: str) -> Response:
    """A handler sets the status, priority or assignee of every selected feedback conversation
    in one statement: all of them or, with a message saying why, none."""
    session = db()
    form = request.form
    try:
        if action == "status":
            n = fb.triage(session, user, ids, status=form.get("set_status", ""))
            done = f"Status set to {form.get('set_status', '').title()} on {{n}}."
        elif action == "priority":
            n = fb.triage(session, user, ids, priority=form.get("set_priority", ""))
            done = f"Priority set to {form.get('set_priority', '').title()} on {{n}}."
        else:
            assignee = form.get("set_assignee") or None
            n = fb.triage(session, user, ids, assign=True, assignee_uid=assignee)
            who = session.scalar(select(User).where(User.uid == assignee)) if assignee else None
            done = f"Assigned {{n}} to {who.display_name}." if who else "Unassigned {n}."
    except DomainError as exc:
        session.rollback()
        flash(exc.message, "error")
        return redirect(_keeping_selection(back, ids))
    session.commit()
    flash(done.format(n=_conversations(n)), "success")
    return redirect(back)


def _conversations(n: int) -> str:
    return "1 conversation" if n == 1 else f"{n} conversations"


@bp.post("/inbox/actions")
def inbox_actions() -> Response:
    """Act on the selected conversations (the caller's own copies only)."""
    user = _me()
    back = safe_next(request.form.get("next"), url_for("pages.inbox"))
    action = request.form.get("action", "")
    ids = [i for i in request.form.getlist("ids") if i][: msg.MAX_RECIPIENT_IDS]
    if action not in BULK_ACTIONS and action not in TRIAGE_ACTIONS:
        flash("Choose what to do with the selected conversations.", "error")
        return redirect(_keeping_selection(back, ids))
    if not ids:
        flash("Select at least one conversation first.", "error")
        return redirect(back)
    session = db()
    if action in TRIAGE_ACTIONS:
        return _triage(user, ids, action, back)
    fn_name, kwargs, done_text = BULK_ACTIONS[action]
    done = getattr(msg, fn_name)(session, user, ids, **kwargs)
    session.commit()
    flash(done_text.format(n=_conversations(len(done))), "success")
    return redirect(back)


# ---------------------------------------------------------------------------------------------
# A conversation


def _render_conversation(
    user: User,
    view: msg.View,
    *,
    reply_form: ReplyForm | None = None,
    handling_form: HandlingForm | None = None,
    status: int = 200,
) -> tuple[str, int]:
    session = db()
    conv = view.summary.conversation
    is_ticket = conv.message_type == MessageType.TICKET.value
    handler = view.summary.handler and is_ticket
    if reply_form is None:
        reply_form = ReplyForm(formdata=None)
    elif not handler and reply_form.internal.errors:
        # Only handlers see the internal checkbox: say it at the top instead.
        reply_form.general_errors.extend(str(e) for e in reply_form.internal.errors)
        reply_form.internal.errors = []
    if handler:
        members = fb.handlers(session)
        choices = [choice("", "Nobody")] + [choice(m.uid, m.display_name) for m in members]
        if conv.assignee is not None and all(m.id != conv.assignee_id for m in members):
            choices.append(
                choice(conv.assignee.uid, f"{conv.assignee.display_name} (not a handler)")
            )
        if handling_form is None:
            handling_form = HandlingForm(
                formdata=None,
                status=conv.status,
                priority=conv.priority,
                assignee=conv.assignee.uid if conv.assignee else "",
            )
        handling_form.assignee.choices = choices
    parent = None
    if conv.parent_id is not None:
        parent = session.get(Conversation, conv.parent_id)
    show_delivery = view.delivery is not None and (user.is_admin or conv.created_by_id == user.id)
    body = render_template(
        "conversation.html",
        title=conv.subject,
        view=view,
        conv=conv,
        me=user,
        is_ticket=is_ticket,
        handler=handler,
        can_reply=conv.message_type != MessageType.SYSTEM.value,
        announcement_recipient=conv.is_announcement and conv.created_by_id != user.id,
        parent=parent,
        reply_form=reply_form,
        handling_form=handling_form if handler else None,
        delivery=view.delivery if show_delivery else None,
        more_participants=max(0, view.participant_count - len(view.participants)),
        participants_open=PARTICIPANTS_OPEN,
    )
    return body, status


@bp.get("/conversations/<uid>")
def conversation(uid: str) -> Any:
    """Show a conversation; opening it marks it read for the caller."""
    user = _me()
    session = db()
    view = msg.view_conversation(session, user, uid)
    if not view.summary.read:
        msg.mark_read(session, user, [uid])
        session.commit()
    return _render_conversation(user, view)


@bp.post("/conversations/<uid>/reply")
def reply(uid: str) -> Any:
    user = _me()
    session = db()
    form = ReplyForm()
    if form.validate_on_submit():
        try:
            replied = msg.reply(
                session,
                user,
                uid,
                form.text.data,
                internal=bool(form.internal.data),
                inline_unread_limit=_settings().inline_unread_limit,
            )
        except DomainError as exc:
            _owned_or_raise(form, exc)
        else:
            session.commit()
            if replied.delivery is not None:
                _publish("delivery.plan", replied.delivery.id)
            target = replied.conversation
            if target.uid != uid:
                flash(
                    "Your reply went to the sender only, in this private conversation: "
                    "replies to an announcement are not sent to all its recipients.",
                    "success",
                )
            elif form.internal.data:
                flash("Internal reply added — only feedback handlers see it.", "success")
            else:
                flash("Reply sent.", "success")
            return redirect(
                url_for("pages.conversation", uid=target.uid, _anchor=f"m-{replied.message.uid}")
            )
    return _render_conversation(
        user, msg.view_conversation(session, user, uid), reply_form=form, status=FORM_ERROR
    )


@bp.post("/conversations/<uid>/feedback")
def handle_feedback(uid: str) -> Any:
    """A handler sets status, priority and assignee together: all of them or none."""
    user = _me()
    session = db()
    form = HandlingForm()
    if form.validate_on_submit():
        try:
            conv: Conversation | None = None
            if "status" in request.form:
                conv = fb.set_status(session, user, uid, form.status.data)
            if "priority" in request.form:
                conv = fb.set_priority(session, user, uid, form.priority.data)
            if "assignee" in request.form:
                conv = fb.set_assignee(session, user, uid, form.assignee.data or None)
            if conv is None:
                raise InvalidInput("Choose a status, priority or assignee.")
        except DomainError as exc:
            _owned_or_raise(form, exc)
        else:
            session.commit()
            assignee = conv.assignee.display_name if conv.assignee else "nobody"
            flash(
                f"Saved: status {conv.status.title()}, priority {conv.priority.title()}, "
                f"assigned to {assignee}.",
                "success",
            )
            return redirect(url_for("pages.conversation", uid=uid))
    return _render_conversation(
        user, msg.view_conversation(session, user, uid), handling_form=form, status=FORM_ERROR
    )


@bp.post("/conversations/<uid>/followup")
def followup(uid: str) -> Response:
    user = _me()
    session = db()
    msg.get_visible(session, user, uid)  # 404 for a conversation the caller may not see
    on = request.form.get("on") == "1"
    msg.set_followup(session, user, [uid], on=on)
    session.commit()
    flash("Marked for follow-up." if on else "Follow-up mark removed.", "success")
    return redirect(url_for("pages.conversation", uid=uid))


@bp.post("/conversations/<uid>/unread")
def mark_unread(uid: str) -> Response:
    user = _me()
    session = db()
    conv, _ = msg.get_visible(session, user, uid)
    msg.mark_read(session, user, [uid], read=False)
    session.commit()
    flash(f"“{conv.subject}” is marked unread.", "success")
    return redirect(url_for("pages.inbox"))


@bp.post("/conversations/<uid>/remove")
def remove(uid: str) -> Response:
    user = _me()
    session = db()
    conv, _ = msg.get_visible(session, user, uid)
    msg.remove_from_inbox(session, user, [uid])
    session.commit()
    flash(f"“{conv.subject}” was removed from your inbox; a new reply brings it back.", "success")
    return redirect(url_for("pages.inbox"))


# ---------------------------------------------------------------------------------------------
# Writing


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _describe(to: msg.Recipients, descendants: bool) -> str:
    parts = []
    if to.users:
        parts.append(_plural(len(to.users), "user", "users"))
    if to.user_groups:
        parts.append(_plural(len(to.user_groups), "user group", "user groups"))
    if to.org_units:
        parts.append(_plural(len(to.org_units), "organisation unit", "organisation units"))
    if to.org_unit_groups:
        parts.append(
            _plural(len(to.org_unit_groups), "organisation unit group", "organisation unit groups")
        )
    text = " and ".join([", ".join(parts[:-1]), parts[-1]] if len(parts) > 1 else parts)
    if descendants and (to.org_units or to.org_unit_groups):
        text += " (with all units below)"
    return text


@bp.route("/compose", methods=["GET", "POST"])
def compose() -> Any:
    user = _me()
    session = db()
    if request.method == "GET":
        # Links such as /compose?users=<id> start a message to someone.
        form = ComposeForm(
            formdata=None,
            users=" ".join(split_ids(request.args.get("users"))),
            user_groups=" ".join(split_ids(request.args.get("userGroups"))),
            subject=request.args.get("subject", "")[: msg.MAX_SUBJECT],
        )
        return _render_compose(form)
    form = ComposeForm()
    if request.form.get("action") == "count" and form.validate_on_submit():
        # Without scripts: the same count as the live one, and the form as it was typed.
        body, exc = _count(user, request.form)
        if exc is None:
            return _render_compose(form, count_text=body["text"])
        form.show_error(exc.field, exc.message)
        return _render_compose(form, FORM_ERROR)
    if form.validate_on_submit():
        descendants = bool(form.include_descendants.data)
        to = _recipients_from(request.form)
        try:
            sent = msg.send_message(
                session,
                user,
                form.subject.data,
                form.text.data,
                to,
                ou_mode="DESCENDANTS" if descendants else "SELECTED",
                discussion=form.discussion,
                announcement_threshold=_settings().announcement_threshold,
            )
        except DomainError as exc:
            session.rollback()
            form.show_error(exc.field, exc.message)
        else:
            session.commit()
            if sent.delivery is not None:
                _publish("delivery.plan", sent.delivery.id)
            kind = "Announcement" if sent.conversation.is_announcement else "Message"
            flash(f"{kind} sent to {_describe(to, descendants)} — delivering…", "success")
            return redirect(url_for("pages.conversation", uid=sent.conversation.uid))
    return _render_compose(form, FORM_ERROR)


def _recipients_from(data: MultiDict[str, str]) -> msg.Recipients:
    """The recipients named by the compose form's controls (the same names in a query)."""
    return msg.Recipients(
        users=split_ids(data.get("users")),
        user_groups=split_ids(data.get("user_groups")),
        org_units=split_ids(data.get("org_units")),
        org_unit_groups=split_ids(data.get("org_unit_groups")),
    )


def _count(user: User, data: MultiDict[str, str]) -> tuple[dict[str, Any], DomainError | None]:
    """The live count's answer for the compose form's controls in `data`, or the domain error
    that refuses them (an unknown id, too many ids, a unit outside the sender's own)."""
    to = _recipients_from(data)
    descendants = data.get("include_descendants") in ("y", "1", "on", "true")
    try:
        n = msg.count_recipients(
            db(), user, to, ou_mode="DESCENDANTS" if descendants else "SELECTED"
        )
    except DomainError as exc:
        db().rollback()
        return {}, exc
    if to.is_empty():
        text = "No recipients chosen yet."
    elif n == 0:
        text = "These choices reach nobody (other than you)."
    else:
        text = f"This message will reach {_plural(n, 'person', 'people')}."
    threshold = _settings().announcement_threshold
    announcement = n > threshold and data.get("reply_mode") != "discussion"
    if announcement:
        text += " It will be an announcement: replies come to you only."
    return {"count": n, "text": text, "announcement": announcement}, None


@bp.get("/compose/recipient-count")
def recipient_count() -> Response:
    """How many people the composer's current choice reaches, for the live count before sending.

    Takes the compose form's own control names as query parameters; answers {count, text,
    announcement}, or a 4xx {message, field} naming the control at fault (an unknown id, or an
    organisation unit outside the sender's own units). One COUNT in the database (see
    `msg.count_recipients`); nothing is written.
    """
    body, exc = _count(_me(), request.args)
    if exc is not None:
        field = ComposeForm.domain_fields.get(exc.field or "", exc.field)
        return _json_error(status_for(exc), exc.message, field)
    resp = jsonify(body)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _render_compose(
    form: ComposeForm, status: int = 200, count_text: str | None = None
) -> tuple[str, int]:
    return (
        render_template(
            "compose.html",
            title="Write a message",
            nav="compose",
            form=form,
            threshold=_settings().announcement_threshold,
            count_text=count_text,
        ),
        status,
    )


@bp.route("/feedback/new", methods=["GET", "POST"])
def feedback_new() -> Any:
    user = _me()
    session = db()
    form = FeedbackForm()
    status = 200
    if request.method == "POST":
        status = FORM_ERROR
        if form.validate_on_submit():
            try:
                conv = fb.send_feedback(session, user, form.subject.data, form.text.data)
            except DomainError as exc:
                session.rollback()
                form.show_error(exc.field, exc.message)
            else:
                session.commit()
                flash("Thank you — your feedback was sent to the feedback team.", "success")
                return redirect(url_for("pages.conversation", uid=conv.uid))
    return (
        render_template(
            "feedback_new.html",
            title="Write feedback",
            nav="feedback",
            form=form,
            no_group=feedback_group(session) is None,
        ),
        status,
    )


# ---------------------------------------------------------------------------------------------
# Settings (administrators)


def _like(q: str) -> str:
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _find_group(raw: str) -> tuple[UserGroup | None, str | None]:
    """The user group with this id, or else exactly this name; or why there is none."""
    session = db()
    group = session.scalar(select(UserGroup).where(UserGroup.uid == raw))
    if group is not None:
        return group, None
    named = session.scalars(
        select(UserGroup).where(func.lower(UserGroup.name) == raw.lower()).limit(2)
    ).all()
    if len(named) == 1:
        return named[0], None
    if named:
        return None, f"Several user groups are named “{raw}”; give the id of the one you mean."
    return None, f"No user group has the id or name “{raw}”."


@bp.route("/settings", methods=["GET", "POST"])
def settings() -> Any:
    user = _me()
    if not user.is_admin:
        raise Forbidden("Only administrators may change the settings.")
    session = db()
    form = SettingsForm()
    status = 200
    if request.method == "POST":
        status = FORM_ERROR
        if request.form.get("action") == "clear":
            set_feedback_group(session, None)
            session.commit()
            flash(
                "Feedback recipients cleared: nobody can send feedback until a group is chosen.",
                "success",
            )
            return redirect(url_for("pages.settings"))
        if form.validate_on_submit():
            raw = (form.group.data or "").strip()
            if not raw:
                form.show_error("group", "Enter a user group's id or name, or find one below.")
            else:
                group, problem = _find_group(raw)
                if group is None:
                    form.show_error("group", problem or "No such user group.")
                else:
                    set_feedback_group(session, group)
                    session.commit()
                    flash(f"Feedback now goes to the user group “{group.name}”.", "success")
                    return redirect(url_for("pages.settings"))
    current = feedback_group(session)
    members_count = 0
    if current is not None:
        members_count = int(
            session.scalar(
                select(func.count())
                .select_from(user_group_members)
                .where(user_group_members.c.group_id == current.id)
            )
            or 0
        )
    q = request.args.get("q", "").strip()[:100]
    found: list[UserGroup] = []
    if q:
        found = list(
            session.scalars(
                select(UserGroup)
                .where(or_(UserGroup.name.ilike(_like(q), escape="\\"), UserGroup.uid == q))
                .order_by(UserGroup.name)
                .limit(25)
            )
        )
    return (
        render_template(
            "settings.html",
            title="Settings",
            nav="settings",
            form=form,
            current=current,
            members=fb.handlers(session, limit=30) if current else [],
            members_count=members_count,
            q=q,
            found=found,
        ),
        status,
    )


# ---------------------------------------------------------------------------------------------
# Users (administrators)

USERS_PAGE_SIZE = 25
# action -> (the flags it sets, what is said afterwards)
ACCESS_ACTIONS: dict[str, tuple[dict[str, bool], str]] = {
    "disable": ({"disabled": True}, "{name} is disabled and can no longer sign in."),
    "enable": ({"disabled": False}, "{name} is enabled and can sign in again."),
    "grant_admin": ({"admin": True}, "{name} is now an administrator."),
    "revoke_admin": ({"admin": False}, "{name} is no longer an administrator."),
    "grant_broadcaster": (
        {"broadcaster": True},
        "{name} is now a broadcaster and may send to any organisation unit.",
    ),
    "revoke_broadcaster": ({"broadcaster": False}, "{name} is no longer a broadcaster."),
}


def _to_user(uid: str) -> Response:
    """Back to a user's page, keeping the way back to the search the administrator came from."""
    back = safe_next(request.form.get("back"), "") or None
    return redirect(url_for("pages.user_detail", uid=uid, back=back))


def _page_number(raw: str | None) -> int:
    try:
        return max(1, min(int(raw or "1"), 1_000_000))
    except ValueError:
        return 1


@bp.get("/settings/users")
def users() -> Any:
    """Find users by username, name or id (server-side, a page at a time)."""
    me = _me()
    q = request.args.get("q", "").strip()[: accounts.MAX_QUERY_LENGTH]
    page_no = _page_number(request.args.get("page"))
    result = accounts.find_users(db(), me, q, page=page_no, page_size=USERS_PAGE_SIZE)
    if not result.items and page_no > result.page_count:
        return redirect(url_for("pages.users", q=q or None, page=result.page_count))
    return render_template("users.html", title="Users", nav="settings", result=result, q=q, me=me)


def _render_user(
    me: User, target: User, form: NewPasswordForm | None = None, status: int = 200
) -> tuple[str, int]:
    if form is None:
        form = NewPasswordForm(formdata=None)
    body = render_template(
        "user.html",
        title=f"User {target.display_name}",
        nav="settings",
        target=target,
        me=me,
        form=form,
        back=safe_next(request.values.get("back"), url_for("pages.users")),
    )
    return body, status


@bp.get("/settings/users/<uid>")
def user_detail(uid: str) -> Any:
    me = _me()
    return _render_user(me, accounts.get_user_by_uid(db(), me, uid))


@bp.post("/settings/users/<uid>/access")
def user_access(uid: str) -> Any:
    """Enable or disable a user, or grant or revoke a role. One action per post."""
    me = _me()
    session = db()
    target = accounts.get_user_by_uid(session, me, uid)
    action = request.form.get("action", "")
    if action not in ACCESS_ACTIONS:
        flash("Choose what to change for this user.", "error")
        return _to_user(uid)
    flags, done = ACCESS_ACTIONS[action]
    try:
        accounts.set_access(session, me, target, **flags)
    except DomainError as exc:
        session.rollback()
        flash(exc.message, "error")
        return _to_user(uid)
    session.commit()
    flash(done.format(name=target.display_name), "success")
    return _to_user(uid)


@bp.post("/settings/users/<uid>/password")
def user_password(uid: str) -> Any:
    """An administrator sets a new password for someone (told to them by other means)."""
    me = _me()
    session = db()
    target = accounts.get_user_by_uid(session, me, uid)
    form = NewPasswordForm()
    if form.validate_on_submit() and form.check_confirmation():
        try:
            accounts.reset_password(session, me, target, form.new_password.data or "")
        except DomainError as exc:
            _owned_or_raise(form, exc)
        else:
            session.commit()
            flash(f"The password of {target.display_name} was changed.", "success")
            return _to_user(uid)
    form.clear_passwords()
    return _render_user(me, target, form, FORM_ERROR)


# ---------------------------------------------------------------------------------------------
# My account


@bp.route("/account", methods=["GET", "POST"])
def account() -> Any:
    """My own details, and changing my own password."""
    me = _me()
    session = db()
    form = ChangePasswordForm()
    status = 200
    if request.method == "POST":
        status = FORM_ERROR
        if form.validate_on_submit() and form.check_confirmation():
            try:
                accounts.change_own_password(
                    session, me, form.current_password.data or "", form.new_password.data or ""
                )
            except DomainError as exc:
                _owned_or_raise(form, exc)
            else:
                session.commit()
                flash("Your password was changed.", "success")
                return redirect(url_for("pages.account"))
        form.clear_passwords()
    return (
        render_template("account.html", title="My account", nav="account", form=form, me=me),
        status,
    )
