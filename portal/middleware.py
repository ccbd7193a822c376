"""ASGI middleware of the portal: refuse traversal, require authentication, harden responses.

Order (outermost first): :class:`SecurityHeaders`, :class:`TraversalGuard` (400 for a path with
a ``..`` segment, a backslash, a NUL or an encoded slash, before anything else looks at it),
:class:`RequireAuth` (401 unless :class:`~clinaudit.portal.auth.Authenticator` identifies the
request; only the login page is open).
"""

from __future__ import annotations

from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie
from urllib.parse import unquote

from starlette.datastructures import MutableHeaders
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import SESSION_COOKIE, Authenticator, Principal

__all__ = ["RequireAuth", "SecurityHeaders", "TraversalGuard", "client_of", "principal_of"]

#: Paths served without authentication (the login form itself).
OPEN_PATHS = frozenset({"/login"})
_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_BAD_RAW = (b"\\", b"%5c", b"%00", b"\x00", b"%2f", b"%2e")


def principal_of(scope: Scope) -> Principal:
    """The authenticated principal :class:`RequireAuth` stored for this request."""
    return scope["state"]["principal"]


def client_of(scope: Scope) -> str | None:
    """The peer address of the request."""
    client = scope.get("client")
    return client[0] if client else None


class TraversalGuard:
    """400 for any request path that could climb out of a folder, whatever it is encoded as."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.refused(scope):
            response = PlainTextResponse("400 Bad Request: path not allowed", status_code=400)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def refused(scope: Scope) -> bool:
        """Whether the path has a ``..`` or ``.`` segment, a backslash, a NUL or an encoded
        ``/``, ``\\`` or ``.`` (raw or decoded)."""
        raw = (scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")).lower()
        if any(bad in raw for bad in _BAD_RAW):
            return True
        for path in (scope["path"], unquote(scope["path"])):
            if "\\" in path or "\x00" in path:
                return True
            if any(seg in (".", "..") for seg in path.split("/")):
                return True
        return False


class RequireAuth:
    """Identify every request; answer 401 (``unauthorized(scope)``) when nobody is."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticator: Authenticator,
        unauthorized: Callable[[Scope], Response],
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.unauthorized = unauthorized

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        principal = self.authenticator.identify(headers, client_of(scope), _session(headers))
        scope.setdefault("state", {})["principal"] = principal
        if principal is None and scope["path"] not in OPEN_PATHS:
            await self.unauthorized(scope)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _session(headers: dict[str, str]) -> str | None:
    raw = headers.get("cookie")
    if not raw:
        return None
    cookie = SimpleCookie()
    try:
        cookie.load(raw)
    except CookieError:
        return None
    morsel = cookie.get(SESSION_COOKIE)
    return morsel.value if morsel else None


class SecurityHeaders:
    """No caching, no sniffing, no framing, a strict content security policy, no referrer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_hardened(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Cache-Control"] = "no-store"
                headers["X-Content-Type-Options"] = "nosniff"
                headers["X-Frame-Options"] = "DENY"
                headers["Referrer-Policy"] = "no-referrer"
                headers["Content-Security-Policy"] = _CSP
            await send(message)

        await self.app(scope, receive, send_hardened)
