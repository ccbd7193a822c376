"""Study cxr_triage: what its model stage accepts and refuses (no training here)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from clinaudit.audit.types import AuditInputError
from clinaudit.orchestration.cli import _model
from clinaudit.studies import get_study
from clinaudit.studies.base import ModelSpec
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


def test_the_command_line_backbone_becomes_an_absolute_training_setting() -> None:
    args = argparse.Namespace(
        backbone="pkg", device="cpu", precision="auto", model=None, predictions=None
    )
    model = _model(args, STUDY)
    assert model.training["backbone"] == str(Path("pkg").resolve())
