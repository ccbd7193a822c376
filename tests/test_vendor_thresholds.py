"""Operating thresholds of scores-only audits: the vendor's thresholds file, or a stated rule.

A scores-only audit must never judge a model at an operating point nobody chose (it used to be
0.5 for every finding): the vendor's thresholds file is read and checked whole, and without one
each finding's threshold is derived on the reference test split under the policy's rule, which the
threshold source (printed on page 1 of the report) states.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clinaudit.audit.types import AuditInputError
from clinaudit.models.thresholds_file import ThresholdsFileError, read_thresholds_file
from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.studies.base import ModelSpec, RunDirs
from clinaudit.studies.multisite_cxr.model import model_fingerprint, resolve_model
from clinaudit.studies.multisite_cxr.policy import load_policy

GOOD = {f: round(0.05 + 0.05 * i, 2) for i, f in enumerate(FINDINGS)}


def _write(tmp_path: Path, doc: object, name: str = "thresholds.json") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return path


def test_a_complete_file_is_read_in_target_order_with_its_hash(tmp_path: Path) -> None:
    path = _write(tmp_path, dict(reversed(list(GOOD.items()))))
    got = read_thresholds_file(path, FINDINGS)
    assert list(got) == list(FINDINGS) and dict(got) == GOOD
    assert len(got.sha256) == 64 and "thresholds.json" in got.source()


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({k: v for k, v in GOOD.items() if k != "Hernia"}, ["no threshold for ['Hernia']"]),
        ({**GOOD, "Efusion": 0.3}, ["unknown output 'Efusion'", "did you mean 'Effusion'?"]),
        ({**GOOD, "Effusion": 1.5}, ["'Effusion': 1.5 is outside (0, 1)", "write 0.015"]),
        ({**GOOD, "Effusion": 0.0}, ["'Effusion': 0.0 is outside (0, 1)"]),
        ({**GOOD, "Effusion": "0.3"}, ["'Effusion': '0.3' is not a number"]),
        ({**GOOD, "Effusion": True}, ["'Effusion': True is not a number"]),
        ('{"Effusion": 0.3,', ["not JSON", "line 1, column"]),
        ([0.3] * 14, ["a JSON list, not an object"]),
    ],
)
def test_every_problem_of_a_thresholds_file_is_named_with_its_fix(
    tmp_path: Path, doc: object, expected: list[str]
) -> None:
    path = _write(tmp_path, doc)
    with pytest.raises(ThresholdsFileError) as err:
        read_thresholds_file(path, FINDINGS)
    text = str(err.value)
    assert text.startswith(str(path))
    for part in expected:
        assert part in text, text
    assert "fix:" in text


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    doc = {**{k: v for k, v in GOOD.items() if k != "Mass"}, "Effusion": 87, "Masss": 0.2}
    with pytest.raises(ThresholdsFileError) as err:
        read_thresholds_file(_write(tmp_path, doc), FINDINGS)
    assert len(err.value.problems) == 3, err.value.problems
    assert "percentage" in str(err.value)  # 87 -> "write 0.87"


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ThresholdsFileError, match="no such file"):
        read_thresholds_file(tmp_path / "absent.json", FINDINGS)


# ---------------------------------------------------------------- resolve_model (scores mode)


def _reference_and_scores(tmp_path: Path, n: int = 60) -> tuple[pd.DataFrame, Path]:
    """A reference site with a test split, and a vendor scores folder covering it."""
    rng = np.random.default_rng(3)
    ids = [f"{i:08d}_000.png" for i in range(n)]
    labels = rng.random((n, len(FINDINGS))) < 0.3
    labels[0, :] = True  # every finding has a positive in the test split
    table = pd.DataFrame(labels.astype(float), columns=list(FINDINGS))
    table.insert(0, "image_id", ids)
    table.insert(1, "site", "vendor_dev")
    table.insert(2, "patient_pseudonym", [f"p{i}" for i in range(n)])
    table.insert(3, "split", ["test" if i % 2 == 0 else "train" for i in range(n)])
    table.insert(4, "batch", "b1")
    scores = np.clip(0.6 * labels + 0.4 * rng.random(labels.shape), 0.001, 0.999)
    folder = tmp_path / "scores"
    folder.mkdir()
    frame = pd.DataFrame(scores, columns=list(FINDINGS))
    frame.insert(0, "Image Index", ids)
    frame.to_csv(folder / "vendor_dev.csv", index=False)
    return table, folder


def _resolve(tmp_path: Path, spec: ModelSpec, reference: pd.DataFrame):
    dirs = RunDirs(*(tmp_path / d for d in ("landing", "art", "quarantine", "reports", "keys")))
    return resolve_model(
        spec,
        reference=reference,
        dirs=dirs,
        log=lambda _m: None,
        reference_site="vendor_dev",
        policy=load_policy(),
    )


def test_scores_with_the_vendor_file_use_its_thresholds(tmp_path: Path) -> None:
    reference, folder = _reference_and_scores(tmp_path)
    path = _write(tmp_path, GOOD)
    ref = _resolve(tmp_path, ModelSpec(scores=str(folder), thresholds=str(path)), reference)
    assert dict(ref.thresholds) == GOOD
    assert ref.threshold_source.startswith("the vendor's thresholds file thresholds.json")
    version, meta = model_fingerprint(ModelSpec(scores=str(folder), thresholds=str(path)))
    assert "thresholds=" in version and list(meta["thresholds_file"].values())[0] == (
        read_thresholds_file(path, FINDINGS).sha256
    )
    # A different operating point is a different audit (data version), same scores identity.
    other = _write(tmp_path, {**GOOD, "Effusion": 0.5}, "other.json")
    again = _resolve(tmp_path, ModelSpec(scores=str(folder), thresholds=str(other)), reference)
    assert again.identity == ref.identity and again.version() != ref.version()


def test_scores_without_a_file_are_judged_at_the_stated_derived_rule(tmp_path: Path) -> None:
    reference, folder = _reference_and_scores(tmp_path)
    ref = _resolve(tmp_path, ModelSpec(scores=str(folder)), reference)
    assert ref.threshold_source.startswith("derived by the audit, not the vendor")
    assert "80% sensitivity on the reference test split" in ref.threshold_source
    assert "(vendor_dev, 30 images" in ref.threshold_source
    scores = pd.read_csv(folder / "vendor_dev.csv").set_index("Image Index")
    test = reference[reference["split"] == "test"].set_index("image_id")
    for finding in FINDINGS:
        pos = scores.loc[test.index[test[finding] == 1], finding].to_numpy()
        t = ref.thresholds[finding]
        assert np.mean(pos >= t) >= 0.8  # reaches the target ...
        above = pos[pos > t]
        assert above.size == 0 or np.mean(pos >= above.min()) < 0.8  # ... at the highest cut
        assert t in pos  # a positive's score, never a default such as 0.5


def test_a_finding_without_any_reference_positive_is_refused_with_the_fix(
    tmp_path: Path,
) -> None:
    reference, folder = _reference_and_scores(tmp_path)
    reference["Hernia"] = 0.0
    with pytest.raises(AuditInputError) as err:
        _resolve(tmp_path, ModelSpec(scores=str(folder)), reference)
    assert "['Hernia']" in str(err.value) and "--thresholds FILE" in str(err.value)


def test_a_finding_without_a_test_positive_is_derived_on_all_reference_images(
    tmp_path: Path,
) -> None:
    reference, folder = _reference_and_scores(tmp_path)
    test = reference["split"] == "test"
    reference.loc[test, "Hernia"] = 0.0
    reference.loc[~test & (reference.index == 1), "Hernia"] = 1.0
    ref = _resolve(tmp_path, ModelSpec(scores=str(folder)), reference)
    assert "Hernia had no positive in that split: derived on all 60" in ref.threshold_source


def test_a_thresholds_file_with_a_model_package_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    with pytest.raises(AuditInputError, match="only with vendor scores"):
        _resolve(tmp_path, ModelSpec(package_dir=str(tmp_path), thresholds=str(path)), None)
