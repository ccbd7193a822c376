"""Provenance of an audit and the bundle the package stage is built from (any study).

:class:`Provenance` is carried from ingest (the content hash of every landed batch as ingest read
it, whether any was simulated) and from the evidence stage (the partitions left out of the
cross-partition audit and why); nothing re-reads the landing folder to reconstruct it.
:class:`AuditBundle` is the package asset's single input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from clinaudit.audit.policy_base import PolicyBase
from clinaudit.audit.records import ModelRef, TableSet
from clinaudit.audit.types import AuditInputError

__all__ = ["AuditBundle", "PolicyMismatchError", "Provenance", "check_policy"]


class PolicyMismatchError(ValueError):
    """The audit tables were computed under another policy than the one configured now
    (re-run the stage under the configured policy, or configure the policy used)."""


@dataclass(frozen=True)
class Provenance:
    """Which landed data an audit used, as ingest recorded it.

    Attributes
    ----------
    batches : mapping of str to str
        ``"<landing_dir>/<partition>/<batch>"`` -> manifest content hash of every batch that
        contributed rows to the audit (sha256 over each file's sha256, so byte-for-byte); the
        batches of partitions left out are not listed.
    simulated : bool
        Any contributing batch was landed as simulated: every page says so.
    partitions : tuple of str
        Partitions with validated rows in the audit.
    left_out : mapping of str to str
        Partition -> why it is not part of the cross-partition audit (stale or mismatched
        predictions, no rows): named in the signed report.
    """

    batches: Mapping[str, str]
    simulated: bool
    partitions: tuple[str, ...]
    left_out: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_ingest(
        cls,
        landing_dir: str,
        batches: Mapping[str, pd.DataFrame],
        left_out: Mapping[str, str] | None = None,
    ) -> Provenance:
        """From each partition's batch records (``validation.ingest_loop.BATCH_COLUMNS``).

        The batches of partitions in ``left_out`` are not inputs of the audit's numbers: they are
        not listed (the report names the partition and why instead); any simulated batch still
        marks the audit simulated.
        """
        hashes: dict[str, str] = {}
        simulated, partitions = False, []
        for partition in sorted(batches):
            frame = batches[partition]
            used = frame[(frame["status"] == "ingested") & (frame["n_rows_ok"] > 0)]
            simulated |= bool(used["simulated"].astype(bool).any())
            if partition in (left_out or {}):
                continue
            for row in used.sort_values("batch").itertuples(index=False):
                hashes[f"{landing_dir}/{partition}/{row.batch}"] = str(row.content_hash)
            if len(used):
                partitions.append(partition)
        return cls(hashes, simulated, tuple(partitions), dict(sorted((left_out or {}).items())))


@dataclass(frozen=True)
class AuditBundle:
    """Everything a study's report is built from (the package asset's single input).

    ``mitigations``: mitigation name -> its table set, in the study's order; ``quarantine``:
    partition -> quarantine records; ``cohort``: the cohort summary.
    """

    study: str
    title: str
    evidence: TableSet
    mitigations: Mapping[str, TableSet]
    decisions: TableSet
    monitoring: TableSet
    cohort: pd.DataFrame
    quarantine: Mapping[str, pd.DataFrame]
    policy: PolicyBase
    model: ModelRef
    provenance: Provenance

    def stage_sets(self) -> dict[str, TableSet]:
        """Every table set of the audit by stage name (``mitigation_<name>`` for mitigations)."""
        return {
            "evidence": self.evidence,
            **{f"mitigation_{k}": v for k, v in self.mitigations.items()},
            "decisions": self.decisions,
            "monitoring": self.monitoring,
        }

    def quarantine_table(self) -> pd.DataFrame:
        """Every partition's quarantine records in one table (partitions sorted)."""
        frames = [self.quarantine[k] for k in sorted(self.quarantine) if len(self.quarantine[k])]
        if frames:
            return pd.concat(frames, ignore_index=True)
        first = next(iter(self.quarantine.values()), pd.DataFrame())
        return first.iloc[:0]


def check_policy(bundle: AuditBundle, *, study: str) -> None:
    """Refuse a bundle whose stages ran under another policy than ``bundle.policy``.

    Raises
    ------
    PolicyMismatchError
        Naming the stage to re-materialize and both hashes.
    """
    for stage, tables in bundle.stage_sets().items():
        used: Any = tables.facts.get("policy_sha256")
        if used is None:
            raise AuditInputError(
                f"{stage}.facts",
                "no policy_sha256",
                "the sha256 of the policy the stage ran under",
                "materialize the stage through the pipeline (it records the policy)",
            )
        if used != bundle.policy.sha256:
            raise PolicyMismatchError(
                f"{study}/{stage} was computed under policy {used} but the configured policy is "
                f"{bundle.policy.sha256} ({bundle.policy.source}): re-materialize {study}/{stage} "
                "and what follows it under the configured policy, or configure the policy used"
            )
