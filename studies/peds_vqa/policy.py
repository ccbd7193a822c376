"""Versioned evaluation policy of study ``peds_vqa``: strict YAML, frozen dataclasses.

The shipped policy is ``policy.yaml`` beside this module (every key is commented there). It fixes
how the evaluation is built and judged *before* a model is scored: the patient-disjoint splits,
the 200-question evaluation set and its controls, how answers are calibrated, how the operating
threshold of each category is chosen (on the validation split, never on test questions), how
calibration is estimated at a small n, how localization maps are scored, how latency is timed, and
the brief's success criteria. Parsing uses :class:`~clinaudit.audit.policy_base.PolicyBase`: every
unknown key, wrong type, out-of-range value or broken relation is raised at once, naming the key
path and the fix.

>>> policy = PedsVqaPolicy.load(SHIPPED_POLICY)
>>> policy.evaluation_set.per_category, policy.criteria.sensitivity.threshold
(50, 0.8)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

from clinaudit.audit.policy_base import COMPARATORS, Criterion, PolicyBase
from clinaudit.audit.policy_yaml import Field, Problem, leaf, section
from clinaudit.sources.peds_render import PEDS_CATEGORIES

__all__ = [
    "SHIPPED_POLICY",
    "STUDY",
    "CalibrationSettings",
    "EvaluationSetSettings",
    "LatencySettings",
    "LocalizationSettings",
    "OperatingPointSettings",
    "PedsCriteria",
    "PedsVqaPolicy",
    "SplitSettings",
]

STUDY = "peds_vqa"
SHIPPED_POLICY = Path(__file__).with_name("policy.yaml")
SPLITS: tuple[str, ...] = ("train", "calibration", "validation", "test")

SCHEMA: dict[str, Field] = {
    "policy_id": leaf("str", "clinaudit.peds_vqa.research_evaluation"),
    "version": leaf("str", '"1.0.0"'),
    "study": leaf("str", STUDY),
    "title": leaf("str", default=""),
    "categories": leaf("option_list", "[consolidation, effusion]", options=PEDS_CATEGORIES),
    "splits": section(
        train=leaf("fraction", "0.55"),
        calibration=leaf("fraction", "0.15"),
        validation=leaf("fraction", "0.10"),
        test=leaf("fraction", "0.20"),
        salt=leaf("str", "peds-vqa-split-v1"),
    ),
    "evaluation_set": section(
        per_category=leaf("int", "50"),
        yes_share=leaf("fraction", "0.5"),
        paraphrases=leaf("int", "3"),
        blank_controls=leaf("int", "40"),
        shuffled_controls=leaf("int", "40"),
        seed=leaf("int", "17"),
    ),
    "calibration": section(
        method=leaf("option", "temperature", options=("temperature", "platt")),
        per_category=leaf("bool", default=True),
        n_bins=leaf("int", "10"),
        binning=leaf("option", "mass", options=("mass", "width")),
        n_boot=leaf("int", "1000"),
        n_sim=leaf("int", "2000"),
        ci_level=leaf("fraction", "0.95"),
    ),
    "operating_point": section(
        min_specificity=leaf("fraction", "0.85"),
    ),
    "localization": section(
        map_quantile=leaf("fraction", "0.8"),
        faithfulness_answers=leaf("int", "24"),
        faithfulness_steps=leaf("int", "16"),
        randomization_answers=leaf("int", "16"),
        report_maps=leaf("int", "8"),
    ),
    "latency": section(
        questions=leaf("int", "200"),
        warmup=leaf("int", "5"),
        precision=leaf("option", "auto", options=("auto", "fp32", "bf16")),
    ),
    "criteria": section(
        sensitivity=section(
            enabled=leaf("bool", default=True),
            statistic=leaf("option", default="estimate", options=("estimate", "ci_low")),
            floor=leaf("fraction", "0.80"),
        ),
        specificity=section(
            enabled=leaf("bool", default=True),
            statistic=leaf("option", default="estimate", options=("estimate", "ci_low")),
            floor=leaf("fraction", "0.85"),
        ),
        ece=section(
            enabled=leaf("bool", default=True),
            statistic=leaf("option", default="estimate", options=("estimate", "ci_high")),
            limit=leaf("fraction", "0.05"),
        ),
    ),
}


@dataclass(frozen=True)
class SplitSettings:
    """Patient-disjoint shares of the pediatric cohort (salted hash of each patient's first
    landed image; :func:`~clinaudit.studies.peds_vqa.questions.assign_splits`)."""

    train: float
    calibration: float
    validation: float
    test: float
    salt: str

    def shares(self) -> dict[str, float]:
        """Split name -> share, in :data:`SPLITS` order."""
        return {s: float(getattr(self, s)) for s in SPLITS}


@dataclass(frozen=True)
class EvaluationSetSettings:
    """The fixed evaluation set: ``per_category`` questions per category (``yes_share`` of them
    with answer yes) on test patients, paraphrases of each, and image controls."""

    per_category: int
    yes_share: float
    paraphrases: int
    blank_controls: int
    shuffled_controls: int
    seed: int


@dataclass(frozen=True)
class CalibrationSettings:
    """How P(yes) is recalibrated (fitted on the calibration split) and how calibration is
    estimated (debiased ECE, bootstrap CI, the perfectly-calibrated reference at the same n)."""

    method: str
    per_category: bool
    n_bins: int
    binning: str
    n_boot: int
    n_sim: int
    ci_level: float


@dataclass(frozen=True)
class OperatingPointSettings:
    """Each category's threshold: the highest validation sensitivity at a validation
    specificity of at least ``min_specificity``."""

    min_specificity: float


@dataclass(frozen=True)
class LocalizationSettings:
    """How maps are scored (``map_quantile``: the map is thresholded there for box IoU) and how
    many true-positive answers get the costlier checks."""

    map_quantile: float
    faithfulness_answers: int
    faithfulness_steps: int
    randomization_answers: int
    report_maps: int


@dataclass(frozen=True)
class LatencySettings:
    """Timing of answers: ``questions`` timed after ``warmup`` untimed ones."""

    questions: int
    warmup: int
    precision: str


@dataclass(frozen=True)
class PedsCriteria:
    """The brief's success criteria, judged per category on the pooled test set (ECE pooled)."""

    sensitivity: Criterion
    specificity: Criterion
    ece: Criterion


@dataclass(frozen=True, kw_only=True)
class PedsVqaPolicy(PolicyBase):
    """A loaded ``peds_vqa`` policy: the envelope of :class:`PolicyBase` and its sections."""

    SCHEMA: ClassVar = SCHEMA
    STUDY: ClassVar = STUDY

    categories: tuple[str, ...]
    splits: SplitSettings
    evaluation_set: EvaluationSetSettings
    calibration: CalibrationSettings
    operating_point: OperatingPointSettings
    localization: LocalizationSettings
    latency: LatencySettings
    criteria: PedsCriteria

    @classmethod
    def cross_checks(cls, values: dict[str, Any]) -> list[Problem]:
        """Relations between keys (the schema checks each key alone)."""
        problems = []
        if not values["categories"]:
            problems.append(
                Problem("categories", "[]", "at least one category", f"use {PEDS_CATEGORIES}")
            )
        total = sum(float(values["splits"][s]) for s in SPLITS)
        if abs(total - 1.0) > 1e-9:
            problems.append(
                Problem(
                    "splits",
                    f"shares summing to {total:g}",
                    "train + calibration + validation + test = 1",
                    "adjust the four shares",
                )
            )
        for s in SPLITS:
            if float(values["splits"][s]) <= 0:
                problems.append(Problem(f"splits.{s}", "0", "> 0", "every split needs patients"))
        ev = values["evaluation_set"]
        n_yes = ev["per_category"] * ev["yes_share"]
        if ev["per_category"] < 2 or abs(n_yes - round(n_yes)) > 1e-9:
            problems.append(
                Problem(
                    "evaluation_set.yes_share",
                    repr(ev["yes_share"]),
                    f"a share giving a whole number of yes questions of {ev['per_category']}",
                    "e.g. 0.5 with per_category 50 (25 yes / 25 no)",
                )
            )
        if ev["paraphrases"] < 1:
            problems.append(
                Problem("evaluation_set.paraphrases", repr(ev["paraphrases"]), ">= 1", "use 3")
            )
        cal = values["calibration"]
        if cal["n_bins"] < 2:
            problems.append(Problem("calibration.n_bins", repr(cal["n_bins"]), ">= 2", "use 10"))
        return problems

    @classmethod
    def from_values(cls, values: dict[str, Any], *, text: str, sha256: str, source: str) -> Self:
        c = values["criteria"]
        return cls(
            policy_id=values["policy_id"],
            version=values["version"],
            study=values["study"],
            title=values["title"],
            text=text,
            sha256=sha256,
            source=source,
            categories=tuple(values["categories"]),
            splits=SplitSettings(**values["splits"]),
            evaluation_set=EvaluationSetSettings(**values["evaluation_set"]),
            calibration=CalibrationSettings(**values["calibration"]),
            operating_point=OperatingPointSettings(**values["operating_point"]),
            localization=LocalizationSettings(**values["localization"]),
            latency=LatencySettings(**values["latency"]),
            criteria=PedsCriteria(
                sensitivity=Criterion.from_values(c["sensitivity"], "floor"),
                specificity=Criterion.from_values(c["specificity"], "floor"),
                ece=Criterion.from_values(c["ece"], "limit"),
            ),
        )

    def describe(self) -> str:
        """The policy's rules in plain words, one line per rule (the report's appendix)."""
        return "\n".join(self.rule_lines())

    def rule_lines(self) -> tuple[str, ...]:
        """:meth:`describe` as lines."""
        c, ev, cal, sp = self.criteria, self.evaluation_set, self.calibration, self.splits
        crit = [
            (c.sensitivity, c.sensitivity.phrase("sensitivity", COMPARATORS[">="])),
            (c.specificity, c.specificity.phrase("specificity", COMPARATORS[">="])),
            (c.ece, c.ece.phrase("debiased ECE (pooled test)", COMPARATORS["<="])),
        ]
        n_yes = round(ev.per_category * ev.yes_share)
        return (
            f"{self.policy_id} version {self.version}: {self.title}.",
            f"Categories: {', '.join(self.categories)}.",
            f"Patient-disjoint splits: train {sp.train:g}, calibration {sp.calibration:g}, "
            f"validation {sp.validation:g}, test {sp.test:g} (keyed on '{sp.salt}').",
            f"Evaluation set: {ev.per_category} questions per category ({n_yes} yes / "
            f"{ev.per_category - n_yes} no) on test patients, {ev.paraphrases} paraphrases each, "
            f"{ev.blank_controls} blank-image and {ev.shuffled_controls} shuffled-image controls "
            f"(seed {ev.seed}); the pooled test set is every test image x category.",
            f"Calibration: {cal.method} scaling"
            + (" per category" if cal.per_category else " shared by all categories")
            + f", fitted on the calibration split; debiased ECE with {cal.n_bins} "
            f"{'equal-mass' if cal.binning == 'mass' else 'equal-width'} bins, bootstrap "
            f"{cal.n_boot} replicates, reference of a perfectly calibrated model from "
            f"{cal.n_sim} simulations at the same n.",
            "Operating point per category: the highest validation sensitivity at validation "
            f"specificity >= {self.operating_point.min_specificity:g}; never tuned on test.",
            "Success (per category, pooled test): "
            + "; ".join(text for rule, text in crit if rule.enabled)
            + ".",
        )
