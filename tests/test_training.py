"""Training on a tiny separable problem, determinism, masked loss, thresholds, image loading."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clinaudit.models.evaluation import fit_operating_thresholds
from clinaudit.models.training import (
    TrainConfig,
    load_images,
    masked_bce_loss,
    train_multilabel,
)
from clinaudit.sources.cxr_labels import FINDINGS

torch.set_num_threads(1)
SIZE = 32


def _square_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise images; label 0 (Atelectasis) = a bright 8x8 square somewhere; others random/NaN."""
    rng = np.random.default_rng(seed)
    images = rng.random((n, SIZE, SIZE), dtype=np.float32) * 0.5
    labels = rng.integers(0, 2, (n, len(FINDINGS))).astype(np.float32)
    labels[rng.random(labels.shape) < 0.2] = np.nan
    labels[:, 0] = rng.integers(0, 2, n)
    for i in np.flatnonzero(labels[:, 0] == 1):
        r, c = rng.integers(4, SIZE - 12, 2)
        images[i, r : r + 8, c : c + 8] = 0.95
    return images, labels


def _config(**kw) -> TrainConfig:
    base = dict(adapter="tiny_cnn", arch="tiny_cnn", input_size=SIZE, batch_size=32, lr=1e-2)
    return TrainConfig(**{**base, **kw})


def test_tiny_cnn_learns_the_bright_square():
    xtr, ytr = _square_data(320, seed=0)
    xva, yva = _square_data(128, seed=1)
    epochs = []
    result = train_multilabel(xtr, ytr, xva, yva, _config(epochs=6), progress=epochs.append)
    assert result.val_auroc["Atelectasis"] > 0.9
    assert [r.epoch for r in epochs] == list(range(1, 7)) and result.history == tuple(epochs)
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.val_probabilities.shape == (128, len(FINDINGS))
    assert all(0.2 < v < 0.8 for k, v in result.val_auroc.items() if k != "Atelectasis")
    assert next(result.model.parameters()).device.type == "cpu" and not result.model.training


def test_training_is_deterministic_on_cpu():
    xtr, ytr = _square_data(96, seed=2)
    xva, yva = _square_data(32, seed=3)
    cfg = _config(epochs=1, device="cpu", num_threads=1)
    a = train_multilabel(xtr, ytr, xva, yva, cfg).model.state_dict()
    b = train_multilabel(xtr, ytr, xva, yva, cfg).model.state_dict()
    c = train_multilabel(xtr, ytr, xva, yva, _config(epochs=1, device="cpu", seed=1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["head.weight"], c.model.state_dict()["head.weight"])


def test_masked_loss_ignores_unknown_labels():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    mask = torch.tensor([[True, False], [True, True]])
    t1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t2 = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # differs only where masked
    assert torch.equal(masked_bce_loss(logits, t1, mask), masked_bce_loss(logits, t2, mask))
    expected = -(math.log(torch.sigmoid(torch.tensor(2.0))) + math.log(1 - 0.6224593)
                 + math.log(torch.sigmoid(torch.tensor(3.0)))) / 3  # fmt: skip
    assert float(masked_bce_loss(logits, t1, mask)) == pytest.approx(expected, rel=1e-5)


def test_inputs_are_validated():
    xtr, ytr = _square_data(8, seed=0)
    with pytest.raises(ValueError, match=r"train_images has shape \(8, 32, 16\)"):
        train_multilabel(xtr[:, :, :16], ytr, xtr, ytr, _config(epochs=1))
    bad = ytr.copy()
    bad[0, 0] = 2
    with pytest.raises(ValueError, match=r"val_labels holds values \[2.0\]"):
        train_multilabel(xtr, ytr, xtr, bad, _config(epochs=1))


def _sensitivity_slow(y: np.ndarray, p: np.ndarray, t: float) -> float:
    pos = [pi for yi, pi in zip(y, p, strict=True) if yi == 1]
    return sum(pi >= t for pi in pos) / len(pos)


def test_operating_thresholds_reach_the_target_sensitivity():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, (200, 3)).astype(float)
    y[rng.random(y.shape) < 0.1] = np.nan
    p = np.clip(0.3 * y + rng.random(y.shape) * 0.7, 0, 1)
    labels = ["A", "B", "C"]
    thresholds = fit_operating_thresholds(y, p, target_sensitivity=0.8, labels=labels)
    for j, label in enumerate(labels):
        t = thresholds[label]
        assert _sensitivity_slow(y[:, j], p[:, j], t) >= 0.8
        higher = p[(y[:, j] == 1) & (p[:, j] > t), j]
        assert _sensitivity_slow(y[:, j], p[:, j], higher.min()) < 0.8  # t is the highest
    y[:, 1] = 0
    with pytest.raises(ValueError, match=r"no labelled positive image for \['B'\]"):
        fit_operating_thresholds(y, p, labels=labels)


def test_load_images_decodes_in_order_with_workers(tmp_path):
    rng = np.random.default_rng(0)
    arrays = rng.random((5, 16, 16), dtype=np.float32)
    files = []
    for i, arr in enumerate(arrays):
        files.append(tmp_path / f"{i}.npy")
        np.save(files[-1], arr)
    out = load_images(files, 16, np.load, workers=2, batch_size=2)
    assert out.dtype == np.float32 and np.array_equal(out, arrays)
