"""The HTTP API as OpenAPI 3.1, served at /openapi.json; schemathesis checks the service against it."""
from __future__ import annotations

from functools import lru_cache
from importlib.metadata import version

from aiohttp import web
from faust.web import Blueprint, View

from .config import Settings
from .limits import (DEFAULT_HISTORY, EVENT_ID_PATTERN, IDEMPOTENCY_KEY_PATTERN, MAX_HISTORY, MAX_USER, ROOM_PATTERN,
                     STORED_EVENT_ID_PATTERN)

blueprint = Blueprint("openapi")
ROOM = {"name": "room", "in": "path", "required": True,
        "schema": {"type": "string", "pattern": f"^{ROOM_PATTERN}$"}}
EVENT_ID = {"type": "string", "pattern": f"^{EVENT_ID_PATTERN}$"}
LAST_EVENT_ID = [
    {"name": "Last-Event-ID", "in": "header", "required": False,
     "description": "Resume after this event id (partition:offset)", "schema": EVENT_ID},
    {"name": "last_event_id", "in": "query", "required": False,
     "description": "Same as the Last-Event-ID header", "schema": EVENT_ID},
    {"name": "access_token", "in": "query", "required": False,
     "description": "The bearer token, for EventSource clients that cannot send headers",
     "schema": {"type": "string"}},
]


IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "description": "A key of the client's choosing: a retry with the same key (within KCHAT_IDEMPOTENCY_RETENTION "
                   "of the first attempt that reached the log) is answered with the message the first attempt "
                   "stored, which is delivered, counted and shown once",
    "schema": {"type": "string", "pattern": f"^{IDEMPOTENCY_KEY_PATTERN}$"}}
USER = {"name": "user", "in": "query", "required": False,
        "description": "Who is watching (without authentication): listed in the room's presence; the stream "
                       "is anonymous without it",
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_USER}}
SCOPE = {"name": "scope", "in": "query", "required": False,
         "description": "`local`: only this worker's share (used between workers)",
         "schema": {"type": "string", "enum": ["local"]}}
SINCE = {"name": "since", "in": "query", "required": False,
         "description": "From the first message at or after this time: RFC 3339 (2026-12-04T15:00:00Z) or epoch "
                        "milliseconds (found with Kafka's offsets-for-times on the room's partition)",
         "schema": {"type": "string"}}
REPLAYED = {"Idempotent-Replayed": {"description": "`true` when an earlier attempt with the same key stored it",
                                    "schema": {"type": "string", "enum": ["true"]}}}


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _errors(*codes: int) -> dict:
    text = {400: "Invalid input (the body says which field)", 401: "Missing or invalid token (auth on)",
            403: "The token's user differs from the request's user, or the token does not give access to the room "
                 "(its `rooms` claim)", 404: "No such resource",
            413: "Body too large", 415: "Wrong Content-Type",
            422: "The Idempotency-Key was used for another message; or the event id is not one of the room",
            429: "Per-user rate limit; see Retry-After",
            503: "Kafka or another worker did not answer in time; a publish is then NOT confirmed"}
    return {str(c): _error(text[c]) for c in codes}


def _json_or_local(description: str, answer: dict, local: dict) -> dict:
    """A JSON answer that is `local` instead when asked with scope=local (between workers)."""
    return {"description": description, "content": {"application/json": {"schema": {"anyOf": [answer, local]}}}}


def _stream(description: str) -> dict:
    return {"description": description, "content": {"text/event-stream": {"schema": {"type": "string"}}}}


@lru_cache
def spec(settings: Settings) -> dict:
    """The description of a worker run with these settings."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "kchat-faust", "version": version("kchat-faust"),
                 "description": "A chat service on Apache Kafka. A 2xx for a publish means the brokers "
                                "acknowledged the message (acks=all)."},
        "paths": {
            "/api/rooms/{room}/messages": {
                "parameters": [ROOM],
                "post": {
                    "summary": "Publish a message; answered after the brokers acknowledged it",
                    "parameters": [IDEMPOTENCY_KEY],
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/NewMessage"}}}},
                    "responses": {"201": {"description": "Stored", "headers": REPLAYED,
                                          "content": {"application/json": {
                                              "schema": {"$ref": "#/components/schemas/Message"}}}},
                                  **_errors(400, 401, 403, 404, 413, 415, 422, 429, 503)},
                },
                "get": {
                    "summary": "A page of the room's history, oldest first, found through the room index and read "
                               "back from Kafka: the last messages, the ones just before `before`, or the first "
                               "at or after `since`",
                    "parameters": [{"name": "limit", "in": "query", "required": False,
                                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_HISTORY,
                                               "default": DEFAULT_HISTORY}},
                                   {"name": "before", "in": "query", "required": False,
                                    "description": "The messages just before this event id of the room (the "
                                                   "`before` of the page after)",
                                    "schema": {"type": "string", "pattern": f"^{STORED_EVENT_ID_PATTERN}$"}},
                                   SINCE, SCOPE],
                    "responses": {"200": {"description": "History", "content": {"application/json": {
                        "schema": {"type": "object", "required": ["room", "messages", "last_event_id", "before"],
                                   "properties": {"room": {"type": "string"},
                                                  "last_event_id": {
                                                      **EVENT_ID,
                                                      "description": "Resume the event stream from here: "
                                                                     "no gap after this page"},
                                                  "before": {
                                                      "oneOf": [{"type": "null"}, EVENT_ID],
                                                      "description": "Ask with before= this for the page "
                                                                     "before; null at the room's start"},
                                                  "partial": {"type": "boolean", "description":
                                                              "No worker could answer from the room index: "
                                                              "the page was read from the log's last 50,000 "
                                                              "records and may lack older messages of the room"},
                                                  "gap": {"type": "object", "required": ["missing"],
                                                          "description": "The log no longer has the room's "
                                                                         "oldest messages (retention)",
                                                          "properties": {
                                                              "missing": {"type": "integer", "minimum": 1},
                                                              "first_event_id": {"oneOf": [{"type": "null"},
                                                                                           EVENT_ID]}}},
                                                  "messages": {"type": "array",
                                                               "items": {"$ref": "#/components/schemas/Message"}}}}}}},
                        **_errors(400, 401, 404, 503)},
                },
            },
            "/api/rooms/{room}/keys/{msg_id}": {
                "parameters": [ROOM, {"name": "msg_id", "in": "path", "required": True,
                                      "schema": {"type": "string", "pattern": "^k[0-9a-f]{32}$"}}],
                "get": {"summary": "Between workers: where the message published with this keyed id is stored, from "
                                   "the keys kept for KCHAT_IDEMPOTENCY_RETENTION (404 if nowhere; with "
                                   "scope=local, offset null)",
                        "parameters": [SCOPE],
                        "responses": {"200": {"description": "Found", "content": {"application/json": {
                            "schema": {"type": "object", "required": ["room", "id", "offset", "timestamp"],
                                       "properties": {"room": {"type": "string"}, "id": {"type": "string"},
                                                      "offset": {"type": ["integer", "null"], "minimum": 0},
                                                      "timestamp": {"type": ["integer", "null"]}}}}}},
                                      **_errors(400, 401, 404, 503)}},
            },
            "/api/rooms/{room}/read": {
                "parameters": [ROOM],
                "put": {"summary": "Mark the room read up to this event (a message or join/leave of the room) for the "
                                   "user; answered after the brokers acknowledged it. A position only moves forward: "
                                   "an older one changes nothing and is answered 204 too. With authentication, only "
                                   "for the token's own user. A user's own post marks the room read up to it",
                        "requestBody": {"required": True, "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/ReadMark"}}}},
                        "responses": {"204": {"description": "Marked (or already read further)"},
                                      **_errors(400, 401, 403, 404, 413, 415, 422, 503)}},
            },
            "/api/rooms/{room}/count": {
                "parameters": [ROOM],
                "get": {"summary": "How many messages (not joins or leaves, not dropped copies) the room's log holds "
                                   "after an event, and when the last was sent",
                        "parameters": [{"name": "after", "in": "query", "required": False,
                                        "description": "An event id of the room (absent: count them all)",
                                        "schema": EVENT_ID}, SCOPE],
                        "responses": {"200": {"description": "Count", "content": {"application/json": {
                            "schema": {"type": "object", "required": ["room", "after", "count", "last_message_at"],
                                       "properties": {"room": {"type": "string"}, "after": EVENT_ID,
                                                      "count": {"type": "integer", "minimum": 0},
                                                      "last_message_at": {"type": ["string", "null"],
                                                                          "format": "date-time"}}}}}},
                                      **_errors(400, 401, 403, 404, 503)}},
            },
            "/api/users/{user}/unread": {
                "parameters": [{"name": "user", "in": "path", "required": True,
                                "schema": {"type": "string", "minLength": 1, "maxLength": MAX_USER}}],
                "get": {"summary": "Every room the user has read or posted in, with its unread count: the messages "
                                   "after the user's read position, exact (counted from the room index and the log). "
                                   "With authentication, only the token's own user, and only the rooms it may enter",
                        "parameters": [SCOPE],
                        "responses": {"200": _json_or_local(
                            "Unread counts (with scope=local: the positions only, for the worker that asked)",
                            {"$ref": "#/components/schemas/Unread"},
                            {"type": "object", "required": ["user", "positions"],
                             "properties": {"user": {"type": "string"}, "positions": {
                                 "type": "object", "additionalProperties": {"type": "integer"}}}}),
                                      **_errors(400, 401, 403, 404, 503)}},
            },
            "/api/rooms/{room}/events": {
                "parameters": [ROOM],
                "get": {"summary": "Server-Sent Events: event `message` (data = Message JSON), `join` and `leave` "
                                   "(data = PresenceEvent JSON: a user's first session opened, its last closed); "
                                   "`gap` first when the log no longer has what follows the resume point "
                                   "(data: missing_after_event_id, first_event_id); id = resume token. "
                                   "Last-Event-ID wins over since",
                        "parameters": [*LAST_EVENT_ID, SINCE, USER],
                        "responses": {"200": _stream("An endless event stream"), **_errors(400, 401, 404, 503)}},
            },
            "/api/rooms/{room}/presence": {
                "parameters": [ROOM],
                "get": {"summary": "Who is in the room: the named users with their open sessions, and how many "
                                   "anonymous sessions; the same whichever worker answers",
                        "parameters": [SCOPE],
                        "responses": {"200": {"description": "Presence", "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/Presence"}}}},
                            **_errors(400, 401, 404, 503)}},
            },
            "/api/rooms": {
                "get": {"summary": "Every room with messages or people: messages in the last minute (the current "
                                   "and the previous one-minute window), the last 10 minutes and the last hour, by "
                                   "event time; the last message's time; how many are online",
                        "parameters": [SCOPE],
                        "responses": {"200": _json_or_local(
                            "Rooms (with scope=local: this worker's share, raw, for the worker that asked)",
                            {"type": "object", "required": ["rooms"], "properties": {"rooms": {
                                "type": "array", "items": {"$ref": "#/components/schemas/RoomActivity"}}}},
                            {"type": "object", "required": ["activity", "online"],
                             "properties": {"activity": {"type": "object"}, "online": {"type": "object"}}}),
                            **_errors(400, 401, 503)}},
            },
            "/api/rooms/trending": {
                "get": {"summary": "The busiest rooms over the last 10 minutes (at most 10)",
                        "responses": {"200": {"description": "Trending rooms", "content": {"application/json": {
                            "schema": {"type": "object", "required": ["window_minutes", "rooms"],
                                       "properties": {"window_minutes": {"type": "integer"}, "rooms": {
                                           "type": "array",
                                           "items": {"$ref": "#/components/schemas/RoomActivity"}}}}}}},
                            **_errors(401, 503)}},
            },
            "/api/topics/{topic}": {
                "parameters": [{"name": "topic", "in": "path", "required": True,
                                "schema": {"type": "string", "enum": [settings.topic]}}],
                "post": {
                    "summary": "The 2017 tutorial's publish endpoint: text/plain \"<name>: <text>\"",
                    "parameters": [IDEMPOTENCY_KEY],
                    "requestBody": {"required": True, "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "responses": {"200": {"description": "Stored; header X-Kchat-Event-Id names its place",
                                          "headers": {"X-Kchat-Event-Id": {"schema": {"type": "string"}},
                                                      **REPLAYED}},
                                  **_errors(400, 401, 403, 404, 413, 415, 422, 429, 503)},
                },
            },
            "/sse/connect": {
                "get": {"summary": f"The tutorial's event stream: room {settings.default_room!r} as event `test`",
                        "parameters": LAST_EVENT_ID,
                        "responses": {"200": _stream("An endless event stream"), **_errors(400, 401, 503)}},
            },
            "/api/system/echo": {
                "get": {"summary": "Liveness, as the tutorial's publish server",
                        "responses": {"200": {"description": "I'm working...",
                                              "content": {"text/plain": {"schema": {"const": "I'm working..."}}}}}},
            },
            "/stats/users": {
                "get": {"summary": "Every user's message count, gathered from every worker",
                        "parameters": [{"name": "scope", "in": "query", "required": False,
                                        "description": "`local`: only this worker's partitions (used between workers)",
                                        "schema": {"type": "string", "enum": ["local"]}}],
                        "responses": {"200": {"description": "Counts", "content": {"application/json": {"schema": {
                            "type": "object", "required": ["users"],
                            "properties": {"users": {"type": "object",
                                                     "additionalProperties": {"type": "integer", "minimum": 0}}}}}}},
                            **_errors(400, 503)}},
            },
            "/stats/users/{user}": {
                "parameters": [{"name": "user", "in": "path", "required": True, "schema": {"type": "string"}}],
                "get": {"summary": "One user's message count",
                        "responses": {"200": {"description": "Count", "content": {"application/json": {"schema": {
                            "type": "object", "required": ["user", "count"],
                            "properties": {"user": {"type": "string"}, "count": {"type": "integer", "minimum": 0}}}}}},
                            **_errors(404, 503)}},
            },
            "/healthz": {"get": {"summary": "Alive", "responses": {"200": {"description": "Alive", "content": {
                "application/json": {"schema": {"type": "object", "properties": {"status": {"const": "ok"}}}}}}}}},
            "/readyz": {"get": {"summary": "Ready: a broker answered in the last seconds, publisher connected, "
                                            "fan-out reader assigned, tables recovered",
                                "responses": {"200": {"description": "Ready", "content": {"application/json": {
                                    "schema": {"$ref": "#/components/schemas/Readiness"}}}},
                                    "503": {"description": "Not ready", "content": {"application/json": {
                                        "schema": {"$ref": "#/components/schemas/Readiness"}}}}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
                "description": "Text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {
                "description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        },
        "components": {
            "schemas": {
                "NewMessage": {"type": "object", "required": ["user", "text"], "additionalProperties": False,
                               "properties": {"user": {"type": "string", "minLength": 1, "maxLength": MAX_USER},
                                              "text": {"type": "string", "minLength": 1,
                                                       "maxLength": settings.max_text}}},
                "Message": {"type": "object",
                            "required": ["id", "room", "user", "text", "sent_at", "partition", "offset", "event_id"],
                            "properties": {"id": {"type": "string"}, "room": {"type": "string"},
                                           "user": {"type": "string"}, "text": {"type": "string"},
                                           "sent_at": {"type": "string", "format": "date-time"},
                                           "partition": {"type": "integer", "minimum": 0},
                                           "offset": {"type": "integer", "minimum": 0},
                                           "event_id": {"type": "string", "pattern": f"^{STORED_EVENT_ID_PATTERN}$"}}},
                "Presence": {"type": "object", "required": ["room", "users"],
                             "properties": {"room": {"type": "string"}, "anonymous": {"type": "integer", "minimum": 0},
                                            "users": {"type": "array", "items": {
                                                "type": "object", "required": ["user", "sessions"],
                                                "properties": {"user": {"type": "string"},
                                                               "sessions": {"type": "integer", "minimum": 1}}}}}},
                "PresenceEvent": {"type": "object", "required": ["room", "user", "at", "event_id"],
                                  "properties": {"room": {"type": "string"}, "user": {"type": "string"},
                                                 "at": {"type": "string", "format": "date-time"},
                                                 "event_id": {"type": "string"}}},
                "RoomActivity": {"type": "object",
                                 "required": ["room", "messages_last_minute", "messages_last_hour", "last_message_at",
                                              "online"],
                                 "properties": {"room": {"type": "string"},
                                                "messages_last_minute": {"type": "integer", "minimum": 0},
                                                "messages_last_10_minutes": {"type": "integer", "minimum": 0},
                                                "messages_last_hour": {"type": "integer", "minimum": 0},
                                                "last_message_at": {"type": ["string", "null"], "format": "date-time"},
                                                "online": {"type": "integer", "minimum": 0}}},
                "ReadMark": {"type": "object", "required": ["user", "event_id"], "additionalProperties": False,
                             "properties": {"user": {"type": "string", "minLength": 1, "maxLength": MAX_USER},
                                            "event_id": {"type": "string",
                                                         "pattern": f"^{STORED_EVENT_ID_PATTERN}$"}}},
                "Unread": {"type": "object", "required": ["user", "rooms"],
                           "properties": {"user": {"type": "string"}, "rooms": {"type": "array", "items": {
                               "type": "object", "required": ["room", "last_read", "unread", "last_message_at"],
                               "properties": {"room": {"type": "string"}, "last_read": EVENT_ID,
                                              "unread": {"type": "integer", "minimum": 0},
                                              "last_message_at": {"type": ["string", "null"],
                                                                  "format": "date-time"}}}}}},
                "Error": {"type": "object", "required": ["error"],
                          "properties": {"error": {"type": "string"}, "field": {"type": "string"}}},
                "Readiness": {"type": "object", "required": ["ready"],
                              "properties": {"ready": {"type": "boolean"}, "brokers": {"type": "boolean"},
                                             "producer": {"type": "boolean"},
                                             "fanout": {"type": "boolean"}, "tables": {"type": "boolean"}}},
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                                           "description": "Only when the worker runs with KCHAT_JWT_SECRET"}},
        },
    }


@blueprint.route("/openapi.json", name="openapi")
class OpenAPI(View):
    async def get(self, request: web.Request) -> web.Response:
        return web.json_response(spec(self.app.settings))
