"""The committee portal's web app (Starlette): read-only pages over the signed packages.

Pages: ``/`` every study and its packages, newest first; ``/studies/<study>`` one study;
``/studies/<study>/packages/<audit_id>`` one package (summary, decisions, criteria,
verification, downloads, Dagster links); ``/studies/<study>/diff?before=&after=`` what changed;
downloads ``.../report.pdf``, ``.../package.zip`` and ``.../files/<name>`` (only files the
verified manifest lists). Every view verifies the package it shows; a package that fails
verification is shown as FAILED and none of its files is served (409), and every download,
served or refused, is logged (:mod:`.download_log`).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Scope

from .auth import SESSION_COOKIE, AuthConfig, Authenticator
from .catalog import valid_name, valid_relpath
from .diff import diff_packages
from .download_log import DownloadLog
from .middleware import RequireAuth, SecurityHeaders, TraversalGuard, client_of, principal_of
from .store import PackageEntry, PackageStore
from .urls import DEFAULT_DAGSTER_URL
from .verification import Verifier
from .views import (
    DiffView,
    IndexView,
    MessageView,
    StudyBlock,
    package_row,
    package_view,
    study_path,
    template_environment,
)

__all__ = ["PortalConfig", "create_app"]

_MAX_FORM = 8192


@dataclass(frozen=True)
class PortalConfig:
    """What one portal serves and how.

    Attributes
    ----------
    reports : Path
        ``<home>/reports``: the only folder read.
    download_log : Path
        The append-only download log (``<home>/logs/portal_downloads.jsonl``).
    auth : AuthConfig
        Credentials (:meth:`AuthConfig.from_env`).
    studies : mapping of str to str
        Study name -> title, in display order (the registry's studies).
    trust_roots : tuple of Path
        CA certificates a production signer must chain to.
    use_pdfsig : bool
        Cross-check signatures with poppler's ``pdfsig``.
    dagster_url : str
        Base URL of the Dagster UI the package pages link to.
    """

    reports: Path
    download_log: Path
    auth: AuthConfig
    studies: Mapping[str, str] = field(default_factory=dict)
    trust_roots: tuple[Path, ...] = ()
    use_pdfsig: bool = True
    dagster_url: str = DEFAULT_DAGSTER_URL


class Portal:
    """The request handlers (each verifies what it shows or serves)."""

    def __init__(self, config: PortalConfig) -> None:
        self.config = config
        self.store = PackageStore(
            config.reports,
            config.studies,
            Verifier(config.trust_roots, use_pdfsig=config.use_pdfsig),
        )
        self.authenticator = Authenticator(config.auth)
        self.log = DownloadLog(config.download_log)
        self.env = template_environment()

    # ------------------------------------------------------------------ rendering
    def render(
        self, name: str, view: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> HTMLResponse:
        html = self.env.get_template(name).render(view=view)
        return HTMLResponse(html, status_code=status, headers=dict(headers or {}))

    def message(
        self, request: Request, status: int, title: str, message: str, **kw: Any
    ) -> HTMLResponse:
        principal = request.scope.get("state", {}).get("principal")
        user = principal.user if principal else ""
        view = MessageView(user, title, message, status=status, **kw)
        return self.render("message.html.j2", view, status=status)

    def unauthorized(self, scope: Scope) -> Response:
        path = scope["path"] if scope["path"].startswith("/") else "/"
        view = MessageView(
            "", "Sign in", "Sign in to see the audit packages.", status=401, next=path, login=True
        )
        headers = {"WWW-Authenticate": 'Bearer realm="clinaudit portal"'}
        return self.render("message.html.j2", view, status=401, headers=headers)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        titles = {400: "Bad request", 404: "Not found", 405: "Method not allowed"}
        title = titles.get(exc.status_code, "Error")
        return self.message(request, exc.status_code, title, str(exc.detail))

    # ------------------------------------------------------------------ lookups
    def _study(self, request: Request) -> str:
        study = request.path_params["study"]
        if not valid_name(study):
            raise HTTPException(400, f"{study!r} is not a study name")
        if study not in self.config.studies:
            raise HTTPException(404, f"no study {study!r}; the studies are listed on /")
        return study

    def _audit_id(self, value: str | None, what: str) -> str:
        if value is None or not valid_name(value):
            raise HTTPException(400, f"{what}={value!r} is not an audit id")
        return value

    def _entry(self, study: str, audit_id: str) -> PackageEntry:
        entry = self.store.entry(study, audit_id)
        if entry is None:
            raise HTTPException(404, f"no package {audit_id!r} of study {study!r}")
        return entry

    def _package(self, request: Request) -> PackageEntry:
        study = self._study(request)
        return self._entry(study, self._audit_id(request.path_params["audit_id"], "audit id"))

    # ------------------------------------------------------------------ pages
    def index(self, request: Request) -> Response:
        blocks = [self._block(s) for s in self.config.studies]
        return self.render("index.html.j2", IndexView(principal_of(request.scope).user, blocks))

    def study(self, request: Request) -> Response:
        study = self._study(request)
        view = IndexView(principal_of(request.scope).user, [self._block(study)], title=study)
        return self.render("index.html.j2", view)

    def _block(self, study: str) -> StudyBlock:
        rows = [package_row(e) for e in self.store.entries(study)]
        return StudyBlock(study, self.config.studies[study], study_path(study), rows)

    def package(self, request: Request) -> Response:
        entry = self._package(request)
        view = package_view(
            entry,
            user=principal_of(request.scope).user,
            study_title=self.config.studies[entry.ref.study],
            previous=self.store.previous(entry),
            dagster_url=self.config.dagster_url.rstrip("/"),
        )
        return self.render("package.html.j2", view)

    def diff(self, request: Request) -> Response:
        study = self._study(request)
        entries = self.store.entries(study)
        if not entries:
            raise HTTPException(404, f"no package of study {study!r} yet")
        after_id = request.query_params.get("after") or entries[0].ref.audit_id
        after = self._entry(study, self._audit_id(after_id, "after"))
        before_id = request.query_params.get("before")
        if before_id is None:
            previous = self.store.previous(after)
            if previous is None:
                raise HTTPException(404, f"{after.ref.audit_id} is the first package of {study}")
            before_id = previous.ref.audit_id
        before = self._entry(study, self._audit_id(before_id, "before"))
        refused = [
            f"{e.ref.audit_id} FAILED verification ({', '.join(c.name for c in e.verdict.failed)})"
            for e in (before, after)
            if not e.verdict.ok
        ]
        view = DiffView(
            user=principal_of(request.scope).user,
            title=f"What changed: {study}",
            study=study,
            study_title=self.config.studies[study],
            before=package_row(before),
            after=package_row(after),
            diff=None if refused else diff_packages(before.facts, after.facts),
            refused=refused,
            choices=[package_row(e) for e in entries],
        )
        return self.render("diff.html.j2", view, status=409 if refused else 200)

    # ------------------------------------------------------------------ downloads
    def report(self, request: Request) -> Response:
        entry = self._package(request)
        name = f"{entry.ref.study}-{entry.ref.audit_id}-report.pdf"
        return self._serve(request, entry, "report.pdf", "application/pdf", name)

    def archive(self, request: Request) -> Response:
        entry = self._package(request)
        name = f"{entry.ref.study}-{entry.ref.audit_id}.zip"
        return self._serve(request, entry, "package.zip", "application/zip", name)

    def attachment(self, request: Request) -> Response:
        entry = self._package(request)
        name = request.path_params["name"]
        if not valid_relpath(name):
            raise HTTPException(400, f"{name!r} is not a file name")
        if entry.verdict.ok and name not in entry.servable():
            raise HTTPException(404, f"{name!r} is not a file of this package")
        media = {"csv": "text/csv", "json": "application/json", "yaml": "application/yaml"}
        kind = media.get(name.rpartition(".")[2], "application/octet-stream")
        return self._serve(request, entry, name, kind, name.replace("/", "_"))

    def _serve(
        self, request: Request, entry: PackageEntry, name: str, media_type: str, filename: str
    ) -> Response:
        principal = principal_of(request.scope)
        record = {
            "user": principal.user,
            "method": principal.method,
            "client": client_of(request.scope),
            "forwarded_for": self._forwarded_for(request),
            "study": entry.ref.study,
            "audit_id": entry.ref.audit_id,
            "file": name,
        }
        if not entry.verdict.ok:
            failed = [c.name for c in entry.verdict.failed]
            self.log.record(**record, sha256=None, size=None, served=False,
                            reason="verification FAILED: " + "; ".join(failed))  # fmt: skip
            return self.message(
                request,
                409,
                "Verification FAILED: not served",
                f"Package {entry.ref.audit_id} of {entry.ref.study} fails verification; its "
                "files are not served. Tell the MLOps team; the checks that failed:",
                details=[f"{c.name}: {c.detail}" for c in entry.verdict.failed],
            )
        body = _zip(entry) if name == "package.zip" else entry.snapshot.files[name]
        digest = hashlib.sha256(body).hexdigest()
        if request.method != "HEAD":  # a HEAD request gets the headers only: no download
            self.log.record(**record, sha256=digest, size=len(body), served=True)
        headers = {
            "Content-Disposition": f'attachment; filename="{filename}"',
            "X-Content-SHA256": digest,
            "Content-Security-Policy": "sandbox",
        }
        return Response(body, media_type=media_type, headers=headers)

    def _forwarded_for(self, request: Request) -> str | None:
        if client_of(request.scope) in self.config.auth.trusted_proxies:
            return request.headers.get("x-forwarded-for")
        return None

    # ------------------------------------------------------------------ login
    async def login_form(self, request: Request) -> Response:
        view = MessageView("", "Sign in", "", next=_local(request.query_params.get("next")),
                           login=True)  # fmt: skip
        return self.render("message.html.j2", view)

    async def login(self, request: Request) -> Response:
        body = await request.body()
        if len(body) > _MAX_FORM:
            raise HTTPException(400, "login form too large")
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        principal = self.authenticator.check_password(
            form.get("username", ""), form.get("password", "")
        )
        target = _local(form.get("next"))
        if principal is None:
            view = MessageView(
                "", "Sign in", "Wrong user name, password or token.", 401, next=target, login=True
            )
            headers = {"WWW-Authenticate": 'Bearer realm="clinaudit portal"'}
            return self.render("message.html.j2", view, status=401, headers=headers)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            self.authenticator.session_cookie(principal),
            max_age=self.config.auth.session_seconds,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response


def _local(target: str | None) -> str:
    """A redirect target on this site only (a path, never ``//host`` or a URL)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _zip(entry: PackageEntry) -> bytes:
    """The package as a zip (every file under ``<study>-<audit_id>/``, fixed dates)."""
    files = entry.snapshot.files
    prefix = f"{entry.ref.study}-{entry.ref.audit_id}"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in entry.servable():
            info = zipfile.ZipInfo(f"{prefix}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o444 << 16
            archive.writestr(info, files[name])
    return buffer.getvalue()


def create_app(config: PortalConfig) -> Starlette:
    """The portal app for ``config`` (see the module docstring for its pages).

    Examples
    --------
    >>> from starlette.testclient import TestClient  # doctest: +SKIP
    >>> app = create_app(PortalConfig(Path("var/reports"), Path("var/logs/d.jsonl"),
    ...                               AuthConfig(tokens=("x" * 32,))))  # doctest: +SKIP
    """
    portal = Portal(config)
    p = "/studies/{study}/packages/{audit_id}"
    routes: Sequence[Route] = [
        Route("/login", portal.login_form, methods=["GET"]),
        Route("/login", portal.login, methods=["POST"]),
        Route("/logout", portal.logout, methods=["POST"]),
        Route("/", portal.index, methods=["GET"]),
        Route("/studies/{study}", portal.study, methods=["GET"]),
        Route("/studies/{study}/diff", portal.diff, methods=["GET"]),
        Route(p, portal.package, methods=["GET"]),
        Route(f"{p}/report.pdf", portal.report, methods=["GET"]),
        Route(f"{p}/package.zip", portal.archive, methods=["GET"]),
        Route(p + "/files/{name:path}", portal.attachment, methods=["GET"]),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(TraversalGuard),
        Middleware(
            RequireAuth, authenticator=portal.authenticator, unauthorized=portal.unauthorized
        ),
    ]
    app = Starlette(
        routes=list(routes),
        middleware=middleware,
        exception_handlers={HTTPException: portal.http_error},
    )
    app.state.portal = portal
    return app
