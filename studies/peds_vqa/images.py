"""Pixels of peds_vqa questions: landed images (bytes checked against ingest) and blank controls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from clinaudit.sources.peds_vindr import load_peds_pixels

from .questions import blank_image

__all__ = ["ImageLoader", "image_loader"]


class ImageLoader:
    """``loader(row)``: the image of a validated-table row (``batch``, ``file``,
    ``image_sha256``) at ``size`` px, refused if its bytes changed since ingest;
    ``loader.blank(key)``: a blank control image."""

    def __init__(self, site_dir: Path, size: int) -> None:
        self.site_dir = site_dir
        self.size = size

    def __call__(self, row: Any) -> np.ndarray:
        return load_peds_pixels(
            self.site_dir / str(row.batch), str(row.file), self.size,
            expected_sha256=str(row.image_sha256),
        )  # fmt: skip

    def blank(self, key: str) -> np.ndarray:
        return blank_image(key, self.size)


def image_loader(study_dir: Path, site: str, size: int) -> ImageLoader:
    """The loader of one site's landed images (``<landing>/peds_vqa/<site>/<batch>/<file>``)."""
    return ImageLoader(Path(study_dir) / site, size)
