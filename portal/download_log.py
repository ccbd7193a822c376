"""The append-only log of every download: who, what, which bytes, when, from where.

One JSON object per line in ``<home>/logs/portal_downloads.jsonl``. The file is opened with
``O_APPEND`` for each record and written with one ``write`` call, never truncated, rewritten or
read by the portal; it is created with mode 0600 in a 0700 folder. Refused downloads (a package
that fails verification) are logged too, with ``served: false`` and the reason.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["DownloadLog"]


class DownloadLog:
    """Appends download records to ``path`` (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def record(
        self,
        *,
        user: str,
        method: str,
        client: str | None,
        study: str,
        audit_id: str,
        file: str,
        sha256: str | None,
        size: int | None,
        served: bool,
        reason: str = "",
        forwarded_for: str | None = None,
    ) -> dict:
        """Append one record and return it.

        Parameters
        ----------
        user, method : str
            Who downloaded and how they authenticated.
        client : str or None
            The peer address (``forwarded_for``: the proxy's ``X-Forwarded-For``, when the peer
            is a trusted proxy).
        study, audit_id, file : str
            What was asked for (``file``: ``report.pdf``, ``package.zip`` or an attachment).
        sha256, size : str, int or None
            Of the bytes served (``None`` when refused).
        served : bool
            Whether the bytes were sent; ``reason`` says why not.
        """
        entry = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "user": user,
            "auth": method,
            "client": client,
            "forwarded_for": forwarded_for,
            "study": study,
            "audit_id": audit_id,
            "file": file,
            "sha256": sha256,
            "bytes": size,
            "served": served,
            "reason": reason,
        }
        line = (json.dumps(entry, sort_keys=True, ensure_ascii=True) + "\n").encode("ascii")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            fd = os.open(self.path, flags, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        return entry
