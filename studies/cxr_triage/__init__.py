"""Study ``cxr_triage``: normal/abnormal chest X-ray triage in front of the reporting queue.

A backbone fine-tuned for triage (next to the same network trained from scratch), temperature
scaling on its logits, an auto-clear bucket whose miss rate is certified by Learn-then-Test (and
re-certified per subgroup), a flag bucket with a certified PPV, an uncertain bucket read in order
of value, a throughput simulation of the reporting queue under the department's capacity, a
go / no-go under the policy, a re-read monitoring plan, and a signed 3-page operations memo.
Importing this package registers the study (:class:`~.study.CxrTriage`).
"""

from clinaudit.studies.registry import register_study

from .study import CxrTriage

__all__ = ["CxrTriage"]

register_study(CxrTriage())
