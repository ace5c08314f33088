"""The OpenAPI 3 description of the JSON API, served at `/api/openapi.json`.

Built here rather than kept as a static file so that the documented limits are the enforced ones
(they come from the same constants). Every route also answers with DHIS2's `.json` suffix; the
description lists each path once, without it. A test checks that every `/api` route of the app
is described here and that everything described here exists.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from service.messaging import MAX_RECIPIENT_IDS, MAX_SUBJECT, MAX_TEXT

bp = Blueprint("openapi", __name__)

MAX_QUERY_STRING = 200
MAX_LOOKUP_QUERY = 100
MAX_PAGE_SIZE = 500
JSON = "application/json"

ENUMS = {
    "messageType": ["PRIVATE", "TICKET", "SYSTEM"],
    "status": ["NONE", "OPEN", "PENDING", "INVALID", "SOLVED"],
    "ticketStatus": ["OPEN", "PENDING", "INVALID", "SOLVED"],
    "priority": ["NONE", "LOW", "MEDIUM", "HIGH"],
    "deliveryState": ["QUEUED", "DELIVERING", "DELIVERED", "FAILED"],
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


STR = {"type": "string"}
INT = {"type": "integer"}
BOOL = {"type": "boolean"}
DATETIME = {"type": "string", "format": "date-time"}


def _schemas() -> dict[str, Any]:
    user_ref = _obj(["id", "displayName", "username"], id=STR, displayName=STR, username=STR)
    summary_props = {
        "id": STR,
        "subject": STR,
        "displayName": STR,
        "messageType": {"type": "string", "enum": ENUMS["messageType"]},
        "status": {"type": "string", "enum": ENUMS["status"]},
        "priority": {"type": "string", "enum": ENUMS["priority"]},
        "read": BOOL,
        "followUp": BOOL,
        "lastMessage": DATETIME,
        "lastSender": _nullable(_ref("UserRef")),
        "messageCount": INT,
        "created": DATETIME,
        "lastUpdated": DATETIME,
        "createdBy": _nullable(_ref("UserRef")),
        "assignee": _nullable(_ref("UserRef")),
        "announcement": BOOL,
    }
    delivery = _obj(
        ["id", "state", "total", "delivered", "failed"],
        id=STR,
        state={"type": "string", "enum": ENUMS["deliveryState"]},
        total={**_nullable(INT), "description": "null until the recipients are counted"},
        delivered=INT,
        failed=INT,
    )
    message = _obj(
        ["id", "text", "created", "sender", "internal"],
        id=STR,
        text=STR,
        created=DATETIME,
        sender=_nullable(_ref("UserRef")),
        internal={**BOOL, "description": "internal replies reach feedback handlers only"},
    )
    conversation = {
        "type": "object",
        "properties": {
            **summary_props,
            "messages": {"type": "array", "items": _ref("Message")},
            "userMessages": {
                "type": "array",
                "maxItems": 30,
                "items": _obj(["user"], user=_ref("UserRef")),
            },
            "participantCount": INT,
            "delivery": _ref("Delivery"),
        },
    }
    web_message = _obj(
        ["httpStatus", "httpStatusCode", "status", "message"],
        httpStatus=STR,
        httpStatusCode=INT,
        status={"type": "string", "enum": ["OK", "ERROR"]},
        message=STR,
        field={**STR, "description": "the input at fault, on errors"},
    )
    id_ref = {
        "type": "array",
        "maxItems": MAX_RECIPIENT_IDS,
        "items": _obj(["id"], id={"type": "string", "minLength": 1}),
    }
    new_message = {
        "type": "object",
        "required": ["subject", "text"],
        "description": (
            f"At most {MAX_RECIPIENT_IDS} ids in users, userGroups, organisationUnits and "
            "organisationUnitGroups together; at least one recipient."
        ),
        "properties": {
            "subject": {"type": "string", "minLength": 1, "maxLength": MAX_SUBJECT},
            "text": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT},
            "users": id_ref,
            "userGroups": id_ref,
            "organisationUnits": id_ref,
            "organisationUnitGroups": id_ref,
            "ouMode": {"type": "string", "enum": ["SELECTED", "DESCENDANTS"]},
            "discussion": BOOL,
        },
    }
    created = {
        "allOf": [_ref("WebMessage")],
        "type": "object",
        "required": ["id"],
        "properties": {
            "id": STR,
            "messageId": STR,
            "announcement": BOOL,
            "delivery": _nullable(_obj(["id", "href"], id=STR, href=STR)),
            "response": _obj(["uid"], uid=STR, responseType=STR, klass=STR),
        },
    }
    named = _obj(["id", "displayName"], id=STR, displayName=STR)
    org_unit = _obj(
        ["id", "displayName", "level", "path"],
        id=STR,
        displayName=STR,
        level=INT,
        path=STR,
        childCount=INT,
    )
    lookup_user = _obj(
        ["id", "username", "displayName"],
        id=STR,
        username=STR,
        displayName=STR,
        firstName=_nullable(STR),
        surname=_nullable(STR),
    )
    recipients = {
        "type": "object",
        "description": new_message["description"],
        "properties": {
            k: new_message["properties"][k]
            for k in (
                "users",
                "userGroups",
                "organisationUnits",
                "organisationUnitGroups",
                "ouMode",
                # needed to grow a discussion past the announcement threshold (else 409)
                "discussion",
            )
        },
    }
    api_token = _obj(
        ["id", "expire", "type"],
        id=STR,
        name=_nullable(STR),
        displayName=STR,
        created=DATETIME,
        expire=INT,
        version=INT,
        type=STR,
        user=_obj(["id"], id=STR),
    )
    return {
        "UserRef": user_ref,
        # `fields=` may select any subset, so no property is required.
        "Summary": {"type": "object", "properties": summary_props},
        "Recipients": recipients,
        "ApiToken": api_token,
        "Conversation": conversation,
        "Message": message,
        "Delivery": delivery,
        "WebMessage": web_message,
        "NewMessage": new_message,
        "Created": created,
        "Named": named,
        "OrgUnit": org_unit,
        "LookupUser": lookup_user,
        "IdArray": {
            "type": "array",
            "maxItems": MAX_RECIPIENT_IDS,
            "items": {"type": "string"},
        },
    }


# ---------------------------------------------------------------------------------------------
# Operations

ERRORS = {
    400: "Malformed request; `field` names the input at fault",
    401: "Not signed in",
    403: "Signed in but not allowed to do this",
    404: "No such object, or one the caller may not see",
    409: "Unknown reference or a conflicting state",
    413: "The request body is larger than the limit",
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _op(
    summary: str,
    ok: dict[str, Any],
    *,
    code: int = 200,
    errors: tuple[int, ...] = (400, 401),
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    tag: str = "messageConversations",
) -> dict[str, Any]:
    responses: dict[str, Any] = {str(code): ok}
    for err in sorted({*errors, 401}):
        responses[str(err)] = _json(_ref("WebMessage"), ERRORS[err])
    if body is not None:
        responses.setdefault("413", _json(_ref("WebMessage"), ERRORS[413]))
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = body
    return op


def _query(name: str, schema: dict[str, Any], description: str = "", **extra: Any) -> dict:
    return {"name": name, "in": "query", "schema": schema, "description": description, **extra}


def _path(name: str = "id") -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


FIELDS = _query(
    "fields",
    {"type": "array", "items": {"type": "string"}},
    "DHIS2 field selection, e.g. id,subject,messages[text,sender[displayName]]",
    style="form",
    explode=True,
)
# DHIS2's two spellings of "act for this user": both accepted wherever one is, own id only.
OWN_USER = [
    _query(name, {"type": "string"}, "only the caller's own id is accepted (else 403)")
    for name in ("user", "userUid")
]

TEXT_BODY = {
    "required": True,
    "content": {
        "text/plain": {"schema": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT}},
        JSON: {
            "schema": _obj(["text"], text={"type": "string", "minLength": 1, "maxLength": MAX_TEXT})
        },
    },
}
IDS_BODY = {"required": True, "content": {JSON: {"schema": _ref("IdArray")}}}


def _flagged(key: str) -> dict[str, Any]:
    return _json(
        _obj([key], **{key: {"type": "array", "items": STR}}),
        "The ids changed (unknown or invisible ids are left out)",
    )


def _flag_op(summary: str, key: str) -> dict[str, Any]:
    return {
        "post": _op(summary, _flagged(key), errors=(400, 403, 404), params=OWN_USER, body=IDS_BODY)
    }


def _one_flag_op(summary: str, key: str) -> dict[str, Any]:
    return {
        "parameters": [_path("id")],
        "post": _op(summary, _flagged(key), errors=(400, 403, 404), params=OWN_USER),
    }


def _triaged(key: str) -> dict[str, Any]:
    return _obj([key, "id"], **{key: STR, "id": STR})


def _paths() -> dict[str, Any]:
    web_message = _ref("WebMessage")
    conv_id = _path("id")
    list_params = [
        _query("page", {"type": "integer", "minimum": 1, "maximum": 1_000_000}),
        _query("pageSize", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE}),
        _query("paging", {"type": "boolean"}, "false: every conversation, no pager"),
        _query(
            "filter",
            {"type": "array", "items": {"type": "string"}, "maxItems": 20},
            "field:op:value with field one of messageType, status, priority, read, followUp, "
            "assignee.id and op one of eq, ne, in, !in, null, !null (in: at most 100 values); "
            "at most 20 filters, which combine",
            style="form",
            explode=True,
        ),
        _query(
            "order",
            {"type": "array", "items": {"type": "string"}, "maxItems": 11},
            "property:asc|desc, e.g. lastMessage:desc; at most 11 terms in all",
            style="form",
            explode=True,
        ),
        _query("rootJunction", {"type": "string", "enum": ["AND"]}),
        _query("queryOperator", {"type": "string", "enum": ["token", "ilike", "like"]}),
        _query("assignedToMe", {"type": "boolean"}),
        FIELDS,
        _query("messageType", {"type": "string", "enum": ENUMS["messageType"]}),
        _query("status", {"type": "string", "enum": ENUMS["status"]}),
        _query("priority", {"type": "string", "enum": ENUMS["priority"]}),
        _query(
            "queryString",
            {"type": "string", "maxLength": MAX_QUERY_STRING},
            "words in the subject, message text or sender name",
        ),
    ]
    pager = _obj(
        ["page", "pageCount", "total", "pageSize"], page=INT, pageCount=INT, total=INT, pageSize=INT
    )
    conv_list = _obj(
        ["messageConversations"],
        pager=pager,
        messageConversations={"type": "array", "items": _ref("Summary")},
    )
    lookup_query = _query("query", {"type": "string", "maxLength": MAX_LOOKUP_QUERY})
    removed = _json(_obj(["removed"], removed={"type": "array", "items": STR}), "Removed ids")
    return {
        "/api/openapi.json": {
            "get": {
                "summary": "This description",
                "tags": ["meta"],
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3 document"}},
            }
        },
        "/api/me": {
            "get": _op(
                "The caller",
                _json({"type": "object", "required": ["id", "username"]}, "The caller"),
                tag="me",
            )
        },
        "/api/me/dashboard": {
            "get": _op(
                "Unread counts",
                _json(
                    _obj(["unreadMessageConversations"], unreadMessageConversations=INT),
                    "Counts",
                ),
                tag="me",
            )
        },
        "/api/system/info": {
            "get": _op(
                "Server version (DHIS2 clients read it)",
                _json(_obj(["version"], version=STR), "Version"),
                tag="system",
            )
        },
        "/api/messageConversations": {
            "get": _op(
                "The caller's conversations, newest first",
                _json(conv_list, "A page of conversations"),
                params=list_params,
            ),
            "post": _op(
                "Send a message; delivery continues in the background",
                _json(_ref("Created"), "Created; Location names the conversation"),
                code=201,
                errors=(400, 403, 404, 409),
                body={"required": True, "content": {JSON: {"schema": _ref("NewMessage")}}},
            ),
            "delete": _op(
                "Remove conversations from the caller's inbox",
                removed,
                errors=(400, 403, 404),
                params=[
                    *OWN_USER,
                    _query(
                        "mc",
                        {"type": "array", "items": STR, "maxItems": MAX_RECIPIENT_IDS},
                        required=True,
                        style="form",
                        explode=True,
                    ),
                ],
            ),
        },
        "/api/messageConversations/feedback": {
            "post": _op(
                "Send feedback to the feedback recipients group",
                _json(_ref("Created"), "Created"),
                code=201,
                errors=(400, 409),
                params=[
                    _query("subject", {"type": "string", "minLength": 1, "maxLength": MAX_SUBJECT})
                ],
                body=TEXT_BODY,
            )
        },
        "/api/messageConversations/read": _flag_op("Mark read (own inbox)", "markedRead"),
        "/api/messageConversations/unread": _flag_op("Mark unread (own inbox)", "markedUnread"),
        "/api/messageConversations/followup": _flag_op("Mark for follow-up", "markedFollowup"),
        "/api/messageConversations/unfollowup": _flag_op(
            "Remove the follow-up mark", "unmarkedFollowup"
        ),
        "/api/messageConversations/{id}": {
            "parameters": [conv_id],
            "get": _op(
                "A conversation with its messages",
                _json(_ref("Conversation"), "The conversation"),
                errors=(400, 404),
                params=[_query("markRead", {"type": "boolean"}), FIELDS],
            ),
            "post": _op(
                "Reply (plain-text body); internal=true for feedback handlers",
                _json(_ref("Created"), "Reply added"),
                code=201,
                errors=(400, 403, 404),
                params=[_query("internal", {"type": "boolean"})],
                body=TEXT_BODY,
            ),
            "delete": _op(
                "Remove from the caller's inbox",
                removed,
                errors=(400, 403, 404),
                params=OWN_USER,
            ),
        },
        "/api/messageConversations/{id}/{userId}": {
            "parameters": [conv_id, _path("userId")],
            "delete": _op(
                "Remove from the caller's inbox (userId must be the caller's, else 403)",
                removed,
                errors=(400, 403, 404),
                params=OWN_USER,
            ),
        },
        "/api/messageConversations/{id}/read": _one_flag_op("Mark one read", "markedRead"),
        "/api/messageConversations/{id}/unread": _one_flag_op("Mark one unread", "markedUnread"),
        "/api/messageConversations/{id}/recipients": {
            "parameters": [conv_id],
            "post": _op(
                "Add recipients (the sender, administrators); delivered in the background",
                _json(
                    {
                        "allOf": [web_message],
                        "type": "object",
                        "required": ["id", "delivery"],
                        "properties": {
                            "id": STR,
                            "delivery": _obj(["id", "href"], id=STR, href=STR),
                        },
                    },
                    "Accepted",
                ),
                code=202,
                errors=(400, 403, 404, 409),
                body={"required": True, "content": {JSON: {"schema": _ref("Recipients")}}},
            ),
        },
        "/api/apiToken": {
            "get": _op(
                "The caller's personal access tokens",
                _json(
                    _obj(["apiToken"], apiToken={"type": "array", "items": _ref("ApiToken")}),
                    "Tokens",
                ),
                tag="apiToken",
            ),
            "post": _op(
                "Create a personal access token (not with a token); the key is shown once",
                _json(web_message, "Created; response.key is the token"),
                code=201,
                errors=(400, 403),
                body={
                    "required": False,
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "name": _nullable(STR),
                                    "expire": {
                                        "type": ["integer", "null"],
                                        "description": "milliseconds since 1970",
                                    },
                                },
                            }
                        }
                    },
                },
                tag="apiToken",
            ),
        },
        "/api/apiToken/{id}": {
            "parameters": [conv_id],
            "get": _op(
                "One of the caller's tokens",
                _json(_ref("ApiToken"), "The token (never its key)"),
                errors=(400, 404),
                tag="apiToken",
            ),
            "delete": _op(
                "Revoke one of the caller's tokens",
                _json(web_message, "Revoked"),
                errors=(400, 404),
                tag="apiToken",
            ),
        },
        "/api/userLookup/{id}": {
            "parameters": [conv_id],
            "get": _op(
                "One user by id or username",
                _json(_ref("LookupUser"), "The user"),
                errors=(400, 404),
                tag="lookup",
            ),
        },
        "/api/messageConversations/{id}/delivery": {
            "parameters": [conv_id],
            "get": _op(
                "Delivery progress (sender and administrators; other participants get 403)",
                _json(_ref("Delivery"), "Progress"),
                errors=(400, 403, 404),
            ),
        },
        "/api/deliveries/{id}": {
            "parameters": [conv_id],
            "get": _op(
                "A delivery by id (whoever started it, administrators)",
                _json(_ref("Delivery"), "Progress"),
                errors=(400, 404),
                tag="deliveries",
            ),
        },
        "/api/messageConversations/{id}/status": {
            "parameters": [conv_id],
            "post": _op(
                "Set a feedback conversation's status (handlers)",
                _json(_triaged("status"), "Updated: {NEW_VALUE: [id]} as DHIS2 answers"),
                errors=(400, 403, 404),
                params=[
                    _query(
                        "messageConversationStatus",
                        {"type": "string", "enum": ENUMS["ticketStatus"]},
                        required=True,
                    )
                ],
            ),
        },
        "/api/messageConversations/{id}/priority": {
            "parameters": [conv_id],
            "post": _op(
                "Set a feedback conversation's priority (handlers)",
                _json(_triaged("priority"), "Updated: {NEW_VALUE: [id]} as DHIS2 answers"),
                errors=(400, 403, 404),
                params=[
                    _query(
                        "messageConversationPriority",
                        {"type": "string", "enum": ENUMS["priority"]},
                        required=True,
                    )
                ],
            ),
        },
        "/api/messageConversations/{id}/assign": {
            "parameters": [conv_id],
            "post": _op(
                "Assign a feedback conversation to a handler (handlers)",
                _json(web_message, "Assigned"),
                errors=(400, 403, 404, 409),
                params=[_query("userId", {"type": "string", "minLength": 1}, required=True)],
            ),
            "delete": _op(
                "Unassign (handlers)", _json(web_message, "Unassigned"), errors=(400, 403, 404)
            ),
        },
        "/api/configuration/feedbackRecipients": {
            "get": _op(
                "The feedback recipients user group (null when none)",
                _json(_nullable(_ref("Named")), "The group"),
                tag="configuration",
            ),
            "post": _op(
                "Set the feedback recipients group (administrators); the group id as the body",
                _json(web_message, "Set"),
                errors=(400, 403, 404),
                body={
                    "required": True,
                    "content": {
                        "text/plain": {"schema": {"type": "string", "minLength": 1}},
                        JSON: {"schema": _obj(["id"], id=STR)},
                    },
                },
                tag="configuration",
            ),
            "delete": _op(
                "Clear the feedback recipients group (administrators)",
                _json(web_message, "Cleared"),
                errors=(403,),
                tag="configuration",
            ),
        },
        "/api/userLookup": {
            "get": _op(
                "Find users by name or username (at least 2 characters)",
                _json(
                    _obj(["users"], users={"type": "array", "items": _ref("LookupUser")}), "Users"
                ),
                params=[
                    _query(
                        "query",
                        {"type": "string", "minLength": 2, "maxLength": MAX_LOOKUP_QUERY},
                        required=True,
                    )
                ],
                tag="lookup",
            )
        },
        "/api/userLookup/feedbackRecipients": {
            "get": _op(
                "Find members of the feedback recipients group",
                _json(
                    _obj(["users"], users={"type": "array", "items": _ref("LookupUser")}), "Users"
                ),
                params=[lookup_query],
                tag="lookup",
            )
        },
        "/api/userGroups": {
            "get": _op(
                "Find user groups",
                _json(
                    _obj(["userGroups"], userGroups={"type": "array", "items": _ref("Named")}),
                    "Groups",
                ),
                params=[lookup_query],
                tag="lookup",
            )
        },
        "/api/organisationUnitGroups": {
            "get": _op(
                "Find organisation-unit groups",
                _json(
                    _obj(
                        ["organisationUnitGroups"],
                        organisationUnitGroups={"type": "array", "items": _ref("Named")},
                    ),
                    "Groups",
                ),
                params=[lookup_query],
                tag="lookup",
            )
        },
        "/api/organisationUnits": {
            "get": _op(
                "Find organisation units (the roots without a query)",
                _json(
                    _obj(
                        ["organisationUnits"],
                        organisationUnits={"type": "array", "items": _ref("OrgUnit")},
                    ),
                    "Units",
                ),
                params=[
                    lookup_query,
                    _query("level", {"type": "integer", "minimum": 1, "maximum": 20}),
                ],
                tag="lookup",
            )
        },
        "/api/organisationUnits/{id}/children": {
            "parameters": [conv_id],
            "get": _op(
                "The children of an organisation unit",
                _json(
                    _obj(
                        ["organisationUnits"],
                        organisationUnits={"type": "array", "items": _ref("OrgUnit")},
                    ),
                    "Units",
                ),
                errors=(400, 404),
                tag="lookup",
            ),
        },
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "DHIS2 messaging service API",
            "version": "1",
            "description": (
                "DHIS2's messageConversations Web API and the look-ups around it. Every path "
                "also answers with a `.json` suffix. Limits: subject "
                f"{MAX_SUBJECT} characters, text {MAX_TEXT} characters, {MAX_RECIPIENT_IDS} "
                "recipient ids (or conversation ids) per request, request bodies "
                f"{max_body_bytes() // 1024} KiB; larger bodies answer 413."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"basic": []}, {"apiToken": []}, {"session": []}],
        "components": {
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic"},
                "apiToken": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "DHIS2 personal access token: `Authorization: ApiToken d2pat_…`",
                },
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "session",
                    "description": "The pages' session; writes also need the X-CSRFToken header",
                },
            },
            "schemas": _schemas(),
        },
        "paths": _paths(),
    }


def max_body_bytes() -> int:
    from web.app import MAX_CONTENT_LENGTH

    return MAX_CONTENT_LENGTH


@bp.get("/api/openapi.json")
def openapi_json() -> Response:
    cache = current_app.extensions.setdefault("openapi", document())
    return jsonify(cache)
