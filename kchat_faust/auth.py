"""Optional client authentication: HS256 bearer JWTs whose `sub` is the chat user.

Off unless KCHAT_JWT_SECRET is set. Event streams take the token from `?access_token=`
too, because a browser's EventSource cannot send headers.

Private rooms: a token may carry `"rooms": [pattern, ...]`, each a room name or a prefix ending in
`*` ("team-*"). Its user may then stream, read, see the presence of and post in the matching
rooms only (403 elsewhere), and the directory, trending and unread lists leave the others out.
A token without the claim may enter every room. Workers ask each other with tokens of their own
(`"peer": true`, peers.py), which see everything: the worker asked filters for its client.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import jwt
from aiohttp import web

from .limits import ROOM_PATTERN

ROOM_RE = re.compile(ROOM_PATTERN)


class AuthError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Token:
    sub: str
    rooms: tuple[str, ...] | None = None  # the patterns of the rooms it may enter; None: every room
    peer: bool = False  # another worker's

    def may_enter(self, room: str) -> bool:
        if self.rooms is None:
            return True
        return any(room.startswith(p[:-1]) if p.endswith("*") else room == p for p in self.rooms)


def _rooms_claim(claims: dict) -> tuple[str, ...] | None:
    if "rooms" not in claims:
        return None
    rooms = claims["rooms"]
    if not isinstance(rooms, list) or not all(
            isinstance(p, str) and (ROOM_RE.fullmatch(p) or p == "*" or (p.endswith("*") and ROOM_RE.fullmatch(p[:-1])))
            for p in rooms):
        raise AuthError(401, "invalid token: claim 'rooms' must be a list of room names or prefixes ending in '*'")
    return tuple(rooms)


def token(request: web.Request, secret: str) -> Token | None:
    """The request's verified token, or None when authentication is off; raises AuthError (401)."""
    if not secret:
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, raw = header.partition(" ")
    if not (scheme.lower() == "bearer" and raw.strip()):
        raw = request.query.get("access_token", "")
    if not raw:
        raise AuthError(401, "a bearer token is required (Authorization: Bearer <JWT>)")
    try:
        claims = jwt.decode(raw.strip(), secret, algorithms=["HS256"], options={"require": ["sub"]})
    except jwt.InvalidTokenError as exc:
        raise AuthError(401, f"invalid token: {exc}") from None
    return Token(str(claims["sub"]), _rooms_claim(claims), claims.get("peer") is True)


def token_subject(request: web.Request, secret: str) -> str | None:
    """The authenticated user, or None when authentication is off; raises AuthError (401)."""
    found = token(request, secret)
    return found.sub if found is not None else None


def check_author(found: Token | None, user: object, doing: str = "post as") -> None:
    """Nobody may post, or mark read, as somebody else (403)."""
    if found is not None and user != found.sub:
        raise AuthError(403, f"this token belongs to {found.sub!r}; it cannot {doing} {user!r}")


def check_room(found: Token | None, room: str) -> None:
    """403 unless the token may enter the room."""
    if found is not None and not found.may_enter(room):
        raise AuthError(403, f"this token does not give access to room {room!r}")


def visible(found: Token | None, rooms):
    """The rooms (names, or dicts with a "room") the token may see, in their order."""
    if found is None or found.rooms is None:
        return list(rooms)
    return [r for r in rooms if found.may_enter(r if isinstance(r, str) else r["room"])]
