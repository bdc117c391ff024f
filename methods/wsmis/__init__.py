"""Viniavskyi et al. 2020 (WSMIS): CAM -> IRNet -> segmentation, registered as ``wsmis``."""

from __future__ import annotations

from .model import WSMIS, effective_radius

__all__ = ["WSMIS", "effective_radius"]
