"""The study protocol: what one study supplies to the generic pipeline (no Dagster here).

Every study runs the same stages, one Dagster asset each, built by
``clinaudit.assets.factory.build_study_assets``::

    landing/<landing_dir>/<partition>/<batch>/
      -> ingest (per partition: validated + quarantine + batches, checks)  study.ingest_batch
      -> cohort (all partitions)                                            study.cohort
      -> model (what is audited: a ModelRef)                                study.resolve_model
      -> predictions (per partition)                                        study.predict
      -> [partition metrics (per partition), optional]                      study.partition_metrics
      -> evidence (all partitions: a TableSet)                              study.evaluate
      -> mitigation_<name> (one per MitigationStage, may be none)           stage.run
      -> decisions (a TableSet)                                             study.decide
      -> monitoring (a TableSet)                                            study.monitor
      -> package (signed, verified)                                         study.report

A study subclasses :class:`Study`, sets the class attributes and implements the methods; it
imports the generic core (``audit``, ``models``, ``sources``, ``validation``, ``reporting``) and
never Dagster. ``clinaudit.studies.register_study`` makes it known to the code location, the
runner and the CLI.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

import pandas as pd

from clinaudit.audit.policy_base import PolicyBase
from clinaudit.audit.records import ModelRef, TableSet
from clinaudit.reporting.audit_summary import CriterionOutcome
from clinaudit.reporting.package import AuditStamp
from clinaudit.reporting.provenance import AuditBundle
from clinaudit.reporting.study_package import ReportContent
from clinaudit.sources.landing import BatchRef
from clinaudit.validation.ingest_loop import BatchIngest, PartitionIngest

__all__ = [
    "AuditData",
    "CheckOutcome",
    "CheckSpec",
    "CriterionOutcome",
    "IngestOptions",
    "Log",
    "MitigationStage",
    "ModelSpec",
    "ReportContent",
    "RunDirs",
    "SimSummary",
    "Study",
]

Log = Callable[[str], None]


@dataclass(frozen=True)
class RunDirs:
    """The run-time directories a stage may use (read from the ``home`` resource)."""

    landing: Path
    artifacts: Path
    quarantine: Path
    reports: Path
    keys: Path


@dataclass(frozen=True)
class ModelSpec:
    """What to audit and how to run it (the ``<study>_model`` resource, as plain values).

    ``package_dir``: a vendor model package; ``scores``: vendor scores (a folder of
    ``<partition>.csv`` or one file); neither: the study's embedded model. ``threshold``: the
    operating threshold of scores that come without a card; ``thresholds``: a JSON file of the
    vendor's operating threshold per target (scores of a multi-output model). ``training``:
    study-specific settings of the embedded model (architecture, epochs, scale, ...).
    """

    package_dir: str | None = None
    scores: str | None = None
    threshold: float | None = None
    thresholds: str | None = None
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None
    num_workers: int | None = None
    seed: int = 0
    training: Mapping[str, Any] = field(default_factory=dict)

    def training_settings(self, study: str, known: Sequence[str]) -> dict[str, Any]:
        """``training``, after refusing settings the study's embedded model does not have.

        Raises
        ------
        ValueError
            Naming the unknown settings and the known ones.
        """
        unknown = sorted(set(self.training) - set(known))
        if unknown:
            raise ValueError(
                f"model training settings {unknown} are not known to {study}; use {list(known)}"
            )
        return dict(self.training)

    @property
    def mode(self) -> Literal["package", "scores", "embedded"]:
        if self.package_dir and self.scores:
            raise ValueError(
                "model: both package_dir and scores are set; audit either a model package or "
                "vendor scores, not both"
            )
        return "package" if self.package_dir else "scores" if self.scores else "embedded"


@dataclass(frozen=True)
class IngestOptions:
    """Ingest settings every study has; a study's ``ingest_options`` subclasses it.

    ``max_quarantine_rate``: the largest share of received rows that may be quarantined before
    the partition's quarantine-rate check warns.
    """

    max_quarantine_rate: float = 0.02


@dataclass(frozen=True)
class CheckSpec:
    """An ingest check of the study, declared up front (Dagster needs the names before a run)."""

    name: str
    description: str
    blocking: bool = False


@dataclass(frozen=True)
class CheckOutcome:
    """The result of one declared check for one partition.

    ``severity``: ``"error"`` blocks the partition's later stages (only for a blocking check),
    ``"warn"`` is shown; ``metadata``: JSON-able facts or markdown (``str`` values starting with
    ``"|"`` or ``"#"`` are shown as markdown).
    """

    name: str
    passed: bool
    severity: Literal["error", "warn"] = "error"
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditData:
    """Everything the cross-partition stages read: per partition the validated table, its
    predictions, what ingest read (batch records) and its quarantine records, and the audited
    model. ``reports``: root of the signed packages (``<reports>/<study>/<audit_id>/``), given to
    the evidence stage so a study can score what an earlier package froze (read only through
    :func:`clinaudit.reporting.prior_packages.signed_attachments`); ``None`` elsewhere.
    ``landing``: root of the landing area, given to the evidence stage for studies whose evidence
    re-reads landed pixels (e.g. localization maps; bytes checked against ingest's hashes);
    ``None`` elsewhere."""

    validated: Mapping[str, pd.DataFrame]
    predictions: Mapping[str, pd.DataFrame]
    model: ModelRef
    batches: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    quarantine: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    reports: Path | None = None
    landing: Path | None = None

    @property
    def simulated(self) -> bool:
        """Any ingested batch was landed as simulated."""
        return any(
            bool(b.loc[b["status"] == "ingested", "simulated"].astype(bool).any())
            for b in self.batches.values()
        )


@dataclass(frozen=True)
class MitigationStage:
    """One mitigation of a study: its own asset ``<study>/mitigation_<name>``.

    ``run(evidence, data, *, policy, options, dirs, log, run_id) -> TableSet``; ``options`` is an
    instance of ``options_type`` (a frozen dataclass whose fields become the stage's run config).
    ``cadence``: ``"on_change"`` re-runs with every re-audit; ``"nightly"`` (minutes of work that
    never changes a decision by itself) re-runs once a night.
    """

    name: str
    run: Callable[..., TableSet]
    description: str
    options_type: type | None = None
    cadence: Literal["on_change", "nightly"] = "on_change"


@dataclass(frozen=True)
class SimSummary:
    """What a simulator landed: rows per partition, and a line for the console (``what``: what
    the batches are, e.g. "radiologist reads of site_f")."""

    partitions: Mapping[str, int]
    unit: str
    seconds: float = 0.0
    what: str = ""


class Study(ABC):
    """A study on the generic pipeline (see the module docstring for the stage graph).

    Class attributes
    ----------------
    name : str
        Asset group, asset key prefix, report folder and the stem of the environment variables
        (``CLINAUDIT_<NAME>_MODEL``, ``_SCORES``, ``_THRESHOLD``, ``_POLICY``).
    title : str
        Title of the study's report.
    unit : str
        What one validated row is (``"image"``, ``"stay"``).
    partition_by : str
        What a partition is (``"site"``, ``"hospital"``): one dynamic partition each.
    landing_dir : str
        Sub-folder of the landing area (default ``name``).
    targets : tuple of str
        The model's outputs.
    model_kind : str
        Key of the model kind (``image_multilabel``, ``tabular``).
    policy_type : type of PolicyBase
        The study's policy dataclass.
    reference_partition : str or None
        Partition the embedded model is trained on (its validated table is an input of the
        model stage), or ``None``.
    reference_partitions : tuple of str
        Several partitions the embedded model is trained on (their validated tables, in this
        order, are concatenated into the model stage's ``reference``); overrides
        ``reference_partition`` when set (e.g. the development clinics of a study with a
        held-out clinic).
    ingest_checks : tuple of CheckSpec
        Study checks of each partition's ingest, besides the generic ones.
    mitigations : tuple of MitigationStage
        The study's mitigations, in order (may be empty).
    ingest_options : type of IngestOptions
        Frozen dataclass of the ingest settings (its fields become Dagster run config).
    evaluate_options : type or None
        Frozen dataclass of the evidence stage's settings (fields become run config).
    sort_by : tuple of str
        Columns a partition's validated table is sorted by (stable; default the batch).
    page_budget : (int, int)
        Fewest and most pages of the report at the demo scale (checked by the contract tests).
    identifiers : tuple of str
        Landing columns that identify people: none of their values may appear in a report.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    unit: ClassVar[str]
    partition_by: ClassVar[str]
    landing_dir: ClassVar[str] = ""
    targets: ClassVar[tuple[str, ...]]
    model_kind: ClassVar[str]
    policy_type: ClassVar[type[PolicyBase]]
    reference_partition: ClassVar[str | None] = None
    reference_partitions: ClassVar[tuple[str, ...]] = ()
    ingest_checks: ClassVar[tuple[CheckSpec, ...]] = ()
    mitigations: ClassVar[tuple[MitigationStage, ...]] = ()
    ingest_options: ClassVar[type[IngestOptions]] = IngestOptions
    evaluate_options: ClassVar[type | None] = None
    sort_by: ClassVar[tuple[str, ...]] = ("batch",)
    page_budget: ClassVar[tuple[int, int]] = (1, 20)
    identifiers: ClassVar[tuple[str, ...]] = ()
    #: Name of the policy file inside the package and in its manifest's inputs.
    policy_attachment: ClassVar[str] = "policy"
    #: The predictions stage also reads the partition's quarantine records and passes them to
    #: ``predict`` as ``quarantine=`` (a DataFrame): for studies whose scores files may score
    #: rows quarantined at ingest (set them aside, see ``models.scores_csv.read_scores``) or
    #: that explain a partition whose table was refused.
    predict_reads_quarantine: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("landing_dir") and "name" in cls.__dict__:
            cls.landing_dir = cls.name

    @classmethod
    def training_partitions(cls) -> tuple[str, ...]:
        """The partitions whose validated tables the model stage reads (may be none)."""
        if cls.reference_partitions:
            return tuple(cls.reference_partitions)
        return () if cls.reference_partition is None else (cls.reference_partition,)

    # ------------------------------------------------------------------ policy
    def shipped_policy(self) -> Path:
        """The policy file shipped in the study's package (``policy.yaml``)."""
        return Path(str(resources.files(type(self).__module__.rpartition(".")[0]))) / "policy.yaml"

    def load_policy(self, path: str | Path | None = None) -> PolicyBase:
        """The study's policy from ``path``, else the shipped one (strictly validated)."""
        return self.policy_type.load(path or self.shipped_policy())

    # ------------------------------------------------------------------ options
    @staticmethod
    def options(options_type: type | None, values: Mapping[str, Any] | None = None) -> Any:
        """An instance of ``options_type`` from run-config ``values`` (defaults elsewhere)."""
        if options_type is None:
            return None
        names = {f.name for f in dataclasses.fields(options_type)}
        unknown = sorted(set(values or {}) - names)
        if unknown:
            raise ValueError(
                f"settings {unknown} are not options of {options_type.__name__}; use "
                f"{sorted(names)}"
            )
        return options_type(**dict(values or {}))

    # ------------------------------------------------------------------ ingest
    @abstractmethod
    def ingest_batch(self, batch: BatchRef, *, key: bytes, options: Any) -> BatchIngest:
        """Read, verify and validate one ready landed batch.

        Row problems become quarantine records (the other rows proceed); a batch that cannot be
        ingested raises :class:`~clinaudit.validation.errors.BatchStructureError` (or
        ``LandingError``), which fails that batch only. Landed files are only read.
        """

    @abstractmethod
    def empty_table(self) -> pd.DataFrame:
        """The validated table's columns with no rows (a partition whose batches all failed)."""

    def finish_partition(self, ingest: PartitionIngest) -> PartitionIngest:
        """Checks across the batches of one partition (duplicates, ...); default: none."""
        return ingest

    @abstractmethod
    def privacy_problems(self, table: pd.DataFrame) -> list[str]:
        """De-identification problems of a validated table (empty: clean). A problem stops the
        partition before anything is written."""

    def check_partition(self, ingest: PartitionIngest, options: Any) -> Sequence[CheckOutcome]:
        """Outcomes of :attr:`ingest_checks` for one partition; default: none."""
        return ()

    @abstractmethod
    def cohort(
        self, validated: Mapping[str, pd.DataFrame], quarantine: Mapping[str, pd.DataFrame]
    ) -> pd.DataFrame:
        """Cohort and data-quality summary over every partition (one row per partition)."""

    # ------------------------------------------------------------------ model
    @abstractmethod
    def model_fingerprint(self, spec: ModelSpec) -> tuple[str, dict[str, Any]]:
        """Data version of what ``spec`` points at (package sha256, scores files' sha256s, or
        the embedded model's training settings) and metadata saying what was hashed. Reads
        files only: observing never trains or scores."""

    @abstractmethod
    def resolve_model(
        self,
        spec: ModelSpec,
        *,
        reference: pd.DataFrame | None,
        dirs: RunDirs,
        log: Log,
        policy: Any = None,
    ) -> ModelRef:
        """Verify (package), hash (scores) or train/reuse (embedded) what is audited.

        ``policy`` is the study's loaded policy, for rules that set operating thresholds
        (e.g. how thresholds of vendor scores without the vendor's are derived)."""

    @abstractmethod
    def predict(
        self,
        model: ModelRef,
        table: pd.DataFrame,
        *,
        partition: str,
        spec: ModelSpec,
        dirs: RunDirs,
        log: Log,
    ) -> tuple[pd.DataFrame, dict[str, Any]]:
        """Scores of every validated row of one partition (each row carries
        ``model_sha256 == model.partition_identity(partition)``), and metadata facts.

        A study with ``predict_reads_quarantine = True`` also gets ``quarantine=`` (the
        partition's ingest records, a DataFrame) as a keyword argument."""

    def partition_metrics(
        self, table: pd.DataFrame, predictions: pd.DataFrame, model: ModelRef, *, partition: str
    ) -> tuple[pd.DataFrame, dict[str, Any]] | None:
        """Optional per-partition metrics (shown when a partition's run finishes)."""
        return None

    # ------------------------------------------------------------------ audit
    @abstractmethod
    def evaluate(self, data: AuditData, *, policy: PolicyBase, options: Any) -> TableSet:
        """The evidence across partitions. ``facts["left_out"]``: partition -> why it is not in
        the audit (named in the signed report); ``facts["settings"]``: what the numbers used."""

    @abstractmethod
    def decide(
        self, evidence: TableSet, mitigations: Mapping[str, TableSet], *, policy: PolicyBase
    ) -> TableSet:
        """Decisions under ``policy`` (``Decision`` values) and the criteria behind them."""

    @abstractmethod
    def monitor(
        self,
        evidence: TableSet,
        mitigations: Mapping[str, TableSet],
        decisions: TableSet,
        data: AuditData,
        *,
        policy: PolicyBase,
    ) -> TableSet:
        """The monitoring plan for what is deployed."""

    @abstractmethod
    def report(self, bundle: AuditBundle, stamp: AuditStamp) -> ReportContent:
        """The report HTML (every page marked SIMULATED when ``bundle.provenance.simulated``),
        its figures and the evidence attached to the package."""

    def decision_lines(self, decisions: TableSet) -> list[tuple[str, str]]:
        """``(where, text)`` lines the command line prints after an audit; default: the
        decision per partition (:meth:`decision_summary`)."""
        return sorted(self.decision_summary(decisions).items())

    def describe_stage(self, stage: str, value: Any) -> Mapping[str, Any]:
        """Extra metadata the Dagster UI shows for a stage's output (markdown text starts with
        ``"|"``, ``"#"`` or ``"!["``); default: none."""
        return {}

    def decision_summary(self, decisions: TableSet) -> dict[str, str]:
        """Partition (or ``"overall"``) -> decision text, for metadata and the console."""
        table = decisions["decisions"]
        key = "site" if "site" in table.columns else table.columns[0]
        return {str(r[key]): str(r["decision"]) for _, r in table.iterrows()}

    def decision_criteria(self, decisions: TableSet) -> list[CriterionOutcome]:
        """Every criterion behind the decisions in the study-independent form the package's
        manifest records (``where`` uses the keys of :meth:`decision_summary`); the committee
        portal compares two audits by them. Default: none declared."""
        return []

    # ------------------------------------------------------------------ demo data
    @abstractmethod
    def simulate(
        self, landing: Path, truth: Path, *, scale: str, seed: int, workers: int
    ) -> SimSummary:
        """Land the study's simulated cohort (real formats, marked simulated; batches already
        landed are kept) and write the simulator's truth under ``truth`` (tests only)."""

    def land_demo_followup(self, landing: Path, truth: Path, *, scale: str) -> SimSummary:
        """After the demo's first audit, land what arrives later in practice (e.g. the reads of
        a site that landed unlabelled); ``make demo`` then audits again so the second signed
        package shows what changed. Default: nothing (no partitions). Landed batches are kept:
        a follow-up already landed is not landed again."""
        return SimSummary({}, self.unit)
