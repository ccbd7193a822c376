"""Study cxr_triage: what its model stage accepts, refuses and trains on (no training here)."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from clinaudit.audit.types import AuditInputError
from clinaudit.orchestration.cli import _model
from clinaudit.studies import get_study
from clinaudit.studies.base import ModelSpec, RunDirs
from clinaudit.studies.cxr_triage import model as triage_model
from clinaudit.studies.cxr_triage.model import model_fingerprint, transfer_config

STUDY = get_study("cxr_triage")


def test_vendor_scores_are_refused_with_the_fix() -> None:
    with pytest.raises(AuditInputError, match="fits its temperature and certificate on logits"):
        model_fingerprint(ModelSpec(scores="/nowhere/scores.csv"))


def test_settings_the_triage_model_does_not_have_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\['arch'\] are not known to cxr_triage"):
        model_fingerprint(ModelSpec(training={"arch": "resnet18"}))
    with pytest.raises(ValueError, match=r"\['backbone'\] are not known to multisite_cxr"):
        get_study("multisite_cxr").model_fingerprint(ModelSpec(training={"backbone": "/x"}))


def test_embedded_fingerprint_follows_the_fine_tuning_settings() -> None:
    base, _ = model_fingerprint(ModelSpec())
    assert base == model_fingerprint(ModelSpec())[0]
    assert model_fingerprint(ModelSpec(training={"epochs": 5}))[0] != base
    assert transfer_config(ModelSpec(training={"epochs": 5})).epochs == 5
    assert transfer_config(ModelSpec(training={"scale": "tiny"})).epochs == 1
    demo = ModelSpec(training={"scale": "demo"})
    assert transfer_config(demo).epochs == 3  # both arms: the same budget
    assert model_fingerprint(demo)[1]["training"]["pretrain_epochs"] == 4


def test_a_backbone_pretrained_here_never_sees_a_calibration_or_pile_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, object] = {}

    def fake_pretrain(table, files, root, *, spec, log):
        seen.update(table=table, files=files, spec=spec)
        return SimpleNamespace(package_dir=root / "pkg")

    monkeypatch.setattr(triage_model, "train_vendor_model", fake_pretrain)
    splits = ["train", "calibration", "test", "pile", "train", "calibration"]
    table = pd.DataFrame({"triage_split": splits, "split": ["train"] * 4 + ["test", "train"]})
    files = [tmp_path / f"{k}.dcm" for k in range(len(table))]
    dirs = RunDirs(*(tmp_path / d for d in ("landing", "artifacts", "q", "reports", "keys")))
    spec = ModelSpec(training={"scale": "demo"})
    path, source = triage_model._backbone(spec, table, files, dirs, log=lambda _: None)
    assert list(seen["table"]["split"]) == ["train", "test", "train"]  # the triage split
    assert seen["files"] == [files[0], files[2], files[4]]
    assert (seen["spec"].train.input_size, seen["spec"].train.epochs) == (128, 4)
    assert "triage train split (2 studies; resnet10t at 128 px, 4 epochs" in source


def test_the_command_line_backbone_becomes_an_absolute_training_setting() -> None:
    args = argparse.Namespace(
        backbone="pkg", device="cpu", precision="auto", model=None, predictions=None
    )
    model = _model(args, STUDY)
    assert model.training["backbone"] == str(Path("pkg").resolve())


def test_predictions_score_only_images_this_package_has_not_scored(monkeypatch, tmp_path) -> None:
    import numpy as np
    import pandas as pd

    from clinaudit.studies.base import RunDirs
    from clinaudit.studies.cxr_triage import model as triage_model

    calls: list[list[str]] = []

    def fake_logits(package_dir, table, files, spec):
        calls.append(table["sha256"].tolist())
        return np.array([[float(int(s, 16) % 7), -1.0] for s in table["sha256"]], np.float32)

    monkeypatch.setattr(triage_model, "_logits", fake_logits)
    pkg = argparse.Namespace(sha256="ab" * 32, path=tmp_path)
    dirs = RunDirs(*(tmp_path / n for n in ("l", "a", "q", "r", "k")))
    spec = ModelSpec(device="cpu", precision="fp32")

    def table(n: int) -> pd.DataFrame:
        return pd.DataFrame({"sha256": [f"{i:064x}" for i in range(n)]})

    first, reused = triage_model._cached_logits(pkg, table(5), [Path("f")] * 5, spec, dirs)
    assert reused == 0 and len(calls[-1]) == 5
    # A re-audit after a reads batch (same images) scores nothing; new backlog images only.
    again, reused = triage_model._cached_logits(pkg, table(5), [Path("f")] * 5, spec, dirs)
    assert reused == 5 and len(calls) == 1 and (again == first).all()
    more, reused = triage_model._cached_logits(pkg, table(8), [Path("f")] * 8, spec, dirs)
    assert reused == 5 and calls[-1] == table(8)["sha256"].tolist()[5:]
    assert (more[:5] == first).all() and more[5, 0] == int(f"{5:064x}", 16) % 7
    # Another package never reads this package's logits.
    other = argparse.Namespace(sha256="cd" * 32, path=tmp_path)
    triage_model._cached_logits(other, table(5), [Path("f")] * 5, spec, dirs)
    assert len(calls[-1]) == 5
