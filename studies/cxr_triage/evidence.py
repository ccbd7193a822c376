"""The evidence of study ``cxr_triage`` as one :class:`~clinaudit.audit.records.TableSet`.

Tables: ``certificate``, ``temperature`` and ``flag`` (one row each: the frozen results of
``audit/selective.py`` as columns), ``subgroups``, ``rows`` (every test and pile study with its
bucket), ``test_outcomes``, ``discrimination``, ``calibration``, ``reliability``, ``label_plan``,
``throughput`` (the policy comparison), ``curves`` and ``verdict``. Facts: the settings and
checks of :func:`~clinaudit.studies.cxr_triage.certify.certify_triage` and how the backlog of the
throughput simulation was built. :func:`certification_of` rebuilds the typed result, so the
decision, monitoring and memo stages read exactly what the evidence stage stored.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from clinaudit.audit.records import TableSet
from clinaudit.audit.selective import Certificate, FlagRule, TemperatureFit
from clinaudit.audit.selective_groups import LabelPlan

from .backlog import audit_order, backlog_audit, reread_monitor
from .certify import TriageCertification
from .policy import TriagePolicy
from .throughput import Throughput, double_verdict

__all__ = ["certification_of", "evidence_tableset"]


def _one_row(obj: Any) -> pd.DataFrame:
    values = {k: (math.nan if v is None else v) for k, v in dataclasses.asdict(obj).items()}
    return pd.DataFrame([values])


def _record(cls: type, frame: pd.DataFrame, optional: tuple[str, ...] = ()) -> Any:
    row = frame.iloc[0].to_dict()
    for name in optional:
        if isinstance(row[name], float) and math.isnan(row[name]):
            row[name] = None
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    return cls(**{k: (int(v) if fields[k] == "int" else v) for k, v in row.items()})


def evidence_tableset(
    cert: TriageCertification,
    throughput: Throughput,
    *,
    simulated: bool,
    left_out: Mapping[str, str],
    settings: Mapping[str, Any],
    policy: TriagePolicy,
) -> TableSet:
    """Everything the later stages and the memo need, typed as tables and facts.

    ``audit_sample``: the first backlog studies in the audit order
    (:func:`~clinaudit.studies.cxr_triage.backlog.audit_order`, a random sample), as many as the
    labelling plan says a certificate needs (all of the backlog when it is smaller): the studies
    to have read and labelled to check the certificate on the backlog itself. It stays with the
    evidence tables (it names images) and is not printed in the memo, which states its size.
    ``backlog_audit`` (outcomes of the read sample, facts ``backlog_audit``) and
    ``reread_monitor`` judge the current rule on the reads landed so far (:mod:`.backlog`).
    """
    sample = _audit_sample(cert)
    audit, audit_facts = backlog_audit(cert.rows, sample, ci_level=policy.calibration.ci_level)
    monitor = reread_monitor(cert.rows, cert, policy, auto_clear=cert.certificate.certified)
    critical = cert.temperature_critical
    fitted = cert.temperature or TemperatureFit(math.nan, 0, math.nan, math.nan)
    temperature = _one_row(fitted).assign(
        critical_temperature=critical.temperature if critical else math.nan
    )
    facts = {
        **cert.facts,
        "simulated": simulated,
        "backlog_audit": audit_facts,
        "left_out": dict(left_out),
        "settings": dict(settings),
        "throughput": {
            "n_landed": throughput.n_landed,
            "n_pile": throughput.n_pile,
            "resampled": throughput.resampled,
            "n_inflow": throughput.n_inflow,
            "inflow_days": throughput.inflow_days,
        },
    }
    tables = {
        "certificate": _one_row(cert.certificate),
        "temperature": temperature,
        "flag": _one_row(cert.flag),
        "subgroups": cert.subgroups,
        "rows": cert.rows,
        "test_outcomes": cert.test_outcomes,
        "discrimination": cert.discrimination,
        "calibration": cert.calibration,
        "reliability": cert.reliability,
        "label_plan": _one_row(cert.label_plan),
        "throughput": throughput.table,
        "curves": throughput.curves,
        "verdict": double_verdict(throughput.table),
        "audit_sample": sample,
        "backlog_audit": audit,
        "reread_monitor": monitor,
    }
    return TableSet(tables, facts)


def _audit_sample(cert: TriageCertification) -> pd.DataFrame:
    pile = cert.rows[cert.rows["split"] == "pile"]
    n = min(int(cert.label_plan.studies), len(pile))
    rank = audit_order(pile["site"].astype(str), pile["image_id"].astype(str))
    picked = pile.iloc[np.argsort(rank)[:n]]
    cols = [c for c in ("image_id", "site", "batch", "bucket") if c in picked.columns]
    return picked[cols].reset_index(drop=True).assign(audit_rank=np.arange(n))


def certification_of(evidence: TableSet) -> TriageCertification:
    """The typed certification stored in ``evidence`` (the inverse of the tables above)."""
    temp = evidence["temperature"]
    crit_t = float(temp["critical_temperature"].iloc[0])
    critical = (
        None
        if math.isnan(crit_t)
        else TemperatureFit(crit_t, 0, math.nan, math.nan)  # only T is used downstream
    )
    fitted = _record(TemperatureFit, temp.drop(columns="critical_temperature"))
    return TriageCertification(
        temperature=None if math.isnan(fitted.temperature) else fitted,
        temperature_critical=critical,
        certificate=_record(Certificate, evidence["certificate"], ("threshold",)),
        flag=_record(FlagRule, evidence["flag"], ("threshold",)),
        subgroups=evidence["subgroups"],
        rows=evidence["rows"],
        test_outcomes=evidence["test_outcomes"],
        discrimination=evidence["discrimination"],
        calibration=evidence["calibration"],
        reliability=evidence["reliability"],
        label_plan=_record(LabelPlan, evidence["label_plan"]),
        facts={k: v for k, v in evidence.facts.items() if k not in ("throughput", "backlog_audit")},
    )
