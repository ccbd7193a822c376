"""Versioned audit and hand-off policy of study ``multimodal_triage``: strict YAML, frozen
dataclasses.

The shipped policy is ``policy.yaml`` beside this module (every key is commented there); a user
may pass their own file. Parsing uses :class:`~clinaudit.audit.policy_base.PolicyBase`: every
unknown key, missing value, wrong type, out-of-range value or broken relation between keys is
collected and raised at once as a :class:`~clinaudit.audit.policy_yaml.PolicyError` naming the key
path and the fix; ``MultimodalPolicy.sha256`` is the sha256 of the file bytes.

>>> policy = MultimodalPolicy.load(SHIPPED_POLICY)
>>> policy.deferral.alpha_error, policy.held_out_clinic
(0.3, 'southside_clinic')
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

from clinaudit.audit.policy_base import COMPARATORS, Criterion, PolicyBase, statistic_phrase
from clinaudit.audit.policy_yaml import Field, Problem, leaf, section
from clinaudit.models.multimodal_config import ARMS
from clinaudit.sources.derm_sites import CATEGORY_CODES

__all__ = [
    "SHIPPED_POLICY",
    "STUDY",
    "DeferralSettings",
    "MultimodalCriteria",
    "MultimodalPolicy",
    "SplitSettings",
]

STUDY = "multimodal_triage"
SHIPPED_POLICY = Path(__file__).with_name("policy.yaml")

SCHEMA: dict[str, Field] = {
    "policy_id": leaf("str", "clinaudit.multimodal_triage.lesion_handoff"),
    "version": leaf("str", '"1.0.0"'),
    "study": leaf("str", STUDY),
    "title": leaf("str", default=""),
    "categories": section(
        labels=leaf("option_list", "[ACK, BCC, MEL, NEV, SCC, SEK]", options=CATEGORY_CODES),
        malignant=leaf("option_list", "[BCC, MEL, SCC]", options=CATEGORY_CODES),
    ),
    "clinics": section(held_out=leaf("str", "southside_clinic")),
    "splits": section(
        train=leaf("fraction", "0.60"),
        validation=leaf("fraction", "0.12"),
        calibration=leaf("fraction", "0.14"),
    ),
    "model": section(
        deployed_arm=leaf("option", "late_fusion", options=ARMS),
        fusion_arms=leaf("option_list", "[late_fusion, early_fusion]", options=ARMS),
        baselines=leaf("option_list", "[image_only, text_only]", options=ARMS),
        note_removal=section(moderate=leaf("fraction", "0.3"), severe=leaf("fraction", "0.7")),
    ),
    "evaluation": section(
        n_boot=leaf("int", "1000"), ci_level=leaf("fraction", "0.95"), n_bins=leaf("int", "10")
    ),
    "deferral": section(
        alpha_error=leaf("fraction", "0.30"),
        alpha_malignant=leaf("fraction", "0.10"),
        delta=leaf("fraction", "0.05"),
        min_coverage=leaf("fraction", "0.10"),
    ),
    "tone_audit": section(
        min_gap=leaf("fraction", "0.10"),
        family_alpha=leaf("fraction", "0.05"),
        n_boot=leaf("int", "500"),
        min_cell_n=leaf("int", "30"),
    ),
    "criteria": section(
        macro_f1=section(
            enabled=leaf("bool", default=True),
            statistic=leaf("option", default="ci_low", options=("ci_low", "estimate")),
            floor=leaf("fraction", "0.34"),
        ),
        malignant_sensitivity=section(
            enabled=leaf("bool", default=True),
            statistic=leaf("option", default="estimate", options=("ci_low", "estimate")),
            floor=leaf("fraction", "0.70"),
        ),
        deferral_certified=section(enabled=leaf("bool", default=True)),
        held_out_accepted_error=section(
            enabled=leaf("bool", default=True),
            statistic=leaf("option", default="ci_low", options=("ci_low", "estimate")),
            limit=leaf("fraction", "0.30"),
        ),
        fusion_vs_best_single=section(
            enabled=leaf("bool", default=True),
            statistic=leaf("option", default="ci_high", options=("ci_high", "estimate")),
            margin=leaf("fraction", "0.02"),
        ),
        tone_groups=section(enabled=leaf("bool", default=True)),
    ),
    "monitoring": section(
        review_sample_fraction=leaf("fraction", "0.05"),
        max_deferral_rate_shift=leaf("fraction", "0.10"),
        max_note_missing_shift=leaf("fraction", "0.15"),
        escalation=leaf("str_list", "[dermatology clinical lead, AI governance committee]"),
        recertify_on=leaf("str_list", "[new clinic, new model version]"),
    ),
}


@dataclass(frozen=True)
class SplitSettings:
    """Shares of the development patients per split (the rest is the in-distribution test)."""

    train: float
    validation: float
    calibration: float

    @property
    def test(self) -> float:
        """The in-distribution test share: ``1 - train - validation - calibration``."""
        return round(1.0 - self.train - self.validation - self.calibration, 10)


@dataclass(frozen=True)
class ModelSettings:
    """The deployed arm, the fusion arms and the single-modality baselines."""

    deployed_arm: str
    fusion_arms: tuple[str, ...]
    baselines: tuple[str, ...]
    note_removal: tuple[float, ...]

    @property
    def arms(self) -> tuple[str, ...]:
        """Every arm the audit needs: the baselines first, then the fusion arms."""
        seen = dict.fromkeys((*self.baselines, *self.fusion_arms, self.deployed_arm))
        return tuple(seen)


@dataclass(frozen=True)
class EvaluationSettings:
    """Bootstrap replicates, interval level and ECE bins of every reported metric."""

    n_boot: int
    ci_level: float
    n_bins: int


@dataclass(frozen=True)
class DeferralSettings:
    """The joint Learn-then-Test guarantee of the deferral rule."""

    alpha_error: float
    alpha_malignant: float
    delta: float
    min_coverage: float


@dataclass(frozen=True)
class ToneAuditSettings:
    """The skin-tone gap rule and the smallest tone x clinic cell shown."""

    min_gap: float
    family_alpha: float
    n_boot: int
    min_cell_n: int


@dataclass(frozen=True)
class MultimodalCriteria:
    """What a GO needs (``deferral_certified`` and ``tone_groups`` are plain switches;
    ``fusion_vs_best_single.threshold`` is the non-inferiority margin)."""

    macro_f1: Criterion
    malignant_sensitivity: Criterion
    deferral_certified: bool
    held_out_accepted_error: Criterion
    fusion_vs_best_single: Criterion
    tone_groups: bool


@dataclass(frozen=True)
class MultimodalMonitoring:
    """Review sampling of accepted outputs, drift alarms and who is told."""

    review_sample_fraction: float
    max_deferral_rate_shift: float
    max_note_missing_shift: float
    escalation: tuple[str, ...]
    recertify_on: tuple[str, ...]


def _removal_fractions(values: dict[str, Any]) -> tuple[tuple[float, ...], list[Problem]]:
    mod, sev = float(values["moderate"]), float(values["severe"])
    if not 0.0 < mod < sev < 1.0:
        return (), [
            Problem(
                "model.note_removal", f"moderate {mod:g}, severe {sev:g}",
                "0 < moderate < severe < 1", "e.g. moderate: 0.3, severe: 0.7",
            )
        ]  # fmt: skip
    return (mod, sev), []


@dataclass(frozen=True, kw_only=True)
class MultimodalPolicy(PolicyBase):
    """A loaded ``multimodal_triage`` policy: the envelope of :class:`PolicyBase` and its
    sections."""

    SCHEMA: ClassVar = SCHEMA
    STUDY: ClassVar = STUDY

    labels: tuple[str, ...]
    malignant: tuple[str, ...]
    held_out_clinic: str
    splits: SplitSettings
    model: ModelSettings
    evaluation: EvaluationSettings
    deferral: DeferralSettings
    tone_audit: ToneAuditSettings
    criteria: MultimodalCriteria
    monitoring: MultimodalMonitoring

    @classmethod
    def cross_checks(cls, values: dict[str, Any]) -> list[Problem]:
        """Relations between keys (the schema checks each key alone)."""
        problems = []
        cat = values["categories"]
        if len(cat["labels"]) < 2:
            problems.append(Problem("categories.labels", repr(cat["labels"]), "two or more", ""))
        stray = sorted(set(cat["malignant"]) - set(cat["labels"]))
        if stray or not cat["malignant"]:
            problems.append(
                Problem(
                    "categories.malignant", repr(cat["malignant"]),
                    "one or more of categories.labels", "list the malignant categories",
                )
            )  # fmt: skip
        sp = values["splits"]
        test = 1.0 - sp["train"] - sp["validation"] - sp["calibration"]
        if test < 0.05 or min(sp.values()) <= 0:
            problems.append(
                Problem(
                    "splits", repr(sp), "positive shares leaving >= 0.05 for the test split",
                    "e.g. train 0.60, validation 0.12, calibration 0.14",
                )
            )  # fmt: skip
        model = values["model"]
        if len(model["baselines"]) < 1 or not model["fusion_arms"]:
            problems.append(
                Problem("model", repr(model), "a baseline and a fusion arm", "see policy.yaml")
            )
        if model["deployed_arm"] in model["baselines"]:
            problems.append(
                Problem(
                    "model.deployed_arm", model["deployed_arm"], "not one of model.baselines",
                    "deploy a fusion arm; the baselines are what it is compared with",
                )
            )  # fmt: skip
        _, bad = _removal_fractions(model["note_removal"])
        problems += bad
        lim = values["criteria"]["held_out_accepted_error"]
        if lim["enabled"] and lim["limit"] < values["deferral"]["alpha_error"]:
            problems.append(
                Problem(
                    "criteria.held_out_accepted_error.limit", repr(lim["limit"]),
                    f">= deferral.alpha_error ({values['deferral']['alpha_error']})",
                    "a check at the held-out clinic cannot be stricter than what was certified",
                )
            )  # fmt: skip
        return problems

    @classmethod
    def from_values(cls, values: dict[str, Any], *, text: str, sha256: str, source: str) -> Self:
        c, m, mon = values["criteria"], values["model"], values["monitoring"]
        removal, _ = _removal_fractions(m["note_removal"])
        return cls(
            policy_id=values["policy_id"],
            version=values["version"],
            study=values["study"],
            title=values["title"],
            text=text,
            sha256=sha256,
            source=source,
            labels=tuple(values["categories"]["labels"]),
            malignant=tuple(values["categories"]["malignant"]),
            held_out_clinic=str(values["clinics"]["held_out"]),
            splits=SplitSettings(**values["splits"]),
            model=ModelSettings(
                m["deployed_arm"], tuple(m["fusion_arms"]), tuple(m["baselines"]), removal
            ),
            evaluation=EvaluationSettings(**values["evaluation"]),
            deferral=DeferralSettings(**values["deferral"]),
            tone_audit=ToneAuditSettings(**values["tone_audit"]),
            criteria=MultimodalCriteria(
                macro_f1=Criterion.from_values(c["macro_f1"], "floor"),
                malignant_sensitivity=Criterion.from_values(c["malignant_sensitivity"], "floor"),
                deferral_certified=bool(c["deferral_certified"]["enabled"]),
                held_out_accepted_error=Criterion.from_values(
                    c["held_out_accepted_error"], "limit"
                ),
                fusion_vs_best_single=Criterion.from_values(c["fusion_vs_best_single"], "margin"),
                tone_groups=bool(c["tone_groups"]["enabled"]),
            ),
            monitoring=MultimodalMonitoring(
                mon["review_sample_fraction"],
                mon["max_deferral_rate_shift"],
                mon["max_note_missing_shift"],
                tuple(mon["escalation"]),
                tuple(mon["recertify_on"]),
            ),
        )

    def rule_lines(self) -> tuple[str, ...]:
        """The policy's rules in plain words, one line each (the document's appendix)."""
        c, d, s, t = self.criteria, self.deferral, self.splits, self.tone_audit
        crit = [
            (c.macro_f1, c.macro_f1.phrase("held-out macro F1", COMPARATORS[">="])),
            (
                c.malignant_sensitivity,
                c.malignant_sensitivity.phrase("held-out malignant sensitivity", COMPARATORS[">="]),
            ),
            (
                c.held_out_accepted_error,
                c.held_out_accepted_error.phrase(
                    "held-out error of accepted outputs", COMPARATORS["<="]
                ),
            ),
            (
                c.fusion_vs_best_single,
                f"{statistic_phrase(c.fusion_vs_best_single.statistic)}fusion minus best single "
                f"modality (macro F1) {COMPARATORS['>=']} -{c.fusion_vs_best_single.threshold:.2f}",
            ),
        ]
        crit_text = "; ".join(text for rule, text in crit if rule.enabled)
        if c.deferral_certified:
            crit_text = "a certified deferral rule; " + crit_text
        if c.tone_groups:
            crit_text += "; no skin-tone group with a gap or without evidence"
        return (
            f"{self.policy_id} version {self.version}: {self.title}.",
            f"Categories {', '.join(self.labels)}; malignant: {', '.join(self.malignant)}.",
            f"Held-out (deployment) clinic: {self.held_out_clinic}. Development patients split "
            f"train {s.train:g} / validation {s.validation:g} / calibration {s.calibration:g} / "
            f"test {s.test:g} by patient.",
            f"Deployed arm {self.model.deployed_arm}; compared with "
            f"{', '.join(self.model.baselines)}; notes removed: "
            + ", ".join(f"{f:.0%}" for f in self.model.note_removal)
            + ".",
            f"Deferral: P(error of accepted <= {d.alpha_error:g} and malignant miss rate <= "
            f"{d.alpha_malignant:g}) >= {1 - d.delta:g} (Learn-then-Test on the calibration "
            f"split, first tested threshold accepts {d.min_coverage:.0%}).",
            f"Skin tone: gap >= {t.min_gap:.0%} accuracy, Holm family alpha {t.family_alpha:g}; "
            "groups that cannot show or exclude it are insufficient evidence.",
            "Criteria: " + crit_text + ".",
            f"Monitoring: review {self.monitoring.review_sample_fraction:.0%} of accepted outputs; "
            f"alarm on a deferral-rate shift > {self.monitoring.max_deferral_rate_shift:.0%} or a "
            f"missing-note shift > {self.monitoring.max_note_missing_shift:.0%}.",
        )

    def describe(self) -> str:
        """:meth:`rule_lines` joined by new lines."""
        return "\n".join(self.rule_lines())
