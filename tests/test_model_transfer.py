"""Transfer of a package to new targets: copied backbone, new head, lineage, determinism, reuse,
the gain over the from-scratch baseline and its paired bootstrap against a slow reference."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cxr_fixtures import png_bytes
from sklearn.metrics import roc_auc_score

from clinaudit.audit.bootstrap import bootstrap_counts, derive_rng
from clinaudit.audit.types import AuditInputError
from clinaudit.models.inference import predict
from clinaudit.models.model_card import ModelCard
from clinaudit.models.package import load_package, save_package
from clinaudit.models.training import TrainConfig, train_multilabel
from clinaudit.models.transfer import (
    TransferConfig,
    child_model,
    compare_transfer,
    train_scratch,
    transfer_package,
)
from clinaudit.models.transfer_compare import SEED_KEY
from clinaudit.models.vendor_model import patient_disjoint_split
from clinaudit.sources.cxr_labels import FINDINGS

torch.set_num_threads(1)
SIZE = 32
LABELS = ("abnormal", "critical")
ATELECTASIS, EFFUSION = FINDINGS.index("Atelectasis"), FINDINGS.index("Effusion")


def _draw(square: np.ndarray, band: np.ndarray, rng: np.random.Generator, signal: float):
    """Noise; a bright 8x8 square where ``square``, a bright bottom band where ``band``."""
    x = rng.random((len(square), SIZE, SIZE), dtype=np.float32) * 0.5
    for i in np.flatnonzero(square == 1):
        r, c = rng.integers(2, SIZE - 12, 2)
        x[i, r : r + 8, c : c + 8] += signal
    x[band == 1, -6:, :] += signal
    return np.clip(x, 0.0, 1.0)


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    """A 14-finding tiny_cnn package whose features detect the square and the band."""
    rng = np.random.default_rng(0)
    y = (rng.random((384, len(FINDINGS))) < 0.3).astype(np.float32)
    y[:, [ATELECTASIS, EFFUSION]] = rng.integers(0, 2, (384, 2))
    x = _draw(y[:, ATELECTASIS], y[:, EFFUSION], rng, signal=0.2)
    cfg = TrainConfig(
        adapter="tiny_cnn", arch="tiny_cnn", input_size=SIZE, epochs=6, lr=1e-2, device="cpu"
    )
    result = train_multilabel(x[:320], y[:320], x[320:], y[320:], cfg)
    card = ModelCard(
        vendor="Acme (test)",
        intended_use="tests",
        operating_thresholds=dict.fromkeys(FINDINGS, 0.5),
        created_utc="2026-01-01T00:00:00+00:00",
    )
    return save_package(
        tmp_path_factory.mktemp("parent") / "pkg", result.adapter, result.model, card
    )


def _table(root: Path, n_patients: int, seed: int, split: str) -> tuple[pd.DataFrame, list[Path]]:
    """Triage rows as PNG files, two per patient: abnormal = faint square, critical = faint band."""
    rng = np.random.default_rng(seed)
    n = 2 * n_patients
    abnormal = rng.integers(0, 2, n)
    critical = abnormal * rng.integers(0, 2, n)
    x = _draw(abnormal, critical, rng, signal=0.1)
    root.mkdir(parents=True, exist_ok=True)
    rows, files = [], []
    for i in range(n):
        path = root / f"{split}_{seed}_{i:04d}.png"
        path.write_bytes(png_bytes(np.rint(x[i] * 255).astype(np.uint8)))
        files.append(path)
        rows.append(
            {
                "image_id": path.name,
                "patient_pseudonym": f"{split}{seed}-p{i // 2:03d}",
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "split": split,
                "abnormal": float(abnormal[i]),
                "critical": float(critical[i]),
            }
        )
    return pd.DataFrame(rows), files


@pytest.fixture(scope="module")
def triage(tmp_path_factory) -> tuple[pd.DataFrame, list[Path]]:
    root = tmp_path_factory.mktemp("triage")
    train, f_train = _table(root, 50, seed=1, split="train")
    test, f_test = _table(root, 100, seed=2, split="test")
    return pd.concat([train, test], ignore_index=True), f_train + f_test


def _config(**kw) -> TransferConfig:
    base = dict(epochs=2, lr=1e-2, scratch_lr=1e-2, batch_size=16, device="cpu", num_threads=1)
    return TransferConfig(**{**base, **kw})


def test_child_copies_the_backbone_and_gets_a_new_two_output_head(parent):
    pkg = load_package(parent)
    rng_before = torch.get_rng_state()
    adapter, model, copied, reinit = child_model(pkg, LABELS, seed=0, copy_weights=True)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is untouched
    assert adapter.config.labels == LABELS and adapter.config.input_size == SIZE
    assert reinit == ("head.weight", "head.bias")
    state, source = model.state_dict(), pkg.model.state_dict()
    assert set(copied) == set(source) - set(reinit)
    assert all(torch.equal(state[k], source[k]) for k in copied)
    assert state["head.weight"].shape == (2, 32) and model(torch.zeros(3, 1, SIZE, SIZE)).shape == (
        3,
        2,
    )
    fresh = adapter.create_model(seed=0).state_dict()
    assert torch.equal(state["head.weight"], fresh["head.weight"])
    other = child_model(pkg, LABELS, seed=1, copy_weights=True)[1].state_dict()
    assert not torch.equal(other["head.weight"], state["head.weight"])
    # the same labels as the parent: the head is the parent's too
    same = child_model(pkg, FINDINGS, seed=0, copy_weights=True)
    assert same[3] == () and torch.equal(same[1].state_dict()["head.weight"], source["head.weight"])
    scratch = child_model(pkg, LABELS, seed=0, copy_weights=False)
    assert scratch[2] == () and not torch.equal(scratch[1].state_dict()["features.0.weight"],
                                                source["features.0.weight"])  # fmt: skip


def test_transfer_writes_a_verified_package_with_lineage(parent, triage, tmp_path):
    table, files = triage
    messages: list[str] = []
    res = transfer_package(
        parent, table, files, tmp_path, config=_config(trainable="head"), log=messages.append
    )
    loaded = load_package(res.package_dir, expected_labels=LABELS)
    assert loaded.sha256 == res.package_sha256 and not res.reused and res.method == "transfer"
    assert res.package_dir.parent == tmp_path and res.package_dir.name.startswith("transfer-")
    lineage = loaded.card.lineage
    assert lineage["parent_package_sha256"] == load_package(parent).sha256
    assert lineage["parent_labels"] == list(FINDINGS) and lineage["weights_from_parent"]
    assert lineage["reinitialised"] == ["head.weight", "head.bias"] == list(res.reinitialised)
    assert lineage["trainable"] == "head" and lineage["trainable_parameters"] == [
        "head.weight",
        "head.bias",
    ]
    n_train = int((table["split"] == "train").sum())
    sizes = lineage["split_sizes"]
    assert sizes["train"]["images"] + sizes["val"]["images"] == n_train
    assert lineage["epochs_run"] == 2 and 1 <= lineage["selected_epoch"] <= 2
    assert lineage["config"]["trainable"] == "head" and "num_threads" not in lineage["config"]
    assert set(loaded.card.operating_thresholds) == set(LABELS)
    assert sum("epoch" in m for m in messages) == 2 and res.train_images_per_second > 0
    # head only: every other tensor (BatchNorm statistics included) is still the parent's
    child, source = loaded.model.state_dict(), load_package(parent).model.state_dict()
    assert all(torch.equal(child[k], source[k]) for k in res.copied)
    # an ordinary package: the inference path scores it, logits included
    probs = predict(loaded.model, loaded.config, files[:8], num_workers=0, device="cpu")
    logits = predict(
        loaded.model, loaded.config, files[:8], num_workers=0, device="cpu", output="logits"
    )
    assert probs.shape == (8, 2) and np.allclose(1 / (1 + np.exp(-logits)), probs, atol=1e-6)
    json.loads((res.package_dir / "model_card.json").read_text())  # valid JSON, no NaN


def test_transfer_is_bitwise_deterministic_and_reused_without_training(parent, triage, tmp_path):
    table, files = triage
    first = transfer_package(parent, table, files, tmp_path / "a", config=_config(), log=print)
    again = transfer_package(parent, table, files, tmp_path / "b", config=_config(), log=print)
    assert first.weights_sha256 == again.weights_sha256
    messages: list[str] = []
    reused = transfer_package(
        parent, table, files, tmp_path / "a", config=_config(), log=messages.append
    )
    assert reused.reused and reused.package_dir == first.package_dir
    assert reused.package_sha256 == first.package_sha256 and reused.history == first.history
    assert any(m.startswith("reusing transfer to new targets package") for m in messages)
    assert not any("epoch" in m or "decoding" in m for m in messages)
    # a runtime-only setting keeps the key; one that shapes the fit does not
    assert transfer_package(
        parent, table, files, tmp_path / "a", config=_config(load_workers=1), log=messages.append
    ).reused
    other = transfer_package(parent, table, files, tmp_path / "a", config=_config(seed=1))
    assert not other.reused and other.package_dir != first.package_dir


def test_transfer_beats_scratch_on_a_task_the_parent_features_solve(parent, triage, tmp_path):
    table, files = triage
    cfg = _config(trainable="all", epochs=1)
    tr = transfer_package(parent, table, files, tmp_path, config=cfg)
    sc = train_scratch(parent, table, files, tmp_path, config=cfg)
    assert sc.method == "scratch" and sc.copied == () and sc.package_dir != tr.package_dir
    assert load_package(sc.package_dir, expected_labels=LABELS).card.lineage["trainable"] == "all"
    assert train_scratch(parent, table, files, tmp_path, config=cfg, log=print).reused
    test = (table["split"] == "test").to_numpy()
    test_files = [f for f, t in zip(files, test, strict=True) if t]
    scores = {}
    for r in (tr, sc):
        pkg = load_package(r.package_dir, expected_labels=LABELS)
        kw = dict(num_workers=0, device="cpu", output="logits")
        scores[r.method] = predict(pkg.model, pkg.config, test_files, **kw)
    y = table.loc[test, list(LABELS)]
    out = compare_transfer(
        y, scores["transfer"], scores["scratch"], table.loc[test, "patient_pseudonym"], n_boot=200
    )
    assert list(out["label"]) == list(LABELS) and (out["n_boot"] == 200).all()
    for j, row in out.iterrows():
        a = roc_auc_score(y.iloc[:, j], scores["transfer"][:, j])
        b = roc_auc_score(y.iloc[:, j], scores["scratch"][:, j])
        assert row["auroc_transfer"] == pytest.approx(a, abs=1e-12)
        assert row["auroc_difference"] == row["auroc_transfer"] - row["auroc_scratch"]
        assert row["auroc_difference_ci_low"] <= row["auroc_difference"]
        assert row["auroc_difference"] <= row["auroc_difference_ci_high"]
        assert a > b  # the parent's square and band detectors transfer
    assert out.loc[0, "difference_ci_excludes_zero"]


def test_refusals_name_the_fix(parent, triage, tmp_path):
    table, files = triage
    run = dict(config=_config(), log=print)
    no_train = table.assign(split="test")
    with pytest.raises(ValueError, match=r"splits \['test'\] and no 'train' rows; assign"):
        transfer_package(parent, no_train, files, tmp_path, **run)
    one_class = table.assign(critical=np.where(table["split"] == "train", 0.0, table["critical"]))
    with pytest.raises(ValueError, match=r"'critical' has 0 positive and 100 negative .* drop it"):
        train_scratch(parent, one_class, files, tmp_path, **run)
    with pytest.raises(ValueError, match=r"input_size=64 but the parent package .* takes 32 px"):
        transfer_package(parent, table, files, tmp_path, config=_config(input_size=64))
    with pytest.raises(ValueError, match=r"lacks columns \['sha256'\]"):
        transfer_package(parent, table.drop(columns="sha256"), files, tmp_path, **run)
    with pytest.raises(ValueError, match=r"299 files for 300 table rows"):
        transfer_package(parent, table, files[:-1], tmp_path, **run)
    with pytest.raises(ValueError, match=r"hold values \[2.0\]; expected 0, 1 or NaN"):
        transfer_package(parent, table.assign(abnormal=2.0), files, tmp_path, **run)
    with pytest.raises(ValueError, match=r"trainable='backbone' is not one of \['all'"):
        TransferConfig(trainable="backbone")  # type: ignore[arg-type]
    # a validation slice without both classes of any label
    train = table["split"] == "train"
    rest, _ = patient_disjoint_split(
        table.loc[train, "patient_pseudonym"], 0.15, seed=0, keys=table.loc[train, "image_id"]
    )
    positive = np.zeros(len(table))
    positive[np.flatnonzero(train)[np.flatnonzero(rest)[:3]]] = 1.0  # none in the slice
    rare = table.assign(abnormal=positive, critical=positive)
    with pytest.raises(ValueError, match=r"no label of \['abnormal', 'critical'\] with both"):
        transfer_package(parent, rare, files, tmp_path, **run)
    assert not any(tmp_path.iterdir())  # nothing written by a refused call


def _slow_paired_bootstrap(y, a, b, clusters, n_boot, seed, ci_level):
    """Resample patients with the same draws, expand the rows, sklearn AUROC of each replicate."""
    codes, _ = pd.factorize(np.asarray(clusters), sort=False)
    counts = bootstrap_counts(codes.max() + 1, n_boot, derive_rng(seed, SEED_KEY))
    out = []
    for j in range(y.shape[1]):
        lab = ~np.isnan(y[:, j])
        diffs = []
        for c in counts:
            rows = np.repeat(np.flatnonzero(lab), c[codes[lab]])
            yy = y[rows, j]
            if yy.min() == yy.max():
                continue
            diffs.append(roc_auc_score(yy, a[rows, j]) - roc_auc_score(yy, b[rows, j]))
        alpha = 1 - ci_level
        out.append((np.quantile(diffs, [alpha / 2, 1 - alpha / 2]), len(diffs)))
    return out


def test_compare_transfer_equals_a_slow_paired_bootstrap():
    rng = np.random.default_rng(5)
    n = 40
    clusters = np.repeat([f"p{k}" for k in range(20)], 2)
    y = rng.integers(0, 2, (n, 2)).astype(float)
    y[rng.random((n, 2)) < 0.15] = np.nan
    a = y + rng.normal(0, 0.8, (n, 2))
    b = np.where(np.isnan(y), 0, y) * 0.3 + rng.normal(0, 0.8, (n, 2))
    a = np.where(np.isnan(a), rng.normal(size=(n, 2)), a)
    b = np.round(b, 1)  # ties
    out = compare_transfer(y, a, b, clusters, labels=LABELS, n_boot=300, seed=3, ci_level=0.9)
    slow = _slow_paired_bootstrap(y, a, b, clusters, 300, 3, 0.9)
    for j, ((lo, hi), n_valid) in enumerate(slow):
        row = out.iloc[j]
        assert row["auroc_difference_ci_low"] == pytest.approx(lo, abs=1e-12)
        assert row["auroc_difference_ci_high"] == pytest.approx(hi, abs=1e-12)
        assert row["n_boot_valid"] == n_valid and row["seed"] == 3 and row["ci_level"] == 0.9
        lab = ~np.isnan(y[:, j])
        diff = roc_auc_score(y[lab, j], a[lab, j]) - roc_auc_score(y[lab, j], b[lab, j])
        assert row["auroc_difference"] == pytest.approx(diff, abs=1e-12)
        assert row["n_clusters"] == len(set(clusters[lab]))
    # n_boot=0: point estimates and DeLong only
    bare = compare_transfer(y, a, b, clusters, n_boot=0)
    assert bare["auroc_difference_ci_low"].isna().all() and bare["delong_se"].notna().all()


def test_compare_transfer_insufficient_label_and_input_errors():
    y = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    s = np.arange(8.0).reshape(4, 2)
    out = compare_transfer(y, s, s[::-1], ["a", "a", "b", "b"], labels=LABELS, n_boot=20)
    assert list(out["status"]) == ["ok", "insufficient data"]
    assert np.isnan(out.loc[1, "auroc_difference"]) and out.loc[1, "n_boot_valid"] == 0
    with pytest.raises(AuditInputError, match="clusters"):
        compare_transfer(y, s, s, None)
    with pytest.raises(AuditInputError, match="score_scratch"):
        compare_transfer(y, s, s[:, :1], ["a", "a", "b", "b"])
