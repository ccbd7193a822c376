"""Study ``sepsis_ews``: a sepsis early-warning score audited across a four-hospital ICU network.

Subgroup discrimination and calibration, TPR/FPR fairness gaps over sex, race/ethnicity and age
band (and their intersections), alert burden, drift against the model card's training-data
summary, a cross-fitted mitigation of the largest gap, a GO / CONDITIONAL GO / NO-GO
recommendation under a versioned policy, a monitoring plan, and a signed report. One partition
per hospital. Importing this package registers the study (:class:`~.study.SepsisEws`).
"""

from clinaudit.studies.registry import register_study

from .study import SepsisEws

__all__ = ["SepsisEws"]

register_study(SepsisEws())
