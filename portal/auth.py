"""Who may see the portal: nothing is served without authentication.

Credentials come from the environment (read by :meth:`AuthConfig.from_env`, never at import):

``CLINAUDIT_PORTAL_TOKEN``
    A shared secret (at least 16 characters): ``Authorization: Bearer <token>``, or HTTP basic
    auth with any user name and the token as password, or the login form.
``CLINAUDIT_PORTAL_USERS``
    Named accounts, ``name:password`` entries separated by commas or whitespace (a password has
    at least 12 characters and no comma or space): basic auth or the login form.
``CLINAUDIT_PORTAL_TRUSTED_USER_HEADER`` (with ``CLINAUDIT_PORTAL_TRUSTED_PROXIES``)
    Production behind an authenticating reverse proxy (oauth2-proxy, OIDC): the user named in
    this header (e.g. ``X-Forwarded-User``) is trusted, only on requests whose peer address is
    one of the trusted proxies (default ``127.0.0.1,::1``); see ``docs/portal.md``.

The login form sets a session cookie (HMAC-signed with a secret made when the server starts,
HttpOnly, SameSite=Strict, 8 hours). With no credential configured the portal refuses to start,
unless ``insecure_local`` is set (loopback only; every request is then the user
``local-unauthenticated``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "SESSION_COOKIE",
    "AuthConfig",
    "AuthConfigError",
    "Authenticator",
    "Principal",
    "ensure_token_file",
]

TOKEN_ENV = "CLINAUDIT_PORTAL_TOKEN"
USERS_ENV = "CLINAUDIT_PORTAL_USERS"
HEADER_ENV = "CLINAUDIT_PORTAL_TRUSTED_USER_HEADER"
PROXIES_ENV = "CLINAUDIT_PORTAL_TRUSTED_PROXIES"
SESSION_COOKIE = "clinaudit_portal_session"
MIN_TOKEN, MIN_PASSWORD = 16, 12
_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,63}$")
_HEADER = re.compile(r"^[A-Za-z0-9\-]{1,64}$")
_GENERATE = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class AuthConfigError(ValueError):
    """The portal's credentials are missing or unusable: ``problems`` lists each, with its fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class Principal:
    """An authenticated requester: ``user`` (for the download log) and how it authenticated
    (``token``, ``basic``, ``session``, ``proxy-header`` or ``insecure-local``)."""

    user: str
    method: str


@dataclass(frozen=True)
class AuthConfig:
    """The portal's credentials (see the module docstring)."""

    tokens: tuple[str, ...] = ()
    users: Mapping[str, str] = field(default_factory=dict)
    trusted_user_header: str | None = None
    trusted_proxies: frozenset[str] = frozenset({"127.0.0.1", "::1"})
    insecure_local: bool = False
    session_seconds: int = 8 * 3600

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str],
        *,
        token_file: Path | None = None,
        insecure_local: bool = False,
    ) -> AuthConfig:
        """Credentials from ``environ`` (and the token in ``token_file``, if given).

        Raises
        ------
        AuthConfigError
            A credential is malformed or too short, or none is configured without
            ``insecure_local``.
        """
        problems: list[str] = []
        tokens = []
        if environ.get(TOKEN_ENV):
            tokens.append(environ[TOKEN_ENV].strip())
        if token_file is not None:
            tokens.append(ensure_token_file(token_file))
        for token in tokens:
            if len(token) < MIN_TOKEN:
                problems.append(
                    f"the portal token has {len(token)} characters, expected at least "
                    f"{MIN_TOKEN}; make one with {_GENERATE}"
                )
        users: dict[str, str] = {}
        for entry in re.split(r"[,\s]+", environ.get(USERS_ENV, "").strip()):
            if not entry:
                continue
            name, sep, password = entry.partition(":")
            if not sep or not _USER.match(name):
                problems.append(f"{USERS_ENV} entry {name!r} is not 'name:password'")
            elif len(password) < MIN_PASSWORD:
                problems.append(
                    f"{USERS_ENV}: the password of {name!r} has {len(password)} characters, "
                    f"expected at least {MIN_PASSWORD}"
                )
            else:
                users[name] = password
        header = environ.get(HEADER_ENV) or None
        if header is not None and not _HEADER.match(header):
            problems.append(f"{HEADER_ENV}={header!r} is not an HTTP header name")
        proxies = environ.get(PROXIES_ENV)
        config = cls(
            tokens=tuple(tokens),
            users=users,
            trusted_user_header=header,
            trusted_proxies=frozenset(p for p in re.split(r"[,\s]+", proxies) if p)
            if proxies
            else cls.trusted_proxies,
            insecure_local=insecure_local,
        )
        if not problems and not config.configured and not insecure_local:
            problems.append(
                f"no credential is configured: set {TOKEN_ENV} (make one with {_GENERATE}), "
                f"{USERS_ENV}='name:password,...', or {HEADER_ENV} behind an authenticating "
                "proxy (docs/portal.md); or pass --token-file PATH; --insecure-local serves "
                "without authentication on 127.0.0.1 only"
            )
        if problems:
            raise AuthConfigError(problems)
        return config

    @property
    def configured(self) -> bool:
        """Whether any credential is configured."""
        return bool(self.tokens or self.users or self.trusted_user_header)


def ensure_token_file(path: Path) -> str:
    """The token stored in ``path``, creating it once (random, mode 0600) when absent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    return token


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


class Authenticator:
    """Identifies requests under an :class:`AuthConfig` and signs session cookies."""

    def __init__(self, config: AuthConfig, *, secret: bytes | None = None) -> None:
        self.config = config
        self._secret = secret or secrets.token_bytes(32)

    def check_password(self, user: str, password: str) -> Principal | None:
        """The principal for a user name and password (or the token as password)."""
        known = self.config.users.get(user)
        if known is not None and _equal(password, known):
            return Principal(user, "basic")
        if any(_equal(password, t) for t in self.config.tokens):
            # The name that comes with the shared token is the requester's own word for it.
            name = f"{user} (token)" if _USER.match(user or "") else "token"
            return Principal(name, "token")
        return None

    def identify(
        self, headers: Mapping[str, str], client: str | None, cookie: str | None
    ) -> Principal | None:
        """Who sent a request (``headers`` with lower-case names), or ``None``."""
        header = self.config.trusted_user_header
        if header and client in self.config.trusted_proxies:
            user = headers.get(header.lower(), "").strip()
            if user:
                return Principal(user[:200], "proxy-header")
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and any(_equal(value.strip(), t) for t in self.config.tokens):
            return Principal("token", "token")
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value.strip()).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            return self.check_password(user, password)
        session = self.read_session(cookie) if cookie else None
        if session is not None:
            return session
        if self.config.insecure_local:
            return Principal("local-unauthenticated", "insecure-local")
        return None

    def _mac(self, body: str) -> str:
        return hmac.new(self._secret, body.encode("ascii"), hashlib.sha256).hexdigest()

    def session_cookie(self, principal: Principal, *, now: float | None = None) -> str:
        """A signed cookie value naming ``principal`` until the session expires."""
        expires = int((now or time.time()) + self.config.session_seconds)
        doc = json.dumps({"u": principal.user, "m": principal.method, "e": expires})
        body = base64.urlsafe_b64encode(doc.encode("utf-8")).decode("ascii")
        return f"{body}.{self._mac(body)}"

    def read_session(self, value: str, *, now: float | None = None) -> Principal | None:
        """The principal of a valid, unexpired session cookie, else ``None``."""
        body, _, mac = value.partition(".")
        if (
            not body
            or not value.isascii()
            or not hmac.compare_digest(mac.encode(), self._mac(body).encode())
        ):
            return None
        try:
            doc = json.loads(base64.urlsafe_b64decode(body.encode("ascii")))
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("e", 0) < (now or time.time()):
            return None
        return Principal(str(doc.get("u")), f"session ({doc.get('m')})")
