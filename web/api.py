"""The JSON API, shaped like DHIS2's Web API (`/api/messageConversations` and friends).

Views parse and check input, call one service function, commit, and only then publish the task
that continues the work. Every route requires a signed-in caller (HTTP Basic or the session).
Routes also answer with DHIS2's `.json` suffix, as DHIS2 clients ask for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request, url_for
from flask_login import current_user
from sqlalchemy import func, or_, select

from service import feedback as fb
from service import messaging as msg
from service.delivery import progress
from service.errors import Forbidden, InvalidInput, NotFound
from service.models import (
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
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


@bp.before_request
def _require_caller() -> Response | None:
    if not current_user.is_authenticated:
        return json_error(401, "Authentication required: use HTTP Basic auth or sign in.")
    # Session-authenticated writes need the CSRF token (header X-CSRFToken); Basic auth
    # requests carry their credentials explicitly and are not exposed to cross-site forgery.
    if request.method not in SAFE_METHODS and g.get("auth_method") != "basic":
        csrf.protect()
    return None


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
        raise InvalidInput("The body is not valid JSON (UTF-8).", field="body")
    return data


def _text_body() -> str:
    """A plain-text body (DHIS2 replies and feedback); a JSON {"text": ...} body also works."""
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


def _ids_array() -> list[str]:
    data = _json_body()
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise InvalidInput("Expected a JSON array of conversation ids.", field="body")
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


FILTER_FIELDS = {
    "messageType": "message_type",
    "status": "status",
    "priority": "priority",
    "read": "read",
    "followUp": "followup",
    "assignee.id": "assignee_uid",
}
ENUMS = {
    "message_type": {"PRIVATE", "TICKET", "SYSTEM"},
    "status": {s.value for s in Status},
    "priority": {p.value for p in Priority},
}


def _filters() -> msg.ListFilters:
    values: dict[str, Any] = {}
    for raw in request.args.getlist("filter"):
        parts = raw.split(":", 2)
        if len(parts) != 3 or parts[0] not in FILTER_FIELDS or parts[1] != "eq":
            raise InvalidInput(
                f"Unsupported filter {raw!r}: use field:eq:value with field one of "
                f"{', '.join(FILTER_FIELDS)}.",
                field="filter",
            )
        key, value = FILTER_FIELDS[parts[0]], parts[2]
        if key in ("read", "followup"):
            if value.lower() not in ("true", "false"):
                raise InvalidInput(f"{parts[0]} filter must be true or false.", field="filter")
            values[key] = value.lower() == "true"
        elif key in ENUMS:
            if value.upper() not in ENUMS[key]:
                raise InvalidInput(
                    f"{parts[0]} must be one of {', '.join(sorted(ENUMS[key]))}.", field="filter"
                )
            values[key] = value.upper()
        else:
            values[key] = value
    # Convenience parameters (also used by the pages).
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
            values[key] = value
    query = request.args.get("queryString")
    if query is not None:
        if len(query) > 200:
            raise InvalidInput("queryString must be at most 200 characters.", field="queryString")
        values["query"] = query or None
    return msg.ListFilters(**values)


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


@route("/messageConversations", methods=["POST"])
def create_conversation() -> Response:
    data = _json_body()
    if not isinstance(data, dict):
        raise InvalidInput("The body must be a JSON object.", field="body")
    discussion = data.get("discussion")
    if discussion is not None and not isinstance(discussion, bool):
        raise InvalidInput("discussion must be true or false.", field="discussion")
    to = msg.Recipients(
        users=_id_list(data, "users"),
        user_groups=_id_list(data, "userGroups"),
        org_units=_id_list(data, "organisationUnits"),
        org_unit_groups=_id_list(data, "organisationUnitGroups"),
    )
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
        delivery_ref = {
            "id": sent.delivery.uid,
            "href": url_for("api.get_delivery", uid=sent.conversation.uid, _external=True),
        }
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
    session.commit()
    return _created(conv.uid, "Feedback created")


@route("/messageConversations", methods=["GET"])
def list_conversations() -> Response:
    user = me()
    paging = _bool_arg("paging")
    if paging is False:
        page, page_size = 1, MAX_UNPAGED
    else:
        page = _int_arg("page", 1, 1, 1_000_000)
        page_size = _int_arg("pageSize", 50, 1, MAX_PAGE_SIZE)
    result = msg.list_conversations(db(), user, page=page, page_size=page_size, filters=_filters())
    body: dict[str, Any] = {}
    if paging is not False:
        body["pager"] = {
            "page": result.page,
            "pageCount": result.page_count,
            "total": result.total,
            "pageSize": result.page_size,
        }
    body["messageConversations"] = [ser.summary(s) for s in result.items]
    return jsonify(body)


@route("/messageConversations/<uid>", methods=["GET"])
def get_conversation(uid: str) -> Response:
    user = me()
    view = msg.view_conversation(db(), user, uid)
    sender_or_admin = user.is_admin or view.summary.conversation.created_by_id == user.id
    return jsonify(ser.conversation(view, include_delivery=sender_or_admin))


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
    return jsonify(
        web_message(200, f"Message conversation {key} updated", **{key: getattr(conv, key)})
    )


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
    return jsonify(
        web_message(200, "Message conversation assigned", assignee=ser.user_ref(conv.assignee))
    )


@route("/messageConversations/<uid>/assign", methods=["DELETE"])
def unassign(uid: str) -> Response:
    session = db()
    fb.set_assignee(session, me(), uid, None)
    session.commit()
    return jsonify(web_message(200, "Message conversation unassigned"))


def _flags(fn: Callable[..., list[str]], key: str, **kwargs: Any) -> Response:
    ids = _ids_array()
    session = db()
    done = fn(session, me(), ids, **kwargs)
    session.commit()
    return jsonify({key: done})


@route("/messageConversations/read", methods=["POST"])
def mark_read() -> Response:
    return _flags(msg.mark_read, "markedRead", read=True)


@route("/messageConversations/unread", methods=["POST"])
def mark_unread() -> Response:
    return _flags(msg.mark_read, "markedUnread", read=False)


@route("/messageConversations/followup", methods=["POST"])
def followup() -> Response:
    return _flags(msg.set_followup, "markedFollowup", on=True)


@route("/messageConversations/unfollowup", methods=["POST"])
def unfollowup() -> Response:
    return _flags(msg.set_followup, "unmarkedFollowup", on=False)


@route("/messageConversations/<uid>", methods=["DELETE"])
def remove(uid: str) -> Response:
    session = db()
    user = me()
    msg.get_visible(session, user, uid)
    done = msg.remove_from_inbox(session, user, [uid])
    session.commit()
    return jsonify({"removed": done})


@route("/messageConversations/<uid>/<user_uid>", methods=["DELETE"])
def remove_for_user(uid: str, user_uid: str) -> Response:
    user = me()
    if user_uid != user.uid:
        # Only the caller's own inbox can be changed; others' copies answer as absent.
        raise NotFound(f"User does not exist in this conversation: {user_uid}", field="userId")
    return remove(uid)


@route("/messageConversations", methods=["DELETE"])
def remove_many() -> Response:
    ids = request.args.getlist("mc")
    if not ids:
        raise InvalidInput("Give the conversations to remove as ?mc=id&mc=id.", field="mc")
    session = db()
    done = msg.remove_from_inbox(session, me(), ids)
    session.commit()
    return jsonify({"removed": done})


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
            or_(User.username.ilike(p, escape="\\"), name.ilike(p, escape="\\"), User.uid == q),
        )
        .order_by(User.username)
        .limit(25)
    )
    return jsonify(
        {
            "users": [
                {
                    "id": u.uid,
                    "username": u.username,
                    "displayName": u.display_name,
                    "firstName": u.first_name,
                    "surname": u.surname,
                }
                for u in rows
            ]
        }
    )


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
    return jsonify(
        {
            "users": [
                {"id": u.uid, "username": u.username, "displayName": u.display_name} for u in users
            ]
        }
    )


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
    stmt = select(OrgUnit)
    if q:
        stmt = stmt.where(or_(OrgUnit.name.ilike(_pattern(q), escape="\\"), OrgUnit.uid == q))
    elif request.args.get("level"):
        stmt = stmt.where(OrgUnit.level == _int_arg("level", 1, 1, 20))
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
