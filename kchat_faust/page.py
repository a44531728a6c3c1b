"""HTTP: the browser chat page at "/" and its static files (kchat_faust/static/).

The files are small and ship inside the package, so they are read once at import and
served from memory. Every answer is `Cache-Control: no-cache` with a strong ETag (a hash
of the bytes): browsers revalidate each time and get a 304 while the file is unchanged,
so a new release is picked up on the next load without version strings in the HTML.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web
from faust.web import Blueprint, View

blueprint = Blueprint("page")

# The page's script and style live in their own files, so inline script can be refused.
CSP = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "connect-src 'self'",
    "img-src 'self' data:",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])

SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def _load(name: str, content_type: str) -> Asset:
    body = resources.files(__package__).joinpath("static", name).read_bytes()
    return Asset(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


INDEX = _load("index.html", "text/html; charset=utf-8")
ASSETS = {
    "app.js": _load("app.js", "text/javascript; charset=utf-8"),
    "style.css": _load("style.css", "text/css; charset=utf-8"),
}


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    # If-None-Match uses weak comparison: W/"x" matches "x".
    return any(tag.strip().removeprefix("W/") == etag for tag in header.split(","))


def serve(request: web.Request, asset: Asset) -> web.Response:
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache", "ETag": asset.etag}
    if _etag_matches(request.headers.get("If-None-Match"), asset.etag):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = asset.content_type
    return web.Response(body=asset.body, headers=headers)


# Registered with the app before Faust applies its own blueprints (which also claim "/" for a
# JSON status, when the web server starts); aiohttp answers with the first matching route, this one.
@blueprint.route("/", name="chat_page")
class ChatPage(View):
    async def get(self, request: web.Request) -> web.Response:
        return serve(request, INDEX)


@blueprint.route("/static/{name}", name="static_file")
class StaticFile(View):
    async def get(self, request: web.Request, name: str) -> web.Response:
        asset = ASSETS.get(name)
        if asset is None:
            raise web.HTTPNotFound()
        return serve(request, asset)
