"""Studies on the generic pipeline: the protocol, the registry and the built-in studies.

>>> from clinaudit.studies import get_study
>>> get_study("multisite_cxr").partition_by
'site'

Importing this package registers the built-in studies (one package each); a study of your own
subclasses :class:`~clinaudit.studies.base.Study` and calls :func:`register_study` (see
docs/architecture.md, "Adding a study").
"""

from .base import Study
from .registry import UnknownStudyError, get_study, register_study, registered_studies

__all__ = ["Study", "UnknownStudyError", "get_study", "register_study", "registered_studies"]

# The built-in studies register themselves on import (after the registry exists), in demo order:
# cxr_triage after multisite_cxr, so its demo fine-tunes the vendor model the demo just trained.
from . import multisite_cxr as _multisite_cxr  # noqa: F401, I001
from . import sepsis_ews as _sepsis_ews  # noqa: F401
from . import cxr_triage as _cxr_triage  # noqa: F401
from . import multimodal_triage as _multimodal_triage  # noqa: F401
from . import peds_vqa as _peds_vqa  # noqa: F401
