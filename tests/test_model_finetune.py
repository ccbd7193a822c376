"""Focused re-training: patient split, frozen/trainable layers, lineage, determinism, guard."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cxr_fixtures import png_bytes

from clinaudit.models.finetune import (
    FinetuneConfig,
    finetune_package,
    split_site_patients,
    trainable_parameter_names,
)
from clinaudit.models.finetune_guard import GUARD_COLUMNS, regression_guard
from clinaudit.models.model_card import ModelCard
from clinaudit.models.package import ModelPackageError, load_package, save_package
from clinaudit.models.registry import create_adapter
from clinaudit.models.retrain import pick_worst_site, retrain_worst_site
from clinaudit.models.training import TrainConfig, train_multilabel
from clinaudit.sources.cxr_labels import FINDINGS

torch.set_num_threads(1)
SIZE = 32
ATELECTASIS, EFFUSION = FINDINGS.index("Atelectasis"), FINDINGS.index("Effusion")


def _images(labels: np.ndarray, rng: np.random.Generator, signal: float) -> np.ndarray:
    """Noise; Atelectasis = bright square, Effusion = bright bottom band (strength ``signal``)."""
    x = rng.random((len(labels), SIZE, SIZE), dtype=np.float32) * 0.5
    for i in np.flatnonzero(labels[:, ATELECTASIS] == 1):
        r, c = rng.integers(2, SIZE - 12, 2)
        x[i, r : r + 8, c : c + 8] += signal
    x[labels[:, EFFUSION] == 1, -6:, :] += signal
    return np.clip(x, 0.0, 1.0)


def _labels(n: int, rng: np.random.Generator) -> np.ndarray:
    y = (rng.random((n, len(FINDINGS))) < 0.35).astype(np.float32)
    y[rng.random(y.shape) < 0.05] = np.nan
    y[:, [ATELECTASIS, EFFUSION]] = rng.integers(0, 2, (n, 2))
    return y


def _site(root: Path, site: str, n_patients: int, seed: int, signal: float) -> pd.DataFrame:
    """A validated-images-like table of PNG files, two images per patient."""
    rng = np.random.default_rng(seed)
    n = 2 * n_patients
    y = _labels(n, rng)
    x = _images(y, rng, signal)
    (root / site).mkdir(parents=True)
    rows = []
    for i in range(n):
        path = root / site / f"{site}_{i:04d}.png"
        path.write_bytes(png_bytes(np.rint(x[i] * 255).astype(np.uint8)))
        rows.append(
            {
                "image_id": path.name,
                "image_path": str(path),
                "site": site,
                "patient_pseudonym": f"{site}-p{i // 2:03d}",
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "split": "test" if i % 5 == 0 else "train",
            }
        )
    return pd.concat([pd.DataFrame(rows), pd.DataFrame(y, columns=list(FINDINGS))], axis=1)


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    """A tiny_cnn package trained on strong-signal 'vendor' images."""
    rng = np.random.default_rng(0)
    y = _labels(256, rng)
    x = _images(y, rng, signal=0.5)
    cfg = TrainConfig(adapter="tiny_cnn", arch="tiny_cnn", input_size=SIZE, epochs=4, lr=1e-2)
    result = train_multilabel(x[:192], y[:192], x[192:], y[192:], cfg)
    card = ModelCard(
        vendor="Acme (test)",
        intended_use="tests",
        operating_thresholds={f: 0.5 for f in FINDINGS},
        created_utc="2026-01-01T00:00:00+00:00",
    )
    directory = tmp_path_factory.mktemp("parent") / "pkg"
    return save_package(directory, result.adapter, result.model, card)


@pytest.fixture(scope="module")
def site_b(tmp_path_factory) -> pd.DataFrame:
    """Weak-signal site (the shift the re-training has to absorb)."""
    return _site(tmp_path_factory.mktemp("landing"), "site_b", 60, seed=1, signal=0.2)


def _config(**kw) -> FinetuneConfig:
    base = dict(epochs=2, lr=3e-3, batch_size=16, device="cpu", seed=0, n_boot=50)
    return FinetuneConfig(**{**base, **kw})


def _run(parent, site_b, out, **kw):
    split = split_site_patients(site_b, seed=0)
    return finetune_package(
        parent,
        site_b[split == "train"],
        site_b[split == "val"],
        out_dir=out,
        config=_config(**kw),
        focus_findings=["Atelectasis", "Effusion"],
    )


def test_split_is_patient_disjoint_deterministic_and_proportional():
    rng = np.random.default_rng(3)
    t = pd.DataFrame({"patient_pseudonym": [f"p{k}" for k in rng.integers(0, 100, 400)]})
    s = split_site_patients(t, seed=7)
    assert s.index.equals(t.index) and set(s) == {"train", "val", "test"}
    assert t.assign(s=s).groupby("patient_pseudonym")["s"].nunique().max() == 1
    per_patient = t.assign(s=s).drop_duplicates("patient_pseudonym")["s"].value_counts()
    n = t["patient_pseudonym"].nunique()
    assert per_patient["train"] == round(0.6 * n) and abs(per_patient["val"] - 0.2 * n) <= 1
    assert split_site_patients(t, seed=7).equals(s)
    assert not split_site_patients(t, seed=8).equals(s)
    shuffled = t.sample(frac=1.0, random_state=0)
    assert split_site_patients(shuffled, seed=7).equals(s.loc[shuffled.index])
    with pytest.raises(ValueError, match=r"fractions=\(0.5, 0.5, 0.5\) must be 3 positive"):
        split_site_patients(t, fractions=(0.5, 0.5, 0.5), seed=0)
    with pytest.raises(ValueError, match="2 patient"):
        split_site_patients(t.head(2).assign(patient_pseudonym=["a", "b"]), seed=0)
    with pytest.raises(ValueError, match="no column 'pid'"):
        split_site_patients(t, patient_col="pid", seed=0)


def test_trainable_parts_of_a_timm_resnet():
    model = create_adapter("timm_cxr", architecture="resnet10t", input_size=64).create_model()
    last = trainable_parameter_names(model, "last_block")
    assert {n.split(".")[0] for n in last} == {"layer4", "fc"}
    assert trainable_parameter_names(model, "head") == ("fc.weight", "fc.bias")


def test_finetune_writes_a_package_with_lineage_and_trains_only_the_last_block(
    parent, site_b, tmp_path
):
    logs: list[str] = []
    split = split_site_patients(site_b, seed=0)
    result = finetune_package(
        parent,
        site_b[split == "train"],
        site_b[split == "val"],
        out_dir=tmp_path / "child",
        config=_config(),
        focus_findings=["Atelectasis", "Effusion"],
        log=logs.append,
    )
    before, after = load_package(parent), load_package(tmp_path / "child")
    lineage = after.card.lineage
    assert lineage["parent_package_sha256"] == before.sha256 == result.parent_package_sha256
    assert lineage["method"] == "focused re-training" and lineage["site"] == "site_b"
    assert lineage["cells_targeted"] == ["site_b/Atelectasis", "site_b/Effusion"]
    n_train = int((split == "train").sum())
    assert lineage["split_sizes"]["train"]["images"] == n_train == result.n_train
    assert lineage["config"]["trainable"] == "last_block" and lineage["epochs"] == 2
    assert lineage["val_focus_auroc_parent"] == result.history[0].val_focus_auroc
    assert lineage["trainable_weights"] == 16 * 9 * 32 + 2 * 32 + 32 * 14 + 14
    assert after.sha256 == result.package_sha256 != before.sha256
    assert after.card.operating_thresholds == before.card.operating_thresholds
    assert [r.epoch for r in result.history] == [0, 1, 2] and result.selected_epoch in (1, 2)
    best = max(result.history[1:], key=lambda r: r.val_focus_auroc)
    assert result.selected_epoch == best.epoch
    assert any("epoch 2/2" in m for m in logs)
    assert set(result.trainable_parameters) == {
        "features.6.weight", "features.7.weight", "features.7.bias", "head.weight", "head.bias"
    }  # fmt: skip
    old, new = before.model.state_dict(), after.model.state_dict()
    for key in old:  # trainable weights moved; frozen weights and every BN statistic did not
        assert torch.equal(old[key], new[key]) != (key in result.trainable_parameters), key


def test_update_bn_stats_re_estimates_only_the_trainable_stage(parent, site_b, tmp_path):
    result = _run(parent, site_b, tmp_path / "bn", epochs=1, update_bn_stats=True)
    old = load_package(parent).model.state_dict()
    new = load_package(result.package_dir).model.state_dict()
    assert not torch.equal(old["features.7.running_mean"], new["features.7.running_mean"])
    assert torch.equal(old["features.4.running_mean"], new["features.4.running_mean"])


def test_head_only_changes_only_the_head(parent, site_b, tmp_path):
    result = _run(parent, site_b, tmp_path / "head", trainable="head", epochs=1)
    assert result.trainable_parameters == ("head.weight", "head.bias")
    old = load_package(parent).model.state_dict()
    new = load_package(result.package_dir).model.state_dict()
    assert [k for k in old if not torch.equal(old[k], new[k])] == ["head.weight", "head.bias"]


def test_finetune_is_deterministic_on_cpu(parent, site_b, tmp_path):
    a = _run(parent, site_b, tmp_path / "a", epochs=1)
    b = _run(parent, site_b, tmp_path / "b", epochs=1)
    c = _run(parent, site_b, tmp_path / "c", epochs=1, seed=1)
    assert a.weights_sha256 == b.weights_sha256 != c.weights_sha256


def test_finetune_errors_are_clear(parent, site_b, tmp_path):
    with pytest.raises(ValueError, match="trainable='all' is not one of"):
        FinetuneConfig(trainable="all")
    split = split_site_patients(site_b, seed=0)
    train, val = site_b[split == "train"], site_b[split == "val"]
    no_hernia = train.assign(Hernia=0.0)
    no_positive = r"no labelled positive image for focus finding\(s\) \['Hernia'\]"
    with pytest.raises(ValueError, match=no_positive):
        finetune_package(parent, no_hernia, val, out_dir=tmp_path / "x", focus_findings=["Hernia"])
    with pytest.raises(ValueError, match="in both train_images and val_images"):
        finetune_package(parent, train, train.head(4), out_dir=tmp_path / "x")
    with pytest.raises(ValueError, match="unknown \\['Fracture'\\]"):
        finetune_package(parent, train, val, out_dir=tmp_path / "x", focus_findings=["Fracture"])
    with pytest.raises(ModelPackageError, match="already holds a model package"):
        finetune_package(parent, train, val, out_dir=parent, config=_config(epochs=1))


def _scored(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for g in ("site_a", "site_b", "vendor_dev:test"):
        y = rng.integers(0, 2, (n, 2)).astype(float)
        part = pd.DataFrame({"group": g, "cluster": [f"{g}/{k // 2}" for k in range(n)]})
        for j, t in enumerate(("Atelectasis", "Effusion")):
            part[t] = y[:, j]
            part[f"score_{t}"] = y[:, j] + rng.normal(0, 0.8, n)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def test_regression_guard_flags_an_injected_regression_and_accepts_none():
    before = _scored(300, seed=0)
    targeted = [("site_b", "Atelectasis")]
    same = regression_guard(before, before.copy(), tolerance=0.03, targeted_cells=targeted)
    assert (
        same.accepted and same.regressions == () and list(same.table.columns) == list(GUARD_COLUMNS)
    )
    assert (same.table["auroc_change"] == 0).all() and (
        same.table["auroc_change_ci_low"] == 0
    ).all()
    assert set(same.table.loc[same.table["group"] == "site_b", "split"]) == {"test"}
    assert set(same.table.loc[same.table["group"] != "site_b", "split"]) == {"all"}
    after = before.copy()
    hit = after["group"] == "site_a"
    rng = np.random.default_rng(1)
    after.loc[hit, "score_Effusion"] = after.loc[hit, "Effusion"] + rng.normal(0, 3.0, hit.sum())
    helped = after["group"] == "site_b"
    after.loc[helped, "score_Atelectasis"] = after.loc[helped, "Atelectasis"] + rng.normal(
        0, 0.2, helped.sum()
    )
    guard = regression_guard(before, after, tolerance=0.03, targeted_cells=["site_b/Atelectasis"])
    assert not guard.accepted and guard.regressions == ("site_a/Effusion",)
    row = guard.table.set_index(["group", "target"]).loc[("site_a", "Effusion")]
    assert row["auroc_after"] < row["auroc_before"] - 0.03 and row["auroc_change_ci_high"] < 0
    target = guard.table.set_index(["group", "target"]).loc[("site_b", "Atelectasis")]
    assert target["targeted"] and target["improved"] and not target["regressed"]
    loose = regression_guard(before, after, tolerance=0.9, targeted_cells=targeted)
    assert loose.accepted
    with pytest.raises(ValueError, match="the same images, in the same order"):
        regression_guard(before, after.iloc[::-1], tolerance=0.03, targeted_cells=targeted)


def test_retrain_worst_site_end_to_end(parent, site_b, tmp_path):
    root = tmp_path / "landing"
    validated = {
        "site_a": _site(root, "site_a", 20, seed=5, signal=0.5),
        "site_b": site_b,
        "vendor_dev": _site(root, "vendor_dev", 30, seed=6, signal=0.5),
    }
    worst = pd.DataFrame(
        {
            "rank": [1, 2, 3, 4],
            "group": ["site_a", "site_b", "site_b", "vendor_dev:test"],
            "target": ["Nodule", "Effusion", "Atelectasis", "Mass"],
        }
    )
    assert pick_worst_site(worst) == ("site_b", ("Effusion", "Atelectasis"))
    out = retrain_worst_site(
        worst,
        validated,
        parent,
        out_dir=tmp_path / "retrained",
        config=_config(epochs=1, min_pos=3, min_neg=3),
        simulated=True,
    )
    s = out.summary
    assert s["retrained_site"] == "site_b" and s["cells_targeted"] == [
        "site_b/Effusion",
        "site_b/Atelectasis",
    ]
    assert s["parent_package_sha256"] == load_package(parent).sha256
    assert s["package_sha256"] == load_package(tmp_path / "retrained").sha256
    assert s["accepted"] == (not s["regressions"]) and s["epochs"] == 1 and s["simulated"]
    t = out.table
    assert list(t.columns) == list(GUARD_COLUMNS)
    assert set(t["group"]) == {"site_a", "site_b", "vendor_dev:test"}
    n_test = int((split_site_patients(site_b, seed=0) == "test").sum())
    assert 0 < t.loc[t["group"] == "site_b", "n"].max() <= n_test
    assert t.loc[t["group"] == "vendor_dev:test", "n"].max() <= 12  # its 12 "test" rows only
    assert t["regressed"].sum() == len(s["regressions"])


def test_split_does_not_depend_on_the_pseudonymisation_key() -> None:
    """Same images, pseudonyms from another key: the same images land in the same split."""
    import hashlib

    import pandas as pd

    from clinaudit.models.finetune_data import split_site_patients

    raw = [f"{i // 3:05d}" for i in range(300)]
    ids = [f"{r}_{i % 3:03d}.dcm" for i, r in enumerate(raw)]

    def pseudonyms(key: bytes) -> list[str]:
        return [hashlib.sha256(key + r.encode()).hexdigest()[:16] for r in raw]

    a = pd.DataFrame({"image_id": ids, "patient_pseudonym": pseudonyms(b"key-1")})
    b = pd.DataFrame({"image_id": ids, "patient_pseudonym": pseudonyms(b"key-2")})
    assert split_site_patients(a, seed=3).tolist() == split_site_patients(b, seed=3).tolist()


def test_vendor_validation_slice_does_not_depend_on_the_pseudonymisation_key() -> None:
    import hashlib

    from clinaudit.models.vendor_model import patient_disjoint_split

    raw = [f"{i // 2:05d}" for i in range(200)]
    ids = [f"{r}_{i % 2:03d}.dcm" for i, r in enumerate(raw)]
    masks = [
        patient_disjoint_split(
            [hashlib.sha256(key + r.encode()).hexdigest() for r in raw], 0.2, seed=0, keys=ids
        )[1]
        for key in (b"k1", b"k2")
    ]
    assert (masks[0] == masks[1]).all() and 0.1 < masks[0].mean() < 0.3
