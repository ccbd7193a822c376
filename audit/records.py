"""Typed data between pipeline stages: table sets and small frozen records.

Stages hand each other pandera-checked DataFrames, :class:`TableSet` bundles (named tables, the
settings and facts that produced them, evidence files) and frozen :class:`Record` dataclasses
(:class:`ModelRef`: what is audited). The IO manager stores all three without pickle: tables as
Parquet, facts and records as JSON with their type name, files as bytes, so a later stage never
re-opens the landing folder or re-loads a model package for metadata an earlier stage recorded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import pandas as pd

from .types import AuditInputError

__all__ = ["ModelRef", "Record", "TableSet", "facts_json", "record_from_json", "record_to_json"]


def facts_json(facts: Mapping[str, Any]) -> str:
    """Canonical JSON of JSON-serialisable facts (sorted keys; NaN kept as ``NaN``)."""
    return json.dumps(_plain(dict(facts)), sort_keys=True, indent=1, allow_nan=True) + "\n"


def _plain(value: Any) -> Any:
    """Numpy scalars, tuples and nested mappings as plain JSON values."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        return value.item()  # numpy scalar
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    raise TypeError(
        f"fact value {value!r} ({type(value).__name__}) is not JSON-serialisable; store numbers, "
        "text, booleans, lists or mappings of them"
    )


@dataclass(frozen=True)
class TableSet:
    """The output of an audit stage: named tables, the facts that produced them, evidence files.

    Attributes
    ----------
    tables : mapping of str to DataFrame
        The stage's tables by name (each checked by its producer's schema).
    facts : mapping
        JSON-serialisable settings the numbers were computed with (bootstrap replicates,
        thresholds, cut-offs, multiplicity method) and summary facts (sites left out and why).
        Reports print these, never a config's defaults.
    files : mapping of str to bytes
        Evidence files produced by the stage (``metrics.json``, ``recalibration_maps.json``):
        asset outputs, embedded in the package as they were produced.

    Examples
    --------
    >>> ts = TableSet({"metrics": pd.DataFrame({"auroc": [0.8]})}, {"n_boot": 1000})
    >>> ts["metrics"].shape, ts.facts["n_boot"]
    ((1, 1), 1000)
    """

    tables: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    facts: Mapping[str, Any] = field(default_factory=dict)
    files: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in (*self.tables, *self.files):
            if not name or "/" in name or name.startswith("."):
                raise AuditInputError(
                    "name", repr(name), "a simple file name", "name tables and files plainly"
                )
        bad = [k for k, v in self.tables.items() if not isinstance(v, pd.DataFrame)]
        if bad:
            raise AuditInputError(
                "tables", f"non-DataFrame values for {bad}", "DataFrames", "pass DataFrames"
            )
        facts_json(self.facts)  # refuse facts that would not survive storage

    def __getitem__(self, name: str) -> pd.DataFrame:
        try:
            return self.tables[name]
        except KeyError:
            raise AuditInputError(
                "table", repr(name), f"one of {sorted(self.tables)}", "name a table of this stage"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self.tables

    def digest(self) -> str:
        """sha256 over every table's content and dtypes, the facts and the files: the stage's
        data version (it changes exactly when what the stage produced changes)."""
        h = hashlib.sha256()
        for name in sorted(self.tables):
            frame = self.tables[name]
            h.update(
                f"table {name} {list(frame.columns)} {[str(t) for t in frame.dtypes]}".encode()
            )
            h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
        for name in sorted(self.files):
            h.update(f"file {name}".encode() + hashlib.sha256(self.files[name]).digest())
        h.update(facts_json(self.facts).encode())
        return h.hexdigest()

    def with_facts(self, **facts: Any) -> TableSet:
        """The same tables and files with ``facts`` added (replacing same-named facts)."""
        return TableSet(self.tables, {**self.facts, **facts}, self.files)

    def fact(self, name: str) -> Any:
        """``facts[name]``, with an error naming the recorded facts when absent."""
        try:
            return self.facts[name]
        except KeyError:
            raise AuditInputError(
                "fact", repr(name), f"one of {sorted(self.facts)}", "record it in the stage"
            ) from None


# --------------------------------------------------------------------------- records
_RECORD_TYPES: dict[str, type[Record]] = {}


@dataclass(frozen=True)
class Record:
    """Base of the small frozen records stages exchange (stored as JSON with their type name).

    Fields hold JSON values: text, numbers, booleans, tuples and mappings of them. Subclasses are
    registered by name when defined, so only known record types are ever rebuilt from storage.
    """

    TYPE: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.TYPE = f"{cls.__module__}:{cls.__qualname__}"
        _RECORD_TYPES[cls.TYPE] = cls

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise AuditInputError(
                cls.__name__, f"fields {unknown}", f"fields {sorted(names)}", "re-materialize it"
            )
        kwargs = {}
        for name, value in values.items():
            origin = typing.get_origin(hints[name])
            kwargs[name] = tuple(value) if origin is tuple and isinstance(value, list) else value
        return cls(**kwargs)


def record_to_json(record: Record) -> str:
    """``{"type": ..., "fields": ...}`` as canonical JSON."""
    doc = {"type": type(record).TYPE, "fields": record.to_dict()}
    # Insertion order kept: a record's mappings (a model card) print in the order they were made.
    return json.dumps(doc, indent=1, allow_nan=True) + "\n"


def record_from_json(text: str) -> Record:
    """Rebuild a record written by :func:`record_to_json` (registered types only)."""
    doc = json.loads(text)
    name = doc.get("type", "")
    if name not in _RECORD_TYPES:
        module = name.partition(":")[0]
        if module.startswith("clinaudit."):  # import the defining module once, then look again
            importlib.import_module(module)
    cls = _RECORD_TYPES.get(name)
    if cls is None:
        raise AuditInputError(
            "record type", repr(name), f"one of {sorted(_RECORD_TYPES)}", "re-materialize it"
        )
    return cls.from_dict(doc["fields"])


@dataclass(frozen=True)
class ModelRef(Record):
    """What an audit evaluates, recorded once by the model stage.

    Attributes
    ----------
    study, kind : str
        The study and the model kind (``image_multilabel``, ``tabular``, ...).
    mode : {"package", "scores", "embedded"}
        A vendor package, vendor scores files, or the embedded model trained by clinaudit.
    identity : str
        sha256 of what is audited: the package's sha256, or (scores) a hash over the scores
        files' sha256s. Manifests and reports cite it.
    source : str
        The package folder, scores folder or scores file.
    targets : tuple of str
        Outputs of the model, in order.
    thresholds : mapping of str to float
        Operating threshold per target (``score >= threshold`` is positive).
    threshold_source : str
        Where the thresholds come from, in words (printed in the report).
    card : mapping
        Model-card facts for the report (vendor, intended use, architecture, validation, ...).
    scores_files : mapping of str to str
        Scores mode: partition -> sha256 of its scores file (``"*"`` when one file serves every
        partition); each partition's predictions must carry its own file's hash.
    facts : mapping
        Other facts of the stage (held-out AUROC, training time, reuse) for metadata.
    """

    study: str
    kind: str
    mode: str
    identity: str
    source: str
    targets: tuple[str, ...]
    thresholds: Mapping[str, float]
    threshold_source: str
    card: Mapping[str, Any] = field(default_factory=dict)
    scores_files: Mapping[str, str] = field(default_factory=dict)
    facts: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in ("package", "scores", "embedded"):
            raise AuditInputError(
                "mode", repr(self.mode), "'package', 'scores' or 'embedded'", "fix the model stage"
            )
        missing = [t for t in self.targets if t not in self.thresholds]
        if missing or any(not math.isfinite(float(v)) for v in self.thresholds.values()):
            raise AuditInputError(
                "thresholds",
                f"{dict(self.thresholds)}",
                f"a finite threshold for every target {list(self.targets)}",
                "take them from the model card or the configured threshold",
            )

    def version(self) -> str:
        """Data version of the model stage: the identity, and for vendor scores also the
        operating thresholds (a new thresholds file or derivation rule re-audits)."""
        if self.mode != "scores":
            return self.identity
        doc = json.dumps({k: float(v) for k, v in sorted(self.thresholds.items())})
        return f"{self.identity}+thresholds:{hashlib.sha256(doc.encode()).hexdigest()[:16]}"

    def partition_identity(self, partition: str) -> str:
        """What every prediction of ``partition`` must carry as ``model_sha256``.

        The package sha256; in scores mode the sha256 of that partition's scores file
        (``scores_files[partition]``, or ``scores_files["*"]`` when one file serves every
        partition).
        """
        if self.mode != "scores":
            return self.identity
        digest = self.scores_files.get(partition) or self.scores_files.get("*")
        if digest is None:
            raise AuditInputError(
                "scores",
                f"no scores file for {partition!r} among {sorted(self.scores_files)}",
                f"one scores file per {partition!r}",
                f"add {partition}.csv to {self.source} and re-materialize the model stage",
            )
        return digest
