"""The sepsis_ews input contract: what a stays table must hold, and what happens when it does not.

* the documented required / optional columns are the code's (``docs/sepsis_formats.md``);
* a scores-only audit of stays tables with only the required columns runs end to end;
* a table refused whole blocks its hospital (BLOCKED, the missing columns named) and every later
  message names the refused stays file;
* a quarantined stay never breaks the audit: its vendor score is set aside and counted;
* a model-package audit names the card features the stays table lacks.
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from sepsis_fixtures import fast_policy
from system_tools import require_tool

from clinaudit.assets.resources import ClinauditHome, read_stored
from clinaudit.audit.records import ModelRef
from clinaudit.audit.types import AuditInputError
from clinaudit.orchestration.cli import main
from clinaudit.sources.sepsis_simulator import simulate_network, write_sepsis_batch
from clinaudit.sources.sepsis_tables import (
    FEATURES,
    FORMAT_COLUMNS,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
)
from clinaudit.studies.sepsis_ews.ingest import quarantine_frame
from clinaudit.studies.sepsis_ews.model import predict_hospital
from clinaudit.studies.sepsis_ews.schema import validate_stays
from clinaudit.validation.errors import QuarantineRecord, records_to_frame

DOC = Path(__file__).resolve().parents[1] / "docs" / "sepsis_formats.md"
THRESHOLD = "0.3"


def _documented() -> dict[str, str]:
    """``column -> yes/no`` of the stays-table section's tables (last cell: required)."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## The stays table") : text.index("### Validation")]
    out = {}
    for line in section.splitlines():
        match = re.match(r"^\| `(\w+)` \|.*\| (yes|no) \|$", line)
        if match:
            out[match.group(1)] = match.group(2)
    return out


def test_the_documented_required_and_optional_columns_are_the_codes() -> None:
    documented = _documented()
    assert {c for c, r in documented.items() if r == "yes"} == set(REQUIRED_COLUMNS)
    assert {c for c, r in documented.items() if r == "no"} == set(OPTIONAL_COLUMNS)
    assert set(documented) == {*FORMAT_COLUMNS, "simulated"}
    # The scores-only minimum: no lab, no vital sign, no comorbidity index.
    assert not {"wbc", "creatinine", "bilirubin", "platelets", "comorbidity_index"} & set(
        REQUIRED_COLUMNS
    )


def test_only_required_columns_validate_and_a_present_feature_is_still_checked() -> None:
    stays = simulate_network("tiny", seed=5, months=(1,)).stays
    minimal = stays.loc[:, [*REQUIRED_COLUMNS, "heart_rate"]].head(30).copy()
    minimal["heart_rate"] = minimal["heart_rate"].astype(object)
    minimal.loc[4, "heart_rate"] = 350.0  # a present feature keeps its range check
    valid, errors = validate_stays(minimal, source="s.csv")
    assert len(valid) == 29 and "wbc" not in valid.columns and "heart_rate" in valid.columns
    bad = errors[errors["severity"] == "error"]
    assert bad[["row", "column", "check"]].values.tolist() == [
        [6, "heart_rate", "impossible_value"]
    ]
    assert bad["stay_id"].tolist() == [minimal.loc[4, "stay_id"]]
    absent = errors[errors["check"] == "absent_column"]
    assert set(absent["column"]) == set(OPTIONAL_COLUMNS) - {"simulated", "heart_rate"}
    assert (absent["severity"] == "warning").all()


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def audit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Three hospitals, scores only (one vendor file per hospital):

    * ``hosp_a``: only the required columns, one corrupt row (sepsis = 7) whose stay the vendor
      scored anyway;
    * ``hosp_b``: the full format;
    * ``hosp_c``: a table without ``sepsis`` and ``sex``: refused whole.
    """
    root = tmp_path_factory.mktemp("sepsis_contract")
    landing, scores = root / "landing", root / "scores"
    scores.mkdir()
    stays = simulate_network("tiny", seed=7, months=(1, 2, 3)).stays
    parts = {h: t.reset_index(drop=True) for h, t in stays.groupby("hospital")}
    a = parts["hosp_a"].loc[:, list(REQUIRED_COLUMNS)].astype({"sepsis": object})
    a.loc[5, "sepsis"] = 7
    corrupt = str(a.loc[5, "stay_id"])
    write_sepsis_batch(landing, a, "b1", fmt="csv")
    write_sepsis_batch(landing, parts["hosp_b"], "b1", fmt="csv")
    write_sepsis_batch(landing, parts["hosp_c"].drop(columns=["sepsis", "sex"]), "b1", fmt="csv")
    rng = np.random.default_rng(0)
    for h in ("hosp_a", "hosp_b", "hosp_c"):
        t = parts[h]
        score = np.clip(0.4 * t["sepsis"] + 0.6 * rng.random(len(t)), 0, 1)
        pd.DataFrame({"stay_id": t["stay_id"], "score": score.round(4)}).to_csv(
            scores / f"{h}.csv", index=False
        )
    out = root / "out"
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", str(out / "dagster_home"))
    policy = fast_policy(root)
    try:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            status = main(
                ["audit", "--study", "sepsis_ews", "--landing", str(landing), "--out", str(out),
                 "--predictions", str(scores), "--threshold", THRESHOLD, "--policy", str(policy),
                 "--workers", "1"]
            )  # fmt: skip
        instance = dg.DagsterInstance.get()
        evaluations = {
            (e.check_name, e.partition): e
            for run in instance.get_run_records()
            for e in _evaluations(instance, run.dagster_run.run_id)
        }
    finally:
        mp.undo()
    home = ClinauditHome(root=str(out))
    packages = sorted((out / "reports" / "sepsis_ews").iterdir())
    return {
        "status": status,
        "printed": printed.getvalue(),
        "home": home,
        "packages": packages,
        "corrupt": corrupt,
        "evaluations": evaluations,
    }


def _evaluations(instance: dg.DagsterInstance, run_id: str) -> list[dg.AssetCheckEvaluation]:
    out = []
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is not None and event.event_type_value == "ASSET_CHECK_EVALUATION":
            out.append(event.event_specific_data)
    return out


def _report_text(package: Path) -> str:
    """The signed report's text, whitespace collapsed (pdftotext, as tests/test_sepsis_assets)."""
    found = require_tool("pdftotext", "poppler-utils")
    out = subprocess.run([found, str(package / "report.pdf"), "-"], check=True, capture_output=True)
    return re.sub(r"\s+", " ", out.stdout.decode())


def test_required_columns_only_are_audited_scores_only_end_to_end(audit) -> None:
    assert len(audit["packages"]) == 1, audit["printed"]
    evidence = read_stored(audit["home"], "sepsis_ews/evidence")
    assert evidence.fact("hospitals") == ["hosp_a", "hosp_b"]
    absent = evidence.facts["intake"]["absent_features"]
    assert list(absent) == ["hosp_a"] and set(absent["hosp_a"]) == set(FEATURES) - {"age"}
    validated = read_stored(audit["home"], "sepsis_ews/validated", "hosp_a")
    assert "wbc" not in validated.columns and len(validated) > 0
    assert re.search(r"validated\s+hosp_a\s+ok", audit["printed"]), audit["printed"]


def test_a_table_refused_whole_blocks_its_hospital_naming_the_columns_and_file(audit) -> None:
    printed = audit["printed"]
    assert re.search(r"validated\s+hosp_c\s+BLOCKED", printed), printed
    check = audit["evaluations"][("batch_structure", "hosp_c")]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    problems = check.metadata["problems"].value
    assert "required column 'sepsis' is absent" in problems and "'sex'" in problems
    assert "hosp_c/b1/stays.csv" in check.metadata["reason"].value
    # Downstream: the predictions line and the report name the refused stays file, not scores.
    (skipped,) = [
        line for line in printed.splitlines() if "predictions" in line and "hosp_c" in line
    ]
    assert "hosp_c/b1/stays.csv" in skipped and "'sepsis'" in skipped
    assert "not in the stays table" not in printed
    evidence = read_stored(audit["home"], "sepsis_ews/evidence")
    why = evidence.fact("left_out")["hosp_c"]
    assert "refused at ingest" in why and "hosp_c/b1/stays.csv" in why and "'sex'" in why
    assert "refused at ingest" in _report_text(audit["packages"][0])


def test_a_quarantined_stay_sets_its_score_aside_and_the_report_says_so(audit) -> None:
    predictions = read_stored(audit["home"], "sepsis_ews/predictions", "hosp_a")
    assert audit["corrupt"] not in set(predictions["stay_id"]) and len(predictions) > 0
    evidence = read_stored(audit["home"], "sepsis_ews/evidence")
    assert evidence.facts["intake"]["rows_quarantined"] == {"hosp_a": 1}
    assert evidence.facts["intake"]["scores_set_aside"] == {"hosp_a": 1}
    assert evidence.fact("unmatched_scores") == 0
    text = _report_text(audit["packages"][0])
    assert "1 stays were quarantined at ingest (hosp_a 1" in text
    assert "their 1 vendor score(s) were set aside" in text
    assert "1 vendor score(s) of them were set aside" in text  # Table D.2, the provenance


# --------------------------------------------------------------------------- predictions stage
def _refused_quarantine() -> pd.DataFrame:
    records = [
        QuarantineRecord("hosp_c", "b1", "hosp_c/b1/stays.csv", None, c, "missing_column",
                         f"required column {c!r} is absent", "add every required column")
        for c in ("sepsis", "sex")
    ]  # fmt: skip
    return quarantine_frame(records_to_frame(records))


def _model(**changes: object) -> ModelRef:
    values = {
        "study": "sepsis_ews", "kind": "tabular", "mode": "package", "identity": "a" * 64,
        "source": "/nonexistent", "targets": ("sepsis",), "thresholds": {"sepsis": 0.3},
        "threshold_source": "model card", "card": {"features": list(FEATURES)},
    }  # fmt: skip
    return ModelRef(**{**values, **changes})


def test_the_predictions_stage_names_the_refused_stays_table_not_the_scores() -> None:
    valid, _ = validate_stays(simulate_network("tiny", seed=5, months=(1,)).stays)
    empty = valid.iloc[:0].assign(batch=pd.Series(dtype=object))
    with pytest.raises(AuditInputError, match=r"hosp_c/b1/stays\.csv.*\['sepsis', 'sex'\]"):
        predict_hospital(
            _model(mode="scores", scores_files={"*": "a" * 64}),
            empty,
            hospital="hosp_c",
            log=print,
            quarantine=_refused_quarantine(),
        )


def test_a_model_package_audit_names_the_card_features_the_stays_lack() -> None:
    valid, errors = validate_stays(
        simulate_network("tiny", seed=5, months=(1,)).stays.drop(columns=["wbc", "platelets"])
    )
    stays = valid.assign(batch="b1")
    with pytest.raises(AuditInputError, match=r"feature column\(s\) \['wbc', 'platelets'\]") as err:
        predict_hospital(_model(), stays, hospital="hosp_a", log=print, quarantine=errors)
    assert "audit the vendor's scores instead" in str(err.value)
    # A column absent from one batch only (blank after concatenation) is named as well.
    full, _ = validate_stays(simulate_network("tiny", seed=5, months=(1,)).stays)
    absent = errors[errors["column"] == "wbc"]
    with pytest.raises(AuditInputError, match=r"\['wbc'\]"):
        predict_hospital(
            _model(), full.assign(batch="b1"), hospital="hosp_a", log=print, quarantine=absent
        )
