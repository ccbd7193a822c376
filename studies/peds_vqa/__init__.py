"""Study ``peds_vqa``: yes/no questions about pediatric chest X-rays.

A small vision-language model (a real Hugging Face class built here) is pretrained on simulated
adult films and LoRA-tuned (language model only) on children; the audit recalibrates P(yes) per
category, fixes thresholds on validation, judges the brief's criteria with intervals on a fixed
200-question evaluation set and a pooled test set, runs blank / shuffled-image and paraphrase
controls, scores Grad-CAM and attention-rollout maps against ground-truth boxes, times each answer
and signs a research-grade evaluation report. Importing this package registers the study
(:class:`~.study.PedsVqa`).
"""

from clinaudit.studies.registry import register_study

from .study import PedsVqa

__all__ = ["PedsVqa"]

register_study(PedsVqa())
