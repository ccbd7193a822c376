"""HTML -> PDF with WeasyPrint, files embedded as PDF attachments; templates with Jinja2.

Rendering is deterministic: the same HTML, stylesheets, attachments, title and
``source_date_epoch`` give the same bytes. The dates WeasyPrint would take from the clock (document
and attachment creation/modification) come from ``source_date_epoch``; the PDF file identifier is a
hash of the inputs; attachments are embedded sorted by name. Only ``file:`` and ``data:`` URLs are
fetched and a resource that cannot be fetched stops the rendering (a figure never silently drops).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
import pydyf
from weasyprint import CSS, HTML, Attachment
from weasyprint.urls import FatalURLFetchingError, URLFetcher

#: Attachment names: a relative POSIX path of simple segments (``tables/cxr_metrics.csv``).
_ATTACHMENT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)*$")


class ReportRenderError(ValueError):
    """The report could not be rendered (bad argument or a resource that cannot be fetched)."""


def jinja_environment(template_dir: Path | Sequence[Path]) -> jinja2.Environment:
    """The one Jinja environment of the reports: autoescaped HTML, undefined names are errors.

    Parameters
    ----------
    template_dir : Path or sequence of Path
        Folder(s) searched for templates, in order.
    """
    dirs = [template_dir] if isinstance(template_dir, Path | str) else list(template_dir)
    for folder in dirs:
        if not Path(folder).is_dir():
            raise ReportRenderError(
                f"template_dir={str(folder)!r} is not a directory; pass the folder that holds the "
                "report templates (e.g. the package's templates/<report type>/)"
            )
    return _environment(jinja2.FileSystemLoader([str(d) for d in dirs], encoding="utf-8"))


def report_environment() -> jinja2.Environment:
    """The environment of the study reports' templates, shipped in ``clinaudit.templates``.

    Same settings as :func:`jinja_environment` (autoescaped, strict about undefined names); the
    templates are addressed as ``<study>/report.html.j2``.
    """
    return _environment(jinja2.PackageLoader("clinaudit.templates", ""))


def _environment(loader: jinja2.BaseLoader) -> jinja2.Environment:
    return jinja2.Environment(
        loader=loader,
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_template(env: jinja2.Environment, name: str, view: Any) -> str:
    """Render template ``name`` with the view-model object available as ``view``.

    Examples
    --------
    >>> html = render_template(env, "report.html.j2", ReportView(...))  # doctest: +SKIP
    """
    return env.get_template(name).render(view=view)


def check_attachment_names(names: Sequence[str]) -> None:
    """Raise ``ReportRenderError`` unless every name is a relative path of simple segments."""
    for name in names:
        if not _ATTACHMENT_NAME.match(name) or ".." in name.split("/"):
            raise ReportRenderError(
                f"attachment name {name!r} is not a relative path of simple segments; expected "
                "letters, digits, '_', '-', '.' and '/' separators (e.g. 'tables/cxr_metrics.csv')"
            )


def _pdf_date(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("D:%Y%m%d%H%M%SZ")


def _identifier(
    html: str, attachments: Mapping[str, bytes], title: str, epoch: int, css: Sequence[str]
) -> bytes:
    digest = hashlib.sha256()
    for part in (html, title, str(epoch), *css):
        digest.update(part.encode("utf-8") + b"\0")
    for name in sorted(attachments):
        digest.update(name.encode("utf-8") + b"\0" + hashlib.sha256(attachments[name]).digest())
    return digest.hexdigest()[:32].encode("ascii")


def render_pdf(
    html: str,
    *,
    base_url: Path,
    attachments: Mapping[str, bytes],
    title: str,
    source_date_epoch: int,
    stylesheets: Sequence[Path] = (),
) -> bytes:
    """Render ``html`` to PDF bytes with ``attachments`` embedded as PDF file attachments.

    Parameters
    ----------
    html : str
        The report HTML (a Python ``str``; the document should declare ``<meta charset="utf-8">``).
    base_url : Path
        Folder against which relative URLs (figures, stylesheets) resolve.
    attachments : mapping of str to bytes
        Files to embed, by name (relative POSIX path). Embedded sorted by name.
    title : str
        PDF document title (Info dictionary).
    source_date_epoch : int
        Seconds since the epoch (UTC) used for every date in the file.
    stylesheets : sequence of Path
        Extra CSS files applied after the document's own styles.

    Returns
    -------
    bytes
        The PDF; identical for identical inputs.
    """
    if not isinstance(source_date_epoch, int) or source_date_epoch < 0:
        raise ReportRenderError(
            f"source_date_epoch={source_date_epoch!r} is not a non-negative int; pass the report's "
            "creation time as seconds since 1970-01-01 UTC"
        )
    base = Path(base_url)
    if not base.is_dir():
        raise ReportRenderError(
            f"base_url={str(base)!r} is not a directory; pass the folder that relative figure and "
            "stylesheet URLs resolve against"
        )
    names = sorted(attachments)
    check_attachment_names(names)
    when = datetime.fromtimestamp(source_date_epoch, UTC).replace(tzinfo=None)
    css_paths = [Path(p) for p in stylesheets]
    for path in css_paths:
        if not path.is_file():
            raise ReportRenderError(
                f"stylesheet {str(path)!r} does not exist; pass a CSS file path"
            )
    css_texts = [p.read_text(encoding="utf-8") for p in css_paths]

    def finisher(_document: Any, pdf: pydyf.PDF) -> None:
        pdf.info["Title"] = pydyf.String(title)
        pdf.info["CreationDate"] = pydyf.String(_pdf_date(source_date_epoch))
        pdf.info["ModDate"] = pydyf.String(_pdf_date(source_date_epoch))

    fetcher = URLFetcher(allowed_protocols=("file", "data"), fail_on_errors=True)
    embedded = [
        Attachment(file_obj=io.BytesIO(attachments[name]), name=name, created=when, modified=when)
        for name in names
    ]
    try:
        document = HTML(string=html, base_url=str(base.resolve()) + "/", url_fetcher=fetcher)
        css = [
            CSS(string=text, base_url=str(path.resolve()), url_fetcher=fetcher)
            for text, path in zip(css_texts, css_paths, strict=True)
        ]
        return document.write_pdf(
            stylesheets=css,
            attachments=embedded,
            finisher=finisher,
            pdf_identifier=_identifier(html, attachments, title, source_date_epoch, css_texts),
        )
    except FatalURLFetchingError as exc:  # a BaseException in WeasyPrint: re-raise as an error
        raise ReportRenderError(
            f"{exc} while rendering {title!r} (cause: {exc.__cause__}); only file: and data: "
            f"URLs are fetched, relative to base_url={str(base)!r}; write the figure first or fix "
            "its URL"
        ) from exc
