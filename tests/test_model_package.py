"""Model package: round trip, hash and label-order verification, pickle refusal, provenance."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from clinaudit.models.model_card import ModelCard, summarize_training_data
from clinaudit.models.package import (
    ModelPackageError,
    load_package,
    package_sha256,
    save_package,
)
from clinaudit.models.registry import create_adapter
from clinaudit.sources.cxr_labels import FINDINGS

torch.set_num_threads(1)


def _card(labels=FINDINGS, **kw) -> ModelCard:
    return ModelCard(
        vendor="Acme Imaging",
        intended_use="Adult PA/AP chest radiographs; triage support only.",
        operating_thresholds={label: 0.5 for label in labels},
        created_utc="2026-01-01T00:00:00+00:00",
        **kw,
    )


@pytest.fixture
def package(tmp_path):
    adapter = create_adapter("tiny_cnn", input_size=32)
    model = adapter.create_model(seed=1).eval()
    directory = save_package(tmp_path / "pkg", adapter, model, _card())
    return directory, adapter, model


def test_round_trip_gives_identical_outputs_and_card(tmp_path):
    adapter = create_adapter("tiny_cnn", input_size=32)
    model = adapter.create_model(seed=1).eval()
    table = pd.DataFrame(
        {
            "site": ["a", "a", "b"],
            "patient_pseudonym": ["p1", "p1", "p2"],
            "sex": ["F", "M", None],
            "snr": [10.0, 12.0, np.nan],
            **{f: [1.0, 0.0, np.nan] for f in FINDINGS},
        }
    )
    summary = summarize_training_data(table, demographic_columns=["sex"], quality_columns=["snr"])
    card = _card(training_data=summary, validation_auroc={"Mass": 0.81, "Hernia": math.nan})
    model = model.to(memory_format=torch.channels_last)  # as left by predict(); saved contiguous
    directory = save_package(tmp_path / "pkg", adapter, model, card)
    loaded = load_package(directory)
    x = adapter.normalise(torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)))
    model = model.to(memory_format=torch.contiguous_format)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded.model(x))
    saved, back = model.state_dict(), loaded.model.state_dict()
    assert saved.keys() == back.keys() and all(torch.equal(saved[k], back[k]) for k in saved)
    assert loaded.config == adapter.config
    assert loaded.card.vendor == "Acme Imaging"
    assert loaded.card.operating_thresholds == {f: 0.5 for f in FINDINGS}
    assert loaded.card.training_data == summary
    assert loaded.card.validation_auroc["Mass"] == 0.81
    assert math.isnan(loaded.card.validation_auroc["Hernia"])
    assert summary.images_per_site == {"a": 2, "b": 1} and summary.n_patients == 2
    assert summary.prevalence["Mass"] == 0.5 and summary.n_labelled["Mass"] == 2
    assert summary.demographics["sex"] == pytest.approx({"F": 1 / 3, "M": 1 / 3, "missing": 1 / 3})
    assert summary.quality["snr"]["mean"] == 11.0
    doc = json.loads((directory / "model_card.json").read_text())
    assert doc["config"]["labels"] == list(FINDINGS)
    assert doc["adapter"] == "tiny_cnn" and len(doc["weights_sha256"]) == 64


def test_package_hash_is_stable_under_reformatting_and_tracks_content(package):
    directory, _, _ = package
    card_path = directory / "model_card.json"
    before = package_sha256(directory)
    assert load_package(directory).sha256 == before
    doc = json.loads(card_path.read_text())
    card_path.write_text(json.dumps(doc, indent=4, sort_keys=True))
    assert package_sha256(directory) == before
    doc["vendor"] = "Someone else"
    card_path.write_text(json.dumps(doc))
    assert package_sha256(directory) != before


def test_flipped_weight_byte_is_a_hash_error_naming_the_file(package):
    directory, _, _ = package
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelPackageError, match=r"model\.safetensors: sha256 of the weights") as e:
        load_package(directory)
    assert e.value.path.endswith("model.safetensors")
    assert e.value.expected != e.value.found and "re-copy" in e.value.fix


def test_label_order_mismatch_is_refused(tmp_path):
    labels = tuple(reversed(FINDINGS))
    adapter = create_adapter("tiny_cnn", input_size=32, labels=labels)
    directory = save_package(tmp_path / "p", adapter, adapter.create_model(seed=0), _card(labels))
    with pytest.raises(ModelPackageError, match="model_card.json: .*different order") as e:
        load_package(directory)
    assert "Hernia" in e.value.found.split(",")[0] and "Atelectasis" in e.value.expected
    assert load_package(directory, expected_labels=labels).config.labels == labels
    with pytest.raises(ModelPackageError, match="labels differ"):
        load_package(directory, expected_labels=FINDINGS[:13])


def test_pickle_weights_are_refused(package):
    directory, _, model = package
    torch.save(model.state_dict(), directory / "model.pt")
    with pytest.raises(ModelPackageError, match=r"model\.pt: pickle-based weight files"):
        load_package(directory)


def test_weights_that_do_not_fit_the_card_architecture_are_refused(package):
    directory, _, _ = package
    card_path = directory / "model_card.json"
    doc = json.loads(card_path.read_text())
    doc["adapter"], doc["config"]["architecture"] = "timm_cxr", "resnet10t"
    card_path.write_text(json.dumps(doc))
    with pytest.raises(ModelPackageError, match="weights do not fit adapter 'timm_cxr'"):
        load_package(directory)


def test_save_checks_thresholds_and_refuses_to_overwrite(package, tmp_path):
    directory, adapter, model = package
    with pytest.raises(ModelPackageError, match="already holds a model package"):
        save_package(directory, adapter, model, _card())
    bad = ModelCard("v", "u", operating_thresholds={f: 0.5 for f in FINDINGS[:-1]})
    with pytest.raises(ModelPackageError, match=r"missing \['Hernia'\]"):
        save_package(tmp_path / "other", adapter, model, bad)
    worse = ModelCard("v", "u", operating_thresholds={f: 50.0 for f in FINDINGS})
    with pytest.raises(ModelPackageError, match="not a probability"):
        save_package(tmp_path / "other", adapter, model, worse)


def test_missing_card_and_directory_are_clear_errors(tmp_path):
    with pytest.raises(ModelPackageError, match="does not exist"):
        load_package(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelPackageError, match="model card is missing"):
        load_package(tmp_path / "empty")
