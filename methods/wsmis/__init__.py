"""Viniavskyi et al. 2020 (WSMIS): CAM -> IRNet -> segmentation, registered as ``wsmis``."""

from __future__ import annotations

from .pipeline import WSMIS

__all__ = ["WSMIS"]
