"""What the landing sensor decides, as plain Python: observe batches, plan a tick, write records.

A batch under ``<landing>/<landing_dir>/<partition>/<batch>/`` is *uploading* (no manifest),
*ready* (the manifest verifies) or *unverified*; :func:`plan_tick` turns one tick's observations
and the cursor into run requests, new partitions and quarantines, without touching files or the
instance. The Dagster sensor (``orchestration/sensors.py``) only wires these together.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from clinaudit.sources.landing import (
    MANIFEST_NAME,
    BatchRef,
    LandingError,
    LandingScan,
    read_manifest,
    verify_batch,
)

CURSOR_VERSION = 1
#: Hex characters of a content hash kept in the cursor (64 bits: ample to notice a change).
HASH_PREFIX = 16
#: Most problems written into one quarantine record (the count is always complete).
MAX_PROBLEMS = 200
REFUSED_FILE = "_refused_names.json"  # starts with "_": can never clash with a site directory

BatchState = Literal["uploading", "ready", "unverified"]
Problem = tuple[str, str, str]  # (file, problem, fix)


@dataclass(frozen=True)
class BatchObservation:
    """What one landed batch looks like at this tick.

    ``state`` is ``"uploading"`` (no manifest), ``"ready"`` (manifest verifies) or
    ``"unverified"`` (manifest unreadable, or files missing / different from it). ``problems``
    are ``(file, problem, fix)`` triples; ``fingerprint`` (unverified only) changes when the
    manifest or any file of the batch changes; ``ingested`` says the instance already holds
    this exact content for the site.
    """

    site: str
    batch: str
    state: BatchState
    content_hash: str | None = None
    fingerprint: str | None = None
    problems: tuple[Problem, ...] = ()
    ingested: bool = False

    @property
    def key(self) -> str:
        return f"{self.site}/{self.batch}"


@dataclass(frozen=True)
class LandingCursor:
    """What the sensor already decided; serialised as small JSON.

    ``requested``: site -> batch -> content-hash prefix of every ready batch already handled;
    ``pending``: ``"site/batch"`` -> epoch seconds its unverified manifest was first seen;
    ``quarantined``: ``"site/batch"`` -> fingerprint when quarantined; ``refused``: short hashes
    of refused directory names already reported. Entries of batches that left the landing area
    are pruned.
    """

    requested: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    pending: Mapping[str, int] = field(default_factory=dict)
    quarantined: Mapping[str, str] = field(default_factory=dict)
    refused: tuple[str, ...] = ()

    def to_json(self) -> str:
        doc = {
            "v": CURSOR_VERSION,
            "requested": {s: dict(b) for s, b in self.requested.items()},
            "pending": dict(self.pending),
            "quarantined": dict(self.quarantined),
            "refused": sorted(self.refused),
        }
        return json.dumps(doc, separators=(",", ":"), sort_keys=True)  # sorted at every level

    def summary(self) -> str:
        n_done = sum(map(len, self.requested.values()))
        return f"{n_done} handled, {len(self.pending)} pending, {len(self.quarantined)} quarantined"

    @classmethod
    def from_json(cls, text: str | None) -> LandingCursor:
        """Parse a cursor; ``None`` or ``""`` is the empty cursor.

        Raises
        ------
        ValueError
            If ``text`` is not a cursor written by :meth:`to_json` of this version.
        """
        if not text:
            return cls()
        try:
            doc = json.loads(text)
            if doc.get("v") != CURSOR_VERSION:
                raise ValueError(f"cursor version {doc.get('v')!r} is not {CURSOR_VERSION}")
            return cls(
                {s: {b: str(h) for b, h in v.items()} for s, v in doc["requested"].items()},
                {k: int(v) for k, v in doc["pending"].items()},
                {k: str(v) for k, v in doc["quarantined"].items()},
                tuple(map(str, doc["refused"])),
            )
        except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"landing sensor cursor {text[:80]!r} is not valid ({err}); reset the sensor "
                "cursor (Dagster UI > Automation > <study>_landing_sensor); run keys still "
                "prevent re-running batches already requested"
            ) from err


@dataclass(frozen=True)
class SiteRun:
    """One run to request: the site partition and the new batches (name, content hash) it covers."""

    site: str
    batches: tuple[tuple[str, str], ...]

    @property
    def run_key(self) -> str:
        return f"{self.site}:" + "+".join(f"{b}:{h}" for b, h in self.batches)

    @property
    def tags(self) -> dict[str, str]:
        batches = ",".join(b for b, _ in self.batches)
        return {"clinaudit/site": self.site, "clinaudit/batches": batches}


@dataclass(frozen=True)
class Quarantine:
    """A batch to quarantine now, with everything its reason record needs."""

    site: str
    batch: str
    content_hash: str | None
    fingerprint: str
    problems: tuple[Problem, ...]
    first_seen: int
    now: int
    grace_s: float


@dataclass(frozen=True)
class TickPlan:
    """Decisions of one tick and the cursor to store with them."""

    runs: tuple[SiteRun, ...]
    new_sites: tuple[str, ...]
    quarantines: tuple[Quarantine, ...]
    refused: tuple[str, ...]  # refused-name messages not reported before
    notes: tuple[str, ...]
    cursor: LandingCursor


def _batch_fingerprint(batch_dir: Path) -> str:
    """sha256 over the manifest bytes and (path, size, mtime) of every file of the batch."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(batch_dir):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            try:
                st = path.stat()
            except FileNotFoundError:  # renamed while we walk (an upload's temporary file)
                continue
            rel = path.relative_to(batch_dir).as_posix()
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    try:
        h.update((batch_dir / MANIFEST_NAME).read_bytes())
    except OSError as err:
        h.update(f"manifest unreadable: {err.strerror}".encode())
    return h.hexdigest()[:HASH_PREFIX]


def _verify(ref: BatchRef, known_hash: str | None) -> tuple[str | None, tuple[Problem, ...]]:
    """Content hash (None if the manifest is unreadable) and the problems of the batch."""
    content = None
    try:
        manifest = read_manifest(ref.path)
        content = manifest.content_hash
        if known_hash is not None and content.startswith(known_hash):
            return content, ()  # verified before and the manifest is unchanged
        check = verify_batch(ref.path, manifest, check_hashes=False)  # cheap: presence, sizes
        if check.ok:
            check = verify_batch(ref.path, manifest, check_hashes=True)
    except LandingError as err:
        return None, ((err.path, err.message, err.fix),)
    except OSError as err:  # a file vanished or is unreadable mid-upload: not ready yet
        why = f"could not be read ({err.strerror})"
        return content, ((str(err.filename or ref.path), why, "finish the upload, fix access"),)
    return content, tuple(check.problems())


def observe_batch(
    ref: BatchRef, *, known_hash: str | None = None, quarantined_fp: str | None = None
) -> BatchObservation:
    """Classify one batch directory as uploading, ready or unverified.

    Parameters
    ----------
    ref : BatchRef
        The batch, from :func:`clinaudit.sources.landing.scan_landing`.
    known_hash : str, optional
        Content-hash prefix already verified for this batch (cursor or ingested data): while the
        manifest has this hash the files are not hashed again.
    quarantined_fp : str, optional
        Fingerprint of the batch when it was quarantined: while unchanged it is not verified again.
    """
    site, batch = ref.site, ref.batch
    if not ref.ready:
        return BatchObservation(site, batch, "uploading")
    fingerprint = _batch_fingerprint(ref.path) if quarantined_fp else None
    if fingerprint is not None and fingerprint == quarantined_fp:
        return BatchObservation(site, batch, "unverified", fingerprint=fingerprint)
    content, problems = _verify(ref, known_hash)
    if not problems:
        return BatchObservation(site, batch, "ready", content)
    fingerprint = fingerprint or _batch_fingerprint(ref.path)
    return BatchObservation(site, batch, "unverified", content, fingerprint, problems)


def observe_landing(
    scan: LandingScan,
    cursor: LandingCursor,
    ingested: Mapping[str, Mapping[str, str]] | None = None,
) -> list[BatchObservation]:
    """Observe every batch of ``scan`` (sorted by site, batch).

    ``ingested``: site -> batch -> content-hash prefix already materialized by ingest
    (:func:`ingested_batches`).
    """
    out = []
    for ref in sorted(scan.batches, key=lambda r: (r.site, r.batch)):
        done = (ingested or {}).get(ref.site, {}).get(ref.batch)
        known = cursor.requested.get(ref.site, {}).get(ref.batch) or done
        quarantined = cursor.quarantined.get(f"{ref.site}/{ref.batch}")
        obs = observe_batch(ref, known_hash=known, quarantined_fp=quarantined)
        if done and obs.state == "ready" and str(obs.content_hash).startswith(done):
            obs = replace(obs, ingested=True)
        out.append(obs)
    return out


def sites_to_look_up(scan: LandingScan, cursor: LandingCursor) -> list[str]:
    """Sites with a ready batch the cursor does not know (only those need an instance query)."""
    unknown = (r for r in scan.batches if r.batch not in cursor.requested.get(r.site, {}))
    return sorted({r.site for r in unknown if r.ready})


def plan_tick(
    observations: Sequence[BatchObservation],
    cursor: LandingCursor,
    *,
    known_sites: Collection[str],
    now: float,
    quarantine_after_s: float,
    refused: Sequence[LandingError] = (),
) -> TickPlan:
    """Decide runs, new partitions and quarantines from this tick's observations.

    Pure: no file or instance access. ``now`` is epoch seconds; ``known_sites`` the existing
    partitions of the study.
    """
    requested = {s: dict(b) for s, b in cursor.requested.items()}
    pending, quarantined = {}, {}
    new_batches: dict[str, list[tuple[str, str]]] = {}
    quarantines, notes = [], []
    seen: set[tuple[str, str]] = set()
    for obs in observations:
        seen.add((obs.site, obs.batch))
        if obs.state == "ready":
            _plan_ready(obs, requested, new_batches, notes)
        elif obs.state == "unverified":
            q = _plan_unverified(obs, cursor, now, quarantine_after_s, pending, quarantined)
            if q is not None:
                quarantines.append(q)
    requested = {s: {b: h for b, h in bs.items() if (s, b) in seen} for s, bs in requested.items()}
    ready_sites = {o.site for o in observations if o.state == "ready"}
    ids = {hashlib.sha256(str(e).encode()).hexdigest()[:12]: e for e in refused}
    cursor_out = LandingCursor(
        requested={s: bs for s, bs in requested.items() if bs},
        pending=pending,
        quarantined=quarantined,
        refused=tuple(sorted(ids)),
    )
    return TickPlan(
        runs=tuple(SiteRun(s, tuple(b)) for s, b in sorted(new_batches.items())),
        new_sites=tuple(sorted(ready_sites - set(known_sites))),
        quarantines=tuple(quarantines),
        refused=tuple(str(e) for i, e in sorted(ids.items()) if i not in cursor.refused),
        notes=tuple(notes),
        cursor=cursor_out,
    )


def _plan_ready(
    obs: BatchObservation,
    requested: dict[str, dict[str, str]],
    new_batches: dict[str, list[tuple[str, str]]],
    notes: list[str],
) -> None:
    assert obs.content_hash is not None
    short = obs.content_hash[:HASH_PREFIX]
    site = requested.setdefault(obs.site, {})
    if site.get(obs.batch) == short:
        return
    twin = next((b for b, h in sorted(site.items()) if h == short and b != obs.batch), None)
    site[obs.batch] = short
    if obs.ingested:
        notes.append(f"{obs.key}: content {short} is already ingested; no run")
    elif twin is not None:
        notes.append(f"{obs.key}: same content as batch {twin!r} ({short}); no run")
    else:
        new_batches.setdefault(obs.site, []).append((obs.batch, obs.content_hash))


def _plan_unverified(
    obs: BatchObservation,
    cursor: LandingCursor,
    now: float,
    quarantine_after_s: float,
    pending: dict[str, int],
    quarantined: dict[str, str],
) -> Quarantine | None:
    assert obs.fingerprint is not None
    if cursor.quarantined.get(obs.key) == obs.fingerprint:
        quarantined[obs.key] = obs.fingerprint  # unchanged since quarantined: leave it
        return None
    first = cursor.pending.get(obs.key, int(now))
    if now - first < quarantine_after_s:
        pending[obs.key] = first
        return None
    quarantined[obs.key] = obs.fingerprint
    return Quarantine(
        obs.site,
        obs.batch,
        obs.content_hash,
        obs.fingerprint,
        obs.problems,
        first,
        int(now),
        quarantine_after_s,
    )


def _write_json(path: Path, doc: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_quarantine_record(
    quarantine_root: Path, q: Quarantine, *, landing_root: Path, landing_dir: str
) -> Path:
    """Write ``<quarantine_root>/landing/<landing_dir>/<partition>/<batch>.json`` (replacing an
    older record). The landed batch is not touched; the record says why it was not ingested and
    how to fix it."""
    doc = {
        "study": landing_dir,
        "site": q.site,
        "batch": q.batch,
        "batch_dir": str(landing_root / landing_dir / q.site / q.batch),
        "check": "manifest_unreadable" if q.content_hash is None else "manifest_not_verified",
        "content_hash": q.content_hash,
        "fingerprint": q.fingerprint,
        "first_seen_utc": datetime.fromtimestamp(q.first_seen, UTC).isoformat(),
        "quarantined_utc": datetime.fromtimestamp(q.now, UTC).isoformat(),
        "grace_period_s": q.grace_s,
        "n_problems": len(q.problems),
        "problems": [{"file": f, "problem": p, "fix": x} for f, p, x in q.problems[:MAX_PROBLEMS]],
        "action": "not requested by the landing sensor; landed files untouched. Re-send the "
        "batch (files, then manifest.json last); it is looked at again when any file changes.",
    }
    return _write_json(quarantine_root / "landing" / landing_dir / q.site / f"{q.batch}.json", doc)


def write_refused_names(
    quarantine_root: Path, refused: Sequence[LandingError], landing_dir: str
) -> Path:
    """List the landing directories refused for unsafe names (the whole current list)."""
    doc = [{"name": e.path, "problem": e.message, "fix": e.fix} for e in refused]
    return _write_json(quarantine_root / "landing" / landing_dir / REFUSED_FILE, doc)
