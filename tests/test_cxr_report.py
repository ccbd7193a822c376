"""The multisite_cxr deployment-plan report: view model, HTML sections, figures and page layout.

Inputs: see ``cxr_report_fixtures`` (real audit core on simulated data, or the last demo run;
synthetic contract A/B/C tables).
"""

from __future__ import annotations

import types
from dataclasses import fields, replace

import jinja2
import pandas as pd
import pytest
from cxr_report_fixtures import (
    FAKE_MRN,
    MISSING_WORDS,
    REF_GROUP,
    pages_text,
    render_pdf,
    report_inputs,
    synthetic_base_tables,
)
from matplotlib.colors import to_hex
from system_tools import require_tool

from clinaudit.audit.types import AuditInputError
from clinaudit.reporting import figures as figs
from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.studies.multisite_cxr.report import (
    CxrReportInputs,
    build_cxr_view,
    render_cxr_html,
    report_environment,
)
from clinaudit.studies.multisite_cxr.report_view import (
    SIMULATED_BAND,
    fmt_ci,
    fmt_num,
    fmt_p,
    fmt_pct,
    insufficient,
)
from clinaudit.validation.quality import QUALITY_FEATURES


@pytest.fixture(scope="module")
def synthetic_base() -> dict[str, pd.DataFrame]:
    return synthetic_base_tables()


@pytest.fixture(scope="module")
def synthetic_inputs(synthetic_base: dict[str, pd.DataFrame]) -> CxrReportInputs:
    return report_inputs(synthetic_base)


@pytest.fixture(scope="module")
def synthetic_view(synthetic_inputs: CxrReportInputs):
    return build_cxr_view(synthetic_inputs)


@pytest.fixture(scope="module")
def synthetic_html(synthetic_view) -> str:
    return render_cxr_html(synthetic_view, report_environment())


# ---------------------------------------------------------------- tests
def test_every_section_shows_numbers_from_the_tables(synthetic_inputs, synthetic_html) -> None:
    html, i = synthetic_html, synthetic_inputs
    for heading in (
        "1 Executive summary",
        "2 Cohorts and data quality",
        "3 Discrimination",
        "4 Calibration",
        "5 Input drift",
        "6 Worst cells and mitigations",
        "7 Deployment plan per site",
        "A Methods",
        "B Decision policy",
        "C Reporting checklist",
        "D Provenance",
    ):
        assert f">{heading}</h2>" in html
    cohort = i.cohort.set_index("site")
    assert f"<td>{int(cohort.loc['site_b', 'n_patients']):,}</td>" in html
    assert fmt_pct(cohort.loc["site_c", "ap_share"]) in html
    m = i.metrics.set_index(["group", "target"])
    eff = m.loc[("site_b", "Effusion")]
    assert fmt_ci(eff["sensitivity"], eff["sensitivity_ci_low"], eff["sensitivity_ci_high"]) in html
    assert fmt_ci(eff["auprc"], eff["auprc_ci_low"], eff["auprc_ci_high"]) in html
    assert "insufficient data (n_pos=3)" in html  # site_b / Hernia
    r = i.recalibration.set_index(["group", "target"]).loc[("site_b", "Effusion")]
    assert fmt_ci(r["ece_after"], r["ece_after_ci_low"], r["ece_after_ci_high"], 3) in html
    mmd = i.drift[(i.drift["feature"] == "__mmd__") & (i.drift["group"] == "site_b")].iloc[0]
    assert f"{fmt_num(mmd['statistic'], 3)} (" in html
    w = i.worst_cells.iloc[0]
    assert fmt_ci(w["auroc_drop"], w["auroc_drop_ci_low"], w["auroc_drop_ci_high"]) in html
    assert "Regression guard: REFUSED" in html and f"{REF_GROUP}/Effusion" in html
    css = {"NO-GO": "nogo", "GO": "go", "CONDITIONAL GO": "conditional"}
    for decision in i.decisions["decision"]:
        assert f'<span class="decision {css[decision]}">{decision}</span>' in html
    assert "weekly" in html and "re-audit after remediation" in html
    # Appendix B: the rules in plain words (the exact file is an attachment, hashed).
    assert i.policy.sha256 in html and "decision_policy.yaml" in html
    assert "Critical findings: Effusion, Pneumothorax, Atelectasis." in html
    assert "lower CI bound of AUROC &gt;= 0.60" in html.split("B Decision policy")[1]
    assert "TRIPOD+AI" in html and "CLAIM" in html
    assert i.provenance.input_batches["site_c/b0001"] in html and "Development signature" in html


def test_no_missing_value_words_and_no_identifiers(synthetic_html) -> None:
    assert not MISSING_WORDS.findall(synthetic_html)
    assert FAKE_MRN not in synthetic_html  # quarantine messages stay in the package
    assert "img1_" not in synthetic_html  # no image ids either
    assert '<meta charset="utf-8">' in synthetic_html


def test_strict_undefined_and_environment(synthetic_view) -> None:
    partial = types.SimpleNamespace(
        **{
            f.name: getattr(synthetic_view, f.name)
            for f in fields(synthetic_view)
            if f.name != "drift"
        }
    )
    with pytest.raises(jinja2.UndefinedError, match="drift"):
        render_cxr_html(partial, report_environment())  # type: ignore[arg-type]
    with pytest.raises(AuditInputError, match="StrictUndefined"):
        render_cxr_html(synthetic_view, jinja2.Environment(loader=report_environment().loader))


def test_same_inputs_same_html_and_figure_bytes(synthetic_inputs, synthetic_html) -> None:
    again = build_cxr_view(synthetic_inputs)
    assert render_cxr_html(again, report_environment()) == synthetic_html
    first = build_cxr_view(synthetic_inputs)
    assert [f.data for f in again.figures] == [f.data for f in first.figures]
    assert all(f.data.startswith(b"<?xml") and b"<dc:date>" not in f.data for f in first.figures)
    for f in first.figures:
        assert f'src="{f.path}"' in synthetic_html and "base64" not in synthetic_html


def test_simulated_band_only_for_simulated_data(synthetic_base, synthetic_html) -> None:
    assert f'<div class="sim-band">{SIMULATED_BAND}</div>' in synthetic_html
    real = render_cxr_html(
        build_cxr_view(report_inputs(synthetic_base, simulated=False)), report_environment()
    )
    assert "sim-band" not in real.split("<body>")[1] and SIMULATED_BAND not in real
    assert "All data are simulated" not in real


def test_figures_are_marked_simulated(synthetic_inputs) -> None:
    i = synthetic_inputs
    heat = figs.auroc_heatmap_figure(i.metrics, targets=FINDINGS, simulated=True, show_n_pos=True)
    assert "SIMULATED DATA" in heat.axes[0].get_title()
    assert "insufficient\n(n_pos=3)" in [t.get_text() for t in heat.axes[0].texts]
    rel = figs.reliability_diagrams_figure(i.reliability, [("site_b", "Effusion")], simulated=True)
    assert rel._suptitle.get_text() == "SIMULATED DATA"
    drift = figs.drift_bars_figure(
        i.drift, simulated=True, psi_moderate=0.1, psi_major=0.25, features=QUALITY_FEATURES[:3]
    )
    assert "SIMULATED DATA" in drift.axes[0].get_title()
    assert [t.get_text() for t in drift.axes[0].get_xticklabels()] == list(QUALITY_FEATURES[:3])
    for f in (heat, rel, drift):
        figs.plt.close(f)


def test_bad_inputs_name_the_table_and_the_fix(synthetic_inputs) -> None:
    i = synthetic_inputs
    with pytest.raises(AuditInputError, match=r"metrics.*\['auprc'\]"):
        build_cxr_view(replace(i, metrics=i.metrics.drop(columns="auprc")))
    with pytest.raises(AuditInputError, match="policy sha256"):
        build_cxr_view(replace(i, policy=replace(i.policy, sha256="0" * 64)))
    bad = i.decisions.assign(decision=["MAYBE", *i.decisions["decision"].iloc[1:]])
    with pytest.raises(AuditInputError, match="'MAYBE'"):
        build_cxr_view(replace(i, decisions=bad))
    with pytest.raises(AuditInputError, match="both or neither"):
        build_cxr_view(replace(i, retraining_summary=None))


def test_optional_stages_say_they_did_not_run(synthetic_inputs) -> None:
    view = build_cxr_view(
        replace(synthetic_inputs, recalibration=None, retraining=None, retraining_summary=None)
    )
    html = render_cxr_html(view, report_environment())
    assert "Site recalibration was not run in this audit." in html
    assert "Focused re-training was not run in this audit." in html
    assert not MISSING_WORDS.findall(html)


def test_synthetic_pdf_pages_band_and_page_numbers(synthetic_view, tmp_path) -> None:
    require_tool("pdftotext", "poppler-utils")
    pdf, n_pages, _ = render_pdf(synthetic_view, tmp_path)
    pages = pages_text(pdf)
    assert len(pages) == n_pages and 5 <= n_pages <= 9
    for k, text in enumerate(pages, start=1):
        assert "SIMULATED DATA — not real patients" in text
        assert f"Page {k} of {len(pages)}" in text
        assert synthetic_view.audit_id in text


def test_number_formats_never_print_missing_values() -> None:
    assert fmt_ci(0.5412, 0.4471, 0.6333) == "0.54 (0.45–0.63)"
    assert fmt_ci(-0.24, -0.31, -0.17) == "-0.24 (-0.31 to -0.17)"
    assert fmt_num(-0.0004) == "0.00" and fmt_pct(0.108) == "10.8%"
    assert fmt_ci(0.5, float("nan"), 0.7) == "0.50 (CI not estimable)"
    assert fmt_ci(None, 0.1, 0.2) == fmt_num(pd.NA) == "not estimable"
    assert fmt_p(0.0004) == "<0.001" and fmt_p(0.0123) == "0.012"
    assert insufficient(3, 497) == "insufficient data (n_pos=3)"
    assert insufficient(495, 5) == "insufficient data (n_neg=5)"


def test_psi_bars_clip_order_levels_and_legend() -> None:
    drift = pd.DataFrame(
        {
            "group": ["all", "all", "site_b", "site_b"],
            "feature": ["a", "b", "a", "b"],
            "psi": [0.05, 3.0, 0.3, 0.2],
        }
    )
    fig, ax = figs.plt.subplots()
    figs.psi_bars(
        ax,
        drift,
        ["b", "a"],
        ["all", "site_b"],
        clip=1.0,
        levels=((0.1, "orange", "PSI 0.1"), (0.25, "red", "PSI 0.25")),
        rotation=30,
        fontsize=6.0,
        legend_fontsize=5.0,
        labels={"all": "network"},
        colors={"all": "#1f5fa8"},
    )
    # Bars per group in the given feature order, clipped; the mapped group has its colour.
    assert [round(p.get_height(), 6) for p in ax.patches] == [1.0, 0.05, 0.2, 0.3]
    assert to_hex(ax.patches[0].get_facecolor()) == "#1f5fa8"
    assert [line.get_ydata()[0] for line in ax.lines] == [0.1, 0.25]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["b", "a"]
    legend = sorted(t.get_text() for t in ax.get_legend().get_texts())
    assert legend == ["PSI 0.1", "PSI 0.25", "network", "site_b"]
    figs.plt.close(fig)


def test_report_states_the_settings_the_run_used(synthetic_inputs) -> None:
    """Drift levels, multiplicity adjustments and alpha come from the run, never from defaults."""
    inputs = replace(
        synthetic_inputs,
        psi_moderate=0.2,
        psi_major=0.4,
        p_adjust="bh",
        drift_p_adjust="none",
        alpha=0.01,
        psi_noise_draws=750,
    )
    html = render_cxr_html(build_cxr_view(inputs), report_environment())
    assert "moderate above 0.2, major above 0.4" in html  # methods
    assert "the 1 - 0.01/m quantile of a parametric bootstrap with B = 750 draws" in html
    assert "750 simulated draws, at most 1% chance" in html  # drift section
    assert "within that noise bound is not flagged" in html
    assert "PSI (population stability index) above 0.2 is a moderate shift" in html  # drift
    assert "dashed lines: moderate 0.2, major 0.4" in html  # figure caption
    assert "the Benjamini–Hochberg method (false discovery rate 1%)" in html
    assert "Drift tests are not adjusted for multiplicity." in html
    assert "tests are not adjusted for multiplicity" in html
    assert "<th>BH p</th>" in html
    assert "Holm" not in html


def test_report_names_the_sites_left_out_of_the_audit(synthetic_inputs) -> None:
    why = "predictions are stale: 3 validated images without a prediction (re-run)"
    inputs = replace(synthetic_inputs, left_out={"site_z": why})
    html = render_cxr_html(build_cxr_view(inputs), report_environment())
    assert "<td>site_z</td><td>predictions are stale: 3 validated images" in html
    assert "Sites left out of this audit" in html
    plain = render_cxr_html(build_cxr_view(synthetic_inputs), report_environment())
    assert "left out of this audit" not in plain


def test_page_one_states_the_thresholds_the_sites_left_out_and_the_reference_self_check(
    synthetic_inputs,
) -> None:
    """Page 1 (the executive summary) says where the operating thresholds come from, names a
    site left out with its reason, and flags criteria the model fails on its own reference."""
    crit = synthetic_inputs.criteria
    row = crit[crit["criterion"] == "sensitivity"].iloc[[0]].copy()
    row["site"], row["value"], row["limit"] = "vendor_dev:test", 0.12, 0.5
    row["passed_before"], row["fails_at_reference"] = False, True
    derived = "derived by the audit, not the vendor: the highest threshold giving 80% sensitivity"
    inputs = replace(
        synthetic_inputs,
        threshold_source=derived,
        reference_check=row,
        left_out={"site_z": "its predictions stage failed: scores/site_z.csv line 3"},
    )
    html = render_cxr_html(build_cxr_view(inputs), report_environment())
    summary = html.split('<section id="executive-summary">')[1].split("</section>")[0]
    assert f'<p class="notice warn">Operating thresholds: {derived}.</p>' in summary
    assert "Reference self-check failed: on the vendor&#39;s own reference split " in summary
    assert "(vendor_dev:test) the model fails 1 blocking criteria" in summary
    assert f"(sensitivity for {row['finding'].iloc[0]} 0.12 vs limit 0.50)" in summary
    assert "Not audited (1 landed sites): site_z: its predictions stage failed" in summary
    plain = render_cxr_html(build_cxr_view(synthetic_inputs), report_environment())
    assert "Reference self-check failed" not in plain and "Not audited" not in plain
