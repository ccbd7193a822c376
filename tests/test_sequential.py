"""Anytime-valid monitoring of the re-read stream (audit/sequential.py)."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

from clinaudit.audit import sequential
from clinaudit.audit.sequential import detection_delay, monitor_stream
from clinaudit.audit.types import AuditInputError


def _slow_e_values(x, r0, alts):
    """The e-process written out: one running product per alternative, averaged, step by step."""
    products = [1.0] * len(alts)
    out = []
    for xi in x:
        for j, r in enumerate(alts):
            products[j] *= (r / r0) if xi else ((1 - r) / (1 - r0))
        out.append(sum(products) / len(products))
    return out


def test_e_value_and_alarm_equal_the_slow_reference() -> None:
    rng = np.random.default_rng(0)
    alts = (0.03, 0.05, 0.1)
    for _ in range(20):
        x = (rng.random(300) < rng.choice([0.01, 0.04, 0.08])).astype(int)
        slow = _slow_e_values(x, 0.02, alts)
        got = monitor_stream(x, null_rate=0.02, level=0.05, alternatives=alts)
        assert got.e_value == pytest.approx(slow[-1], rel=1e-9)
        assert got.max_e_value == pytest.approx(max(slow), rel=1e-9)
        first = next((i + 1 for i, e in enumerate(slow) if e >= 20.0), None)
        assert got.alarm_at == first
        assert got.n_audited == 300 and got.n_events == int(x.sum())


def test_false_alarms_stay_under_the_level_over_the_whole_stream() -> None:
    at_null = detection_delay(0.02, null_rate=0.02, level=0.05, horizon=2000, n_sims=2000, seed=3)
    below = detection_delay(0.01, null_rate=0.02, level=0.05, horizon=2000, n_sims=2000, seed=4)
    assert at_null["alarm_share"] <= 0.05
    assert below["alarm_share"] <= at_null["alarm_share"]


def test_a_tripled_error_rate_is_caught_about_as_fast_as_walds_approximation() -> None:
    r0, r1, level = 0.02, 0.06, 0.05
    d = detection_delay(r1, null_rate=r0, level=level, horizon=3000, n_sims=1000, seed=5)
    assert d["alarm_share"] >= 0.99
    kl = r1 * math.log(r1 / r0) + (1 - r1) * math.log((1 - r1) / (1 - r0))
    wald = math.log(1 / level) / kl  # audits a one-alternative SPRT at r1 needs on average
    assert wald / 2 < d["median_audits_to_alarm"] < wald * 2
    assert d["p90_audits_to_alarm"] >= d["median_audits_to_alarm"]


def test_bad_streams_and_settings_are_named() -> None:
    with pytest.raises(AuditInputError, match="outcomes.*audit 3"):
        monitor_stream([0, 1, 2], null_rate=0.02)
    with pytest.raises(AuditInputError, match="alternatives.*above null_rate"):
        monitor_stream([0], null_rate=0.05, alternatives=[0.04])
    with pytest.raises(AuditInputError, match="null_rate.*rate in \\(0, 1\\)"):
        monitor_stream([0], null_rate=0.0)
    empty = monitor_stream([], null_rate=0.02)
    assert not empty.alarm and empty.e_value == 1.0


def test_docstring_examples_run() -> None:
    result = doctest.testmod(sequential, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
