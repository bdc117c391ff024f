"""The film's tone curve (exposure to 8-bit grey levels)."""

from __future__ import annotations

import cv2
import numpy as np

from .anatomy import _Draws

_TONE_X = np.linspace(0.0, 1.0, 256)
_TONE_A = 6.0 + 244.0 * _TONE_X  # the tone curve is _TONE_A + bend * _TONE_B
_TONE_B = 244.0 * _TONE_X * (1.0 - _TONE_X)


def _tone(d: _Draws, a_img: np.ndarray) -> np.ndarray:
    """Film tone curve with exposure variation: attenuation ``float32`` -> ``uint8``.

    The attenuation window ``[lo, hi]`` (exposure and contrast per image) maps linearly to
    256 levels, then a per-image quadratic bend (gamma-like) maps them to 6..250 (lookup).
    """
    lo, hi = -0.05 + d.u(-0.04, 0.04), 1.0 + d.u(-0.08, 0.08)
    bend = d.u(-0.35, 0.2) - 0.15  # y = x + bend * x * (1 - x): < 0 darkens the mid-tones
    lut = np.rint(_TONE_B * bend + _TONE_A).astype(np.uint8)  # 6 + 244 (x + bend x (1 - x))
    # |alpha * a + beta| saturated to 0..255: values below `lo` (the black level) fold back
    # into the black noise, which is harmless
    idx = cv2.convertScaleAbs(a_img, alpha=255.0 / (hi - lo), beta=-255.0 * lo / (hi - lo))
    return cv2.LUT(idx, lut)


# ---------------------------------------------------------------------------------------------
# Public rendering API
# ---------------------------------------------------------------------------------------------
