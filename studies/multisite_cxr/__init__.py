"""Study ``multisite_cxr``: a 14-finding chest X-ray classifier audited at several sites.

Importing the package registers the study (:class:`~.study.MultisiteCxr`).
"""

from clinaudit.studies.registry import register_study

from .study import MultisiteCxr

__all__ = ["MultisiteCxr"]

register_study(MultisiteCxr())
