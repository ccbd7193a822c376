"""Study ``multimodal_triage``: skin-lesion category from a photo and a clinical note.

Image-only, note-only, late-fusion and cross-attention early-fusion arms trained under one budget
on the development clinics; evaluation at a held-out clinic (macro F1, per-category sensitivity /
specificity, fusion minus the best single modality, the in-distribution -> held-out drop, notes
removed); a calibrated review score with a Learn-then-Test deferral rule; a skin-tone audit under
two annotators and ITA; a go / no-go for the held-out clinic; and a signed 5-page clinical hand-off
document. Importing this package registers the study (:class:`~.study.MultimodalTriage`).
"""

from clinaudit.studies.registry import register_study

from .study import MultimodalTriage

__all__ = ["MultimodalTriage"]

register_study(MultimodalTriage())
