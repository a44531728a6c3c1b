"""Optional client authentication: HS256 bearer JWTs whose `sub` is the chat user.

Off unless KCHAT_JWT_SECRET is set. Event streams take the token from `?access_token=`
too, because a browser's EventSource cannot send headers.
"""
from __future__ import annotations

import jwt
from aiohttp import web


class AuthError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def token_subject(request: web.Request, secret: str) -> str | None:
    """The authenticated user, or None when authentication is off; raises AuthError (401)."""
    if not secret:
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not (scheme.lower() == "bearer" and token.strip()):
        token = request.query.get("access_token", "")
    if not token:
        raise AuthError(401, "a bearer token is required (Authorization: Bearer <JWT>)")
    try:
        claims = jwt.decode(token.strip(), secret, algorithms=["HS256"], options={"require": ["sub"]})
    except jwt.InvalidTokenError as exc:
        raise AuthError(401, f"invalid token: {exc}") from None
    return str(claims["sub"])


def check_author(subject: str | None, user: object) -> None:
    """Nobody may post as somebody else (403)."""
    if subject is not None and user != subject:
        raise AuthError(403, f"this token belongs to {subject!r}; it cannot post as {user!r}")
