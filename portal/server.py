"""``clinaudit portal``: serve the committee portal of one run-time home with uvicorn.

Binds to 127.0.0.1 by default. Refuses to start without a credential (see
:mod:`clinaudit.portal.auth`) unless ``--insecure-local`` is given, which is refused for any
address but a loopback one.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .auth import AuthConfig, AuthConfigError
from .urls import DAGSTER_URL_ENV, DEFAULT_PORT, dagster_base_url

if TYPE_CHECKING:
    from .app import PortalConfig

__all__ = ["PortalConfigError", "build_parser", "main", "portal_config"]

HOME_ENV = "CLINAUDIT_HOME"
#: The download log's place under the home.
DOWNLOAD_LOG = Path("logs") / "portal_downloads.jsonl"


class PortalConfigError(ValueError):
    """The portal's command line names something unusable (``problems``: each, with its fix)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(problems))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clinaudit portal",
        description="Serve the read-only committee portal: every signed audit package of every "
        "study, verified on each view, downloadable, with what changed between audits.",
    )
    parser.add_argument("--home", help="run-time directory (default $CLINAUDIT_HOME or ./var)")
    parser.add_argument("--reports", type=Path, help="packages folder (default <home>/reports)")
    parser.add_argument(
        "--download-log",
        type=Path,
        help=f"append-only download log (default <home>/{DOWNLOAD_LOG.as_posix()})",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    parser.add_argument(
        "--token-file",
        type=Path,
        help="file holding the access token (created with a random token, mode 0600, if absent)",
    )
    parser.add_argument(
        "--insecure-local",
        action="store_true",
        help="serve WITHOUT authentication (loopback address only; for a single-user machine)",
    )
    parser.add_argument(
        "--trust-root",
        type=Path,
        action="append",
        default=[],
        help="CA certificate (PEM/DER) a production signer must chain to (repeatable)",
    )
    parser.add_argument("--no-pdfsig", action="store_true", help="skip the poppler cross-check")
    parser.add_argument(
        "--dagster-url", help=f"Dagster UI the pages link to (default ${DAGSTER_URL_ENV})"
    )
    return parser


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def portal_config(args: argparse.Namespace, environ: Mapping[str, str]) -> PortalConfig:
    """The :class:`~clinaudit.portal.app.PortalConfig` of parsed arguments.

    Raises
    ------
    AuthConfigError
        No usable credential, or ``--insecure-local`` on a non-loopback address.
    PortalConfigError
        A ``--trust-root`` file does not exist.
    """
    from clinaudit.studies import registered_studies

    from .app import PortalConfig

    if args.insecure_local and not _loopback(args.host):
        raise AuthConfigError(
            [
                f"--insecure-local serves without authentication; it is refused on --host "
                f"{args.host} (use 127.0.0.1, or configure a credential)"
            ]  # fmt: skip
        )
    missing = [str(p) for p in args.trust_root if not Path(p).is_file()]
    if missing:
        raise PortalConfigError(
            [
                f"--trust-root {m}: no such file (pass the signing CA's certificate, PEM or DER)"
                for m in missing
            ]  # fmt: skip
        )
    home = Path(args.home or environ.get(HOME_ENV) or "var").resolve()
    auth = AuthConfig.from_env(
        environ, token_file=args.token_file, insecure_local=args.insecure_local
    )
    return PortalConfig(
        reports=(args.reports or home / "reports").resolve(),
        download_log=(args.download_log or home / DOWNLOAD_LOG).resolve(),
        auth=auth,
        studies={s.name: s.title for s in registered_studies()},
        trust_roots=tuple(args.trust_root),
        use_pdfsig=not args.no_pdfsig,
        dagster_url=args.dagster_url or dagster_base_url(),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the portal until interrupted; 2 when it may not start (the reason on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        config = portal_config(args, os.environ)
    except (AuthConfigError, PortalConfigError) as exc:
        for problem in exc.problems:
            print(f"clinaudit portal: {problem}", file=sys.stderr)
        return 2
    import uvicorn

    from .app import create_app

    where = f"http://{args.host}:{args.port}"
    print(f"committee portal : {where}  (packages under {config.reports})")
    print(f"download log     : {config.download_log}")
    if args.token_file:
        print(f"access token     : in {args.token_file} (sign in with it as the password)")
    if config.auth.insecure_local:
        print("WARNING: --insecure-local: no authentication; anyone on this machine can read")
    uvicorn.run(
        create_app(config),
        host=args.host,
        port=args.port,
        proxy_headers=False,  # the peer address is what the trusted-proxy check sees
        server_header=False,
        log_level="info",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
