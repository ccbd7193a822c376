"""Shift scenarios with known truth, for validating label-free estimates (tests and bench).

A binary finding with a latent severity ``x``; the model's score is a monotone but miscalibrated
function of ``x``. The reference is labelled; the target's labels are the truth the estimate is
scored against when they "land".

* ``none``: the target is drawn like the reference;
* ``covariate``: the target's ``x`` moves (``P(x)`` changes, ``P(y | x)`` does not): calibration
  learnt on the reference transports;
* ``prevalence``: label shift (``P(x | y)`` unchanged, the prior moves from 0.3 to 0.6);
* ``concept``: ``P(y | x)`` changes (a flatter, shifted label model at the target) and the
  inputs do not: no label-free method can see it from the scores (Garg et al. 2022);
* ``concept_drift``: a new acquisition (``x`` far outside the reference) with another label
  model: the support gate must withhold the estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SCENARIOS", "ShiftSample", "simulate_shift"]

SCENARIOS: tuple[str, ...] = ("none", "covariate", "prevalence", "concept", "concept_drift")


@dataclass(frozen=True)
class ShiftSample:
    """Reference scores and labels, target scores and the target's (hidden) labels."""

    reference_scores: np.ndarray
    reference_labels: np.ndarray
    target_scores: np.ndarray
    target_labels: np.ndarray
    threshold: float


def _score(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(0.8 * x + 0.3)))


def _labels_given_x(x: np.ndarray, rng: np.random.Generator, a: float, b: float) -> np.ndarray:
    return (rng.random(x.size) < 1.0 / (1.0 + np.exp(-(a * x + b)))).astype(int)


def simulate_shift(
    scenario: str, *, n_reference: int = 2000, n_target: int = 600, seed: int = 0
) -> ShiftSample:
    """One reference / target pair of ``scenario`` (see the module docstring).

    >>> s = simulate_shift("prevalence", seed=1)
    >>> round(float(s.reference_labels.mean()), 1), round(float(s.target_labels.mean()), 1)
    (0.3, 0.6)
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; use one of {SCENARIOS}")
    rng = np.random.default_rng(seed)
    if scenario == "prevalence":
        ry = (rng.random(n_reference) < 0.3).astype(int)
        ty = (rng.random(n_target) < 0.6).astype(int)
        rx = rng.normal(1.6 * ry, 1.0)
        tx = rng.normal(1.6 * ty, 1.0)
        return ShiftSample(_score(rx), ry, _score(tx), ty, float(_score(np.array([0.8]))[0]))
    rx = rng.normal(0.0, 1.0, n_reference)
    ry = _labels_given_x(rx, rng, 1.8, -0.9)
    mu, sd = {"none": (0.0, 1.0), "covariate": (0.9, 0.6), "concept": (0.0, 1.0),
              "concept_drift": (3.5, 1.0)}[scenario]  # fmt: skip
    tx = rng.normal(mu, sd, n_target)
    a, b = (0.7, -0.2) if scenario.startswith("concept") else (1.8, -0.9)
    ty = _labels_given_x(tx, rng, a, b)
    return ShiftSample(_score(rx), ry, _score(tx), ty, float(_score(np.array([0.5]))[0]))
