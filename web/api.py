"""The JSON API, shaped like DHIS2's Web API (`/api/messageConversations` and friends).

Views parse and check input, call one service function, commit, and only then publish the task
that continues the work. Every route requires a signed-in caller (HTTP Basic or the session).
Routes also answer with DHIS2's `.json` suffix, as DHIS2 clients ask for it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, g, jsonify, request, url_for
from flask_login import current_user
from sqlalchemy import func, or_, select

from service import api_tokens
from service import feedback as fb
from service import messaging as msg
from service.delivery import progress
from service.errors import Forbidden, InvalidInput, NotFound
from service.models import (
    ApiToken,
    Delivery,
    MessageType,
    OrgUnit,
    OrgUnitGroup,
    Priority,
    Status,
    User,
    UserGroup,
    user_group_members,
)
from service.system_settings import feedback_group, set_feedback_group
from web import serializers as ser
from web.app import csrf, db
from web.errors import json_error, web_message

bp = Blueprint("api", __name__, url_prefix="/api")
csrf.exempt(bp)

MAX_PAGE_SIZE = 500
MAX_UNPAGED = 50_000
# Each filter is a condition in the statement, each value a bound parameter: bounded, so that no
# request builds a statement the database refuses.
MAX_FILTERS = 20
MAX_FILTER_VALUES = 100
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


@bp.before_request
def _require_caller() -> Response | None:
    if not current_user.is_authenticated:
        return json_error(
            401,
            g.get("auth_error")
            or "Authentication required: use HTTP Basic auth, an API token or sign in.",
        )
    # Session-authenticated writes need the CSRF token (header X-CSRFToken); Basic auth and token
    # requests carry their credentials explicitly and are not exposed to cross-site forgery.
    if request.method not in SAFE_METHODS and g.get("auth_method") not in ("basic", "token"):
        csrf.protect()
    # A browser that has been given Basic credentials sends them on its own, to cross-site
    # requests too: a write that a browser says comes from another site is refused. Scripts
    # send no Origin; tokens are never sent by a browser on its own.
    if request.method not in SAFE_METHODS and g.get("auth_method") == "basic":
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != request.host:
            return json_error(
                403,
                f"Cross-site request from {origin!r} refused: write with an API token, or "
                "from this site's own pages.",
                "Origin",
            )
    return None


class ApiVersionPrefix:
    """WSGI middleware: DHIS2 clients may put the API version in the path (`/api/33/...`, as the
    documentation's examples and `dhis2.py`'s `api_version` do); it names the same resources."""

    PATTERN = re.compile(r"^/api/(\d{2})(/.*)$")

    def __init__(self, wsgi_app: Any) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        found = self.PATTERN.match(environ.get("PATH_INFO", ""))
        if found and int(found.group(1)) >= 25:
            environ["PATH_INFO"] = "/api" + found.group(2)
        return self.wsgi_app(environ, start_response)


def init_app(app: Any) -> None:
    app.register_blueprint(bp)
    app.wsgi_app = ApiVersionPrefix(app.wsgi_app)


def me() -> User:
    """The caller as a fresh ORM object in this request's session."""
    user = db().get(User, current_user.pk)
    if user is None or user.disabled:  # deleted or disabled since sign-in
        raise NotFound("User does not exist.")
    return user


def _publish(name: str, *args: int) -> None:
    current_app.extensions["publisher"].publish(name, *args)


def route(rule: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `rule` and its DHIS2 `.json` twin."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        bp.add_url_rule(rule, view_func=fn, **options)
        bp.add_url_rule(rule + ".json", endpoint=fn.__name__ + "_json", view_func=fn, **options)
        return fn

    return deco


def _settings() -> Any:
    return current_app.extensions["settings"]


# ---------------------------------------------------------------------------------------------
# Input helpers


def _json_body() -> Any:
    if not request.data:
        raise InvalidInput("A JSON body is required.", field="body")
    data = request.get_json(silent=True)
    if data is None:
        if request.data.strip() == b"null":
            raise InvalidInput("The body must not be JSON null.", field="body")
        raise InvalidInput("The body is not valid JSON (UTF-8).", field="body")
    return data


def _text_body() -> str:
    """A plain-text body (DHIS2 replies and feedback); a JSON {"text": ...} body also works."""
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        # A form's fields are not a message text (curl -d sends this type unless told otherwise).
        raise InvalidInput(
            f"Send the text as text/plain, not {request.mimetype} "
            "(with curl: -H 'Content-Type: text/plain').",
            field="Content-Type",
        )
    raw = request.get_data(cache=True)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("The body must be UTF-8 text.", field="text") from None
    if request.mimetype == "application/json":
        data = request.get_json(silent=True)
        if isinstance(data, dict) and isinstance(data.get("text"), str):
            return data["text"]
        raise InvalidInput('Expected a plain-text body or JSON {"text": "..."}.', field="text")
    return text


def _id_list(data: dict[str, Any], key: str) -> list[str]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidInput(f'{key} must be a list of objects like {{"id": "..."}}.', field=key)
    out = []
    for item in value:
        uid = item.get("id") if isinstance(item, dict) else None
        if not isinstance(uid, str) or not uid:
            raise InvalidInput(f"Every entry of {key} needs a string id.", field=key)
        out.append(uid)
    return out


def _recipients(data: dict[str, Any]) -> msg.Recipients:
    return msg.Recipients(
        users=_id_list(data, "users"),
        user_groups=_id_list(data, "userGroups"),
        org_units=_id_list(data, "organisationUnits"),
        org_unit_groups=_id_list(data, "organisationUnitGroups"),
    )


def _ids_array() -> list[str]:
    data = _json_body()
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise InvalidInput("Expected a JSON array of conversation ids.", field="body")
    if len(data) > msg.MAX_RECIPIENT_IDS:
        raise InvalidInput(f"At most {msg.MAX_RECIPIENT_IDS} ids at once.", field="body")
    return data


def _bool_arg(name: str) -> bool | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    low = raw.lower()
    if low in {"true", "1"}:
        return True
    if low in {"false", "0"}:
        return False
    raise InvalidInput(f"{name} must be true or false.", field=name)


def _int_arg(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be a whole number.", field=name) from None
    if not lo <= value <= hi:
        raise InvalidInput(f"{name} must be between {lo} and {hi}.", field=name)
    return value


# DHIS2's `filter=field:op:value` on the conversation list: API field -> service field.
FILTER_FIELDS = {
    "messageType": "message_type",
    "status": "status",
    "priority": "priority",
    "read": "read",
    "followUp": "followup",
    "assignee.id": "assignee",
    "assignee": "assignee",
}
FILTER_OPS = {"eq", "ne", "!eq", "in", "!in", "null", "!null"}
ENUMS = {
    "message_type": {t.value for t in MessageType},
    "status": {s.value for s in Status},
    "priority": {p.value for p in Priority},
}
# DHIS2's `order=property:direction`: API property -> service key.
ORDER_FIELDS = {
    "lastMessage": "last_message",
    "lastUpdated": "last_message",
    "created": "created",
    "subject": "subject",
    "displayName": "subject",
    "name": "subject",
    "messageCount": "message_count",
    "status": "status",
    "priority": "priority",
    "read": "read",
    "followUp": "followup",
}
ORDER_DIRECTIONS = {"asc": False, "iasc": False, "desc": True, "idesc": True}
QUERY_OPERATORS = {"token": False, "ilike": True, "like": True}


def _filter_value(api_field: str, key: str, raw: str) -> object:
    if key in ("read", "followup"):
        if raw.lower() not in ("true", "false"):
            raise InvalidInput(f"filter {api_field} must be true or false, got {raw!r}.", "filter")
        return raw.lower() == "true"
    if key in ENUMS:
        if raw.upper() not in ENUMS[key]:
            raise InvalidInput(
                f"filter {api_field} must be one of {', '.join(sorted(ENUMS[key]))}, got {raw!r}.",
                field="filter",
            )
        return raw.upper()
    return raw


def _condition(raw: str) -> msg.Condition:
    """One DHIS2 filter: `status:eq:OPEN`, `priority:in:[HIGH,MEDIUM]`, `assignee.id:null`."""
    parts = raw.split(":", 2)
    api_field = parts[0]
    if api_field not in FILTER_FIELDS:
        raise InvalidInput(
            f"Unknown filter field {api_field!r}; supported: {', '.join(FILTER_FIELDS)}.",
            field="filter",
        )
    if len(parts) < 2 or parts[1] not in FILTER_OPS:
        op = parts[1] if len(parts) > 1 else ""
        raise InvalidInput(
            f"Unknown filter operator {op!r} in {raw!r}; supported: "
            f"{', '.join(sorted(FILTER_OPS))}.",
            field="filter",
        )
    key, op = FILTER_FIELDS[api_field], parts[1]
    if op == "!eq":
        op = "ne"
    if op in ("null", "!null"):
        if len(parts) == 3 and parts[2]:
            raise InvalidInput(f"Operator {op} takes no value: {raw!r}.", field="filter")
        return msg.Condition(key, op)
    if len(parts) != 3 or not parts[2]:
        raise InvalidInput(f"Filter {raw!r} needs a value.", field="filter")
    value = parts[2]
    if op in ("in", "!in"):
        items = value[1:-1] if value.startswith("[") and value.endswith("]") else value
        words = [v.strip() for v in items.split(",")]
        if not all(words):
            raise InvalidInput(f"Filter {raw!r} has an empty value.", field="filter")
        if len(words) > MAX_FILTER_VALUES:
            raise InvalidInput(
                f"A filter takes at most {MAX_FILTER_VALUES} values.", field="filter"
            )
        return msg.Condition(key, op, tuple(_filter_value(api_field, key, w) for w in words))
    return msg.Condition(key, op, (_filter_value(api_field, key, value),))


def _order() -> tuple[tuple[str, bool], ...]:
    out: list[tuple[str, bool]] = []
    items = [
        item
        for raw in request.args.getlist("order")
        for item in filter(None, (x.strip() for x in raw.split(",")))
    ]
    if len(items) > len(ORDER_FIELDS):
        raise InvalidInput(f"Order by at most {len(ORDER_FIELDS)} fields at once.", field="order")
    for item in items:
        name, _, direction = item.partition(":")
        if name not in ORDER_FIELDS:
            raise InvalidInput(
                f"Cannot order by {name!r}; supported: {', '.join(ORDER_FIELDS)}.",
                field="order",
            )
        direction = direction.lower() or "asc"
        if direction not in ORDER_DIRECTIONS:
            raise InvalidInput(
                f"Order direction must be asc or desc, got {direction!r}.", field="order"
            )
        out.append((ORDER_FIELDS[name], ORDER_DIRECTIONS[direction]))
    return tuple(out)


def _filters() -> msg.ListFilters:
    junction = request.args.get("rootJunction", "AND").upper()
    if junction != "AND":
        raise InvalidInput("Only rootJunction=AND is supported.", field="rootJunction")
    raw_filters = request.args.getlist("filter")
    if len(raw_filters) > MAX_FILTERS:
        raise InvalidInput(f"At most {MAX_FILTERS} filters at once.", field="filter")
    conditions = [_condition(raw) for raw in raw_filters]
    # Convenience parameters (as the pages use them).
    for arg, key in (
        ("messageType", "message_type"),
        ("status", "status"),
        ("priority", "priority"),
    ):
        if request.args.get(arg):
            value = request.args[arg].upper()
            if value not in ENUMS[key]:
                raise InvalidInput(
                    f"{arg} must be one of {', '.join(sorted(ENUMS[key]))}.", field=arg
                )
            conditions.append(msg.Condition(key, "eq", (value,)))
    query = request.args.get("queryString")
    if query is not None and len(query) > 200:
        raise InvalidInput("queryString must be at most 200 characters.", field="queryString")
    if query is not None and len(query.split()) > msg.MAX_QUERY_TOKENS:
        raise InvalidInput(
            f"queryString may hold at most {msg.MAX_QUERY_TOKENS} words.", field="queryString"
        )
    operator = request.args.get("queryOperator", "token").lower()
    if operator not in QUERY_OPERATORS:
        raise InvalidInput(
            f"queryOperator must be one of {', '.join(QUERY_OPERATORS)}, got {operator!r}.",
            field="queryOperator",
        )
    return msg.ListFilters(
        conditions=tuple(conditions),
        query=query or None,
        query_phrase=QUERY_OPERATORS[operator],
        assigned_to_me=_bool_arg("assignedToMe") or False,
        order=_order(),
    )


def _fields() -> ser.FieldSpec | None:
    raw = request.args.getlist("fields")
    return ser.parse_fields(",".join(raw)) if raw else None


# ---------------------------------------------------------------------------------------------
# The caller


@route("/me", methods=["GET"])
def get_me() -> Response:
    user = me()
    return jsonify(
        {
            "id": user.uid,
            "username": user.username,
            "displayName": user.display_name,
            "firstName": user.first_name,
            "surname": user.surname,
            "email": user.email,
            "organisationUnits": [
                {"id": ou.uid, "displayName": ou.name, "path": ou.path} for ou in user.org_units
            ],
            "userGroups": [{"id": g_.uid, "displayName": g_.name} for g_ in user.groups],
            "admin": user.is_admin,
            "broadcaster": user.is_broadcaster,
            "feedbackHandler": msg.is_handler(db(), user.id),
        }
    )


@route("/me/dashboard", methods=["GET"])
def dashboard() -> Response:
    user = me()
    return jsonify(
        {"unreadMessageConversations": msg.unread_count(db(), user), "unreadInterpretations": 0}
    )


# ---------------------------------------------------------------------------------------------
# Conversations


def _created(conv_uid: str, message: str, **extra: Any) -> Response:
    location = url_for("api.get_conversation", uid=conv_uid, _external=True)
    body = web_message(
        201,
        message,
        response={
            "responseType": "ObjectReport",
            "uid": conv_uid,
            "klass": "org.hisp.dhis.message.MessageConversation",
        },
    )
    body["id"] = conv_uid
    body.update(extra)
    resp = jsonify(body)
    resp.status_code = 201
    resp.headers["Location"] = location
    return resp


def _delivery_ref(conv_uid: str, delivery_uid: str) -> dict[str, str]:
    return {
        "id": delivery_uid,
        "href": url_for("api.get_delivery", uid=conv_uid, _external=True),
    }


@route("/messageConversations", methods=["POST"])
def create_conversation() -> Response:
    data = _json_body()
    if not isinstance(data, dict):
        raise InvalidInput("The body must be a JSON object.", field="body")
    discussion = data.get("discussion")
    if discussion is not None and not isinstance(discussion, bool):
        raise InvalidInput("discussion must be true or false.", field="discussion")
    if data.get("attachments"):
        raise InvalidInput(
            "Attachments are not supported: messages are text only.", field="attachments"
        )
    to = _recipients(data)
    session = db()
    sent = msg.send_message(
        session,
        me(),
        data.get("subject"),
        data.get("text"),
        to,
        ou_mode=data.get("ouMode", "SELECTED"),
        discussion=discussion,
        announcement_threshold=_settings().announcement_threshold,
    )
    session.commit()
    delivery_ref = None
    if sent.delivery is not None:
        _publish("delivery.plan", sent.delivery.id)
        delivery_ref = _delivery_ref(sent.conversation.uid, sent.delivery.uid)
    return _created(
        sent.conversation.uid,
        "Message conversation created",
        announcement=sent.conversation.is_announcement,
        delivery=delivery_ref,
    )


@route("/messageConversations/feedback", methods=["POST"])
def create_feedback() -> Response:
    subject = request.args.get("subject")
    if request.mimetype == "application/json":
        data = _json_body()
        if not isinstance(data, dict):
            raise InvalidInput("The body must be a JSON object.", field="body")
        subject = data.get("subject", subject)
        text = data.get("text")
    else:
        text = _text_body()
    session = db()
    conv = fb.send_feedback(session, me(), subject, text)
    delivery_uid = session.scalar(select(Delivery.uid).where(Delivery.conversation_id == conv.id))
    session.commit()
    # Feedback reaches the (small) feedback group inline: its delivery is already DELIVERED.
    return _created(
        conv.uid,
        "Feedback created",
        announcement=False,
        delivery=_delivery_ref(conv.uid, delivery_uid) if delivery_uid else None,
    )


@route("/messageConversations", methods=["GET"])
def list_conversations() -> Response:
    user = me()
    paging = _bool_arg("paging")
    if paging is False:
        page, page_size = 1, MAX_UNPAGED
    else:
        page = _int_arg("page", 1, 1, 1_000_000)
        page_size = _int_arg("pageSize", 50, 1, MAX_PAGE_SIZE)
    filters, fields = _filters(), _fields()
    session = db()
    result = msg.list_conversations(session, user, page=page, page_size=page_size, filters=filters)
    if paging is False and result.total > len(result.items):
        raise InvalidInput(
            f"{result.total} conversations match; paging=false returns at most {MAX_UNPAGED}. "
            "Use page and pageSize.",
            field="paging",
        )
    messages: dict[int, list[Any]] = {}
    if fields is not None and fields.wants("messages"):
        messages = msg.messages_of(session, user, [s.conversation for s in result.items])
    body: dict[str, Any] = {}
    if paging is not False:
        body["pager"] = {
            "page": result.page,
            "pageCount": result.page_count,
            "total": result.total,
            "pageSize": result.page_size,
        }
    body["messageConversations"] = [
        ser.select(ser.listed(s, messages.get(s.conversation.id)), fields) for s in result.items
    ]
    return jsonify(body)


@route("/messageConversations/<uid>", methods=["GET"])
def get_conversation(uid: str) -> Response:
    user = me()
    session = db()
    if _bool_arg("markRead"):
        msg.mark_read(session, user, [uid])
        session.commit()
    view = msg.view_conversation(session, user, uid)
    sender_or_admin = user.is_admin or view.summary.conversation.created_by_id == user.id
    body = ser.conversation(view, include_delivery=sender_or_admin)
    return jsonify(ser.select(body, _fields()))


@route("/messageConversations/<uid>", methods=["POST"])
def post_reply(uid: str) -> Response:
    internal = _bool_arg("internal") or False
    text = _text_body()
    session = db()
    replied = msg.reply(
        session,
        me(),
        uid,
        text,
        internal=internal,
        inline_unread_limit=_settings().inline_unread_limit,
    )
    session.commit()
    extra: dict[str, Any] = {"messageId": replied.message.uid}
    if replied.delivery is not None:
        _publish("delivery.plan", replied.delivery.id)
        extra["delivery"] = {
            "id": replied.delivery.uid,
            "href": url_for("api.get_delivery_by_id", uid=replied.delivery.uid, _external=True),
        }
    return _created(replied.conversation.uid, "Message conversation updated", **extra)


@route("/messageConversations/<uid>/delivery", methods=["GET"])
def get_delivery(uid: str) -> Response:
    return jsonify(progress(msg.delivery_for(db(), me(), uid)))


@route("/deliveries/<uid>", methods=["GET"])
def get_delivery_by_id(uid: str) -> Response:
    return jsonify(progress(msg.delivery_by_uid(db(), me(), uid)))


def _handling(fn: Callable[..., Any], uid: str, value: Any, key: str) -> Response:
    session = db()
    conv = fn(session, me(), uid, value)
    session.commit()
    new_value = getattr(conv, key)
    # DHIS2 answers {"<NEW VALUE>": ["<conversation id>"]}; the named field is ours.
    return jsonify({new_value: [conv.uid], key: new_value, "id": conv.uid})


@route("/messageConversations/<uid>/status", methods=["POST"])
def set_status(uid: str) -> Response:
    return _handling(fb.set_status, uid, request.args.get("messageConversationStatus"), "status")


@route("/messageConversations/<uid>/priority", methods=["POST"])
def set_priority(uid: str) -> Response:
    return _handling(
        fb.set_priority, uid, request.args.get("messageConversationPriority"), "priority"
    )


@route("/messageConversations/<uid>/assign", methods=["POST"])
def assign(uid: str) -> Response:
    assignee = request.args.get("userId")
    if not assignee:
        raise InvalidInput("userId is required.", field="userId")
    session = db()
    conv = fb.set_assignee(session, me(), uid, assignee)
    session.commit()
    name = conv.assignee.display_name if conv.assignee else assignee
    return jsonify(
        web_message(
            200, f"User {name} was assigned successfully", assignee=ser.user_ref(conv.assignee)
        )
    )


@route("/messageConversations/<uid>/assign", methods=["DELETE"])
def unassign(uid: str) -> Response:
    session = db()
    fb.set_assignee(session, me(), uid, None)
    session.commit()
    return jsonify(web_message(200, "Message is no longer assigned to user"))


def _own_inbox(user: User, path_user_uid: str | None = None) -> None:
    """DHIS2's `user`/`userUid` parameters (and the user id in `DELETE /{id}/{userId}`) act for
    another user; here only for oneself. Either spelling naming anyone else is refused, never
    ignored: a script meant to act for someone else must not change its own inbox instead."""
    given = [(name, v) for name in ("user", "userUid") for v in request.args.getlist(name)]
    if path_user_uid is not None:
        given.append(("userId", path_user_uid))
    for name, value in given:
        if value is not None and value != user.uid:
            raise Forbidden(f"Not authorized to modify user: {value}", field=name)


def _flags(fn: Callable[..., list[str]], key: str, **kwargs: Any) -> Response:
    user = me()
    _own_inbox(user)
    ids = _ids_array()
    session = db()
    done = fn(session, user, ids, **kwargs)
    if ids and not done:
        raise NotFound("No MessageConversations found for the given IDs.", field="ids")
    session.commit()
    return jsonify({key: done})


@route("/messageConversations/read", methods=["POST"])
def mark_read() -> Response:
    return _flags(msg.mark_read, "markedRead", read=True)


@route("/messageConversations/unread", methods=["POST"])
def mark_unread() -> Response:
    return _flags(msg.mark_read, "markedUnread", read=False)


def _one_flag(uid: str, fn: Callable[..., list[str]], key: str, **kwargs: Any) -> Response:
    user = me()
    _own_inbox(user)
    session = db()
    msg.get_visible(session, user, uid)
    done = fn(session, user, [uid], **kwargs)
    session.commit()
    return jsonify({key: done})


@route("/messageConversations/<uid>/read", methods=["POST"])
def mark_one_read(uid: str) -> Response:
    return _one_flag(uid, msg.mark_read, "markedRead", read=True)


@route("/messageConversations/<uid>/unread", methods=["POST"])
def mark_one_unread(uid: str) -> Response:
    return _one_flag(uid, msg.mark_read, "markedUnread", read=False)


@route("/messageConversations/followup", methods=["POST"])
def followup() -> Response:
    return _flags(msg.set_followup, "markedFollowup", on=True)


@route("/messageConversations/unfollowup", methods=["POST"])
def unfollowup() -> Response:
    return _flags(msg.set_followup, "unmarkedFollowup", on=False)


@route("/messageConversations/<uid>/recipients", methods=["POST"])
def add_recipients(uid: str) -> Response:
    data = _json_body()
    if not isinstance(data, dict):
        raise InvalidInput("The body must be a JSON object.", field="body")
    discussion = data.get("discussion")
    if discussion is not None and not isinstance(discussion, bool):
        raise InvalidInput("discussion must be true or false.", field="discussion")
    to = _recipients(data)
    session = db()
    delivery = msg.add_recipients(
        session,
        me(),
        uid,
        to,
        ou_mode=data.get("ouMode", "SELECTED"),
        discussion=discussion,
        announcement_threshold=_settings().announcement_threshold,
    )
    session.commit()
    _publish("delivery.plan", delivery.id)
    ref = {
        "id": delivery.uid,
        "href": url_for("api.get_delivery_by_id", uid=delivery.uid, _external=True),
    }
    resp = jsonify(web_message(202, "Recipients are being added", id=uid, delivery=ref))
    resp.status_code = 202
    return resp


@route("/messageConversations/<uid>", methods=["DELETE"])
def remove(uid: str) -> Response:
    session = db()
    user = me()
    _own_inbox(user)
    msg.get_visible(session, user, uid)
    done = msg.remove_from_inbox(session, user, [uid])
    session.commit()
    return jsonify({"removed": done})


@route("/messageConversations/<uid>/<user_uid>", methods=["DELETE"])
def remove_for_user(uid: str, user_uid: str) -> Response:
    _own_inbox(me(), user_uid)
    return remove(uid)


@route("/messageConversations", methods=["DELETE"])
def remove_many() -> Response:
    user = me()
    _own_inbox(user)
    ids = request.args.getlist("mc")
    if not ids:
        raise InvalidInput("Give the conversations to remove as ?mc=id&mc=id.", field="mc")
    if len(ids) > msg.MAX_RECIPIENT_IDS:
        raise InvalidInput(f"At most {msg.MAX_RECIPIENT_IDS} ids at once.", field="mc")
    session = db()
    done = msg.remove_from_inbox(session, user, ids)
    if not done:
        raise NotFound("No MessageConversations found for the given UIDs.", field="mc")
    session.commit()
    return jsonify({"removed": done})


# ---------------------------------------------------------------------------------------------
# Personal access tokens (DHIS2's /api/apiToken)


def _token(t: ApiToken) -> dict[str, Any]:
    return {
        "id": t.uid,
        "name": t.name,
        "displayName": t.name or t.uid,
        "created": ser.iso(t.created_at),
        "expire": int(t.expires_at.timestamp() * 1000),
        "version": 1,
        "type": "PERSONAL_ACCESS_TOKEN",
        "user": {"id": t.user.uid},
    }


@route("/apiToken", methods=["POST"])
def create_api_token() -> Response:
    if g.get("auth_method") == "token":
        raise Forbidden("A token cannot make tokens; sign in with a password.", field="apiToken")
    data = _json_body() if request.data else {}
    if not isinstance(data, dict):
        raise InvalidInput("The body must be a JSON object.", field="body")
    if data.get("attributes"):
        raise InvalidInput(
            "Token attributes (IP, method and referrer allow lists) are not supported.",
            field="attributes",
        )
    expire = data.get("expire")
    expires_at = None
    if expire is not None:
        if not isinstance(expire, int) or isinstance(expire, bool):
            raise InvalidInput("expire must be a time in milliseconds since 1970.", "expire")
        try:
            expires_at = dt.datetime.fromtimestamp(expire / 1000, dt.UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidInput("expire is out of range.", field="expire") from None
    session = db()
    token, key = api_tokens.create(session, me(), expires_at=expires_at, name=data.get("name"))
    session.commit()
    body = web_message(
        201,
        "Token created; the key is shown only this once.",
        response={
            "responseType": "ApiTokenCreationResponse",
            "uid": token.uid,
            "key": key,
            "klass": "org.hisp.dhis.security.apikey.ApiToken",
            "errorReports": [],
        },
    )
    resp = jsonify(body)
    resp.status_code = 201
    resp.headers["Location"] = url_for("api.get_api_token", uid=token.uid, _external=True)
    resp.headers["Cache-Control"] = "no-store"
    return resp


@route("/apiToken", methods=["GET"])
def list_api_tokens() -> Response:
    tokens = api_tokens.tokens_of(db(), me())
    return jsonify({"apiToken": [_token(t) for t in tokens]})


@route("/apiToken/<uid>", methods=["GET"])
def get_api_token(uid: str) -> Response:
    return jsonify(_token(api_tokens.get(db(), me(), uid)))


@route("/apiToken/<uid>", methods=["DELETE"])
def revoke_api_token(uid: str) -> Response:
    session = db()
    api_tokens.revoke(session, me(), uid)
    session.commit()
    return jsonify(web_message(200, f"ApiToken {uid} revoked"))


# ---------------------------------------------------------------------------------------------
# Configuration


def _require_admin(user: User) -> None:
    if not user.is_admin:
        raise Forbidden("Only administrators may change the configuration.")


@route("/configuration/feedbackRecipients", methods=["GET"])
def get_feedback_recipients() -> Response:
    group = feedback_group(db())
    if group is None:
        return jsonify(None)
    return jsonify({"id": group.uid, "displayName": group.name, "name": group.name})


@route("/configuration/feedbackRecipients", methods=["POST"])
def post_feedback_recipients() -> Response:
    user = me()
    _require_admin(user)
    # DHIS2 takes the group id as a plain-text body; a JSON string or {"id": ...} also works.
    raw: Any
    if request.mimetype == "application/json":
        data = request.get_json(silent=True)
        raw = data.get("id") if isinstance(data, dict) else data
    else:
        raw = _text_body()
    if not isinstance(raw, str) or not raw.strip().strip('"'):
        raise InvalidInput("Give the user group id as the body.", field="id")
    raw = raw.strip().strip('"')
    session = db()
    group = session.scalar(select(UserGroup).where(UserGroup.uid == raw))
    if group is None:
        raise NotFound(f"User group does not exist: {raw}", field="id")
    set_feedback_group(session, group)
    session.commit()
    return jsonify(web_message(200, f"Feedback recipients set to user group {group.name}"))


@route("/configuration/feedbackRecipients", methods=["DELETE"])
def delete_feedback_recipients() -> Response:
    user = me()
    _require_admin(user)
    session = db()
    set_feedback_group(session, None)
    session.commit()
    return jsonify(web_message(200, "Feedback recipients cleared"))


# ---------------------------------------------------------------------------------------------
# Look-ups for choosing recipients (server-side search; never a full list download)


def _query() -> str:
    q = (request.args.get("query") or "").strip()
    if len(q) > 100:
        raise InvalidInput("query must be at most 100 characters.", field="query")
    return q


def _pattern(q: str) -> str:
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


@route("/userLookup", methods=["GET"])
def user_lookup() -> Response:
    q = _query()
    if len(q) < 2:
        raise InvalidInput("query must be at least 2 characters.", field="query")
    p = _pattern(q)
    name = func.coalesce(User.first_name, "") + " " + func.coalesce(User.surname, "")
    rows = db().scalars(
        select(User)
        .where(
            User.disabled.is_(False),
            or_(
                User.username.ilike(p, escape="\\"),
                name.ilike(p, escape="\\"),
                User.email.ilike(p, escape="\\"),
                User.uid == q,
            ),
        )
        .order_by(User.username)
        .limit(25)
    )
    return jsonify({"users": [_lookup(u) for u in rows]})


def _lookup(u: User) -> dict[str, Any]:
    return {
        "id": u.uid,
        "username": u.username,
        "firstName": u.first_name,
        "surname": u.surname,
        "displayName": u.display_name,
    }


@route("/userLookup/<key>", methods=["GET"])
def user_lookup_one(key: str) -> Response:
    """One user by id, then by username (DHIS2's order), minimal fields only."""
    session = db()
    user = session.scalar(select(User).where(User.uid == key, User.disabled.is_(False)))
    if user is None:
        user = session.scalar(select(User).where(User.username == key, User.disabled.is_(False)))
    if user is None:
        raise NotFound(f"User does not exist: {key}", field="id")
    return jsonify(_lookup(user))


@route("/userLookup/feedbackRecipients", methods=["GET"])
def feedback_recipients_lookup() -> Response:
    session = db()
    group = feedback_group(session)
    users: list[User] = []
    if group is not None:
        q = _query()
        stmt = (
            select(User)
            .join(user_group_members, user_group_members.c.user_id == User.id)
            .where(user_group_members.c.group_id == group.id, User.disabled.is_(False))
        )
        if q:
            p = _pattern(q)
            stmt = stmt.where(
                or_(
                    User.username.ilike(p, escape="\\"),
                    User.first_name.ilike(p, escape="\\"),
                    User.surname.ilike(p, escape="\\"),
                )
            )
        users = list(session.scalars(stmt.order_by(User.username).limit(50)))
    return jsonify({"users": [_lookup(u) for u in users]})


def _named_search(model: type, key: str) -> Response:
    q = _query()
    stmt = select(model)
    if q:
        stmt = stmt.where(or_(model.name.ilike(_pattern(q), escape="\\"), model.uid == q))  # type: ignore[attr-defined]
    rows = db().scalars(stmt.order_by(model.name).limit(25))  # type: ignore[attr-defined]
    return jsonify({key: [{"id": r.uid, "displayName": r.name} for r in rows]})


@route("/userGroups", methods=["GET"])
def user_groups() -> Response:
    return _named_search(UserGroup, "userGroups")


@route("/organisationUnitGroups", methods=["GET"])
def org_unit_groups() -> Response:
    return _named_search(OrgUnitGroup, "organisationUnitGroups")


def _ou(ou: OrgUnit, children: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": ou.uid,
        "displayName": ou.name.strip(),
        "level": ou.level,
        "path": ou.path,
    }
    if children is not None:
        body["childCount"] = children
    return body


@route("/organisationUnits", methods=["GET"])
def org_units() -> Response:
    session = db()
    q = _query()
    level = _int_arg("level", 0, 1, 20) if request.args.get("level") else None
    stmt = select(OrgUnit)
    if q:
        stmt = stmt.where(or_(OrgUnit.name.ilike(_pattern(q), escape="\\"), OrgUnit.uid == q))
    elif level is not None:
        stmt = stmt.where(OrgUnit.level == level)
    else:
        stmt = stmt.where(OrgUnit.parent_id.is_(None))
    rows = session.scalars(stmt.order_by(OrgUnit.level, OrgUnit.name).limit(50)).all()
    return jsonify({"organisationUnits": [_ou(r) for r in rows]})


@route("/organisationUnits/<uid>/children", methods=["GET"])
def org_unit_children(uid: str) -> Response:
    session = db()
    parent = session.scalar(select(OrgUnit).where(OrgUnit.uid == uid))
    if parent is None:
        raise NotFound(f"Organisation unit does not exist: {uid}", field="id")
    child_counts = (
        select(OrgUnit.parent_id, func.count().label("n")).group_by(OrgUnit.parent_id).subquery()
    )
    rows = session.execute(
        select(OrgUnit, func.coalesce(child_counts.c.n, 0))
        .outerjoin(child_counts, child_counts.c.parent_id == OrgUnit.id)
        .where(OrgUnit.parent_id == parent.id)
        .order_by(OrgUnit.name)
    ).all()
    return jsonify({"organisationUnits": [_ou(r[0], int(r[1])) for r in rows]})


@route("/system/info", methods=["GET"])
def system_info() -> Response:
    return jsonify(
        {
            "version": "2.40.0",
            "revision": "messaging",
            "serverTimeZoneId": "UTC",
            "systemName": "DHIS2 messaging service",
        }
    )
