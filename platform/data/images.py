"""Image decoding and resizing shared by every real-dataset loader.

Decoding:

* PNG / JPEG (and anything else OpenCV reads) go through :func:`cv2.imread` with
  ``IMREAD_UNCHANGED``. Colour images are converted to grayscale (``BGR2GRAY`` / ``BGRA2GRAY``);
  8-bit data is kept as is; 16-bit (and float) data is min–max stretched to ``0..255`` over the
  image's own range (so a 12-bit film stored in 16-bit containers is not crushed into the bottom
  sixteenth of the range, which a plain ``>> 8`` would do), then rounded.
* DICOM (``.dcm``) goes through :mod:`pydicom` (optional dependency ``lesionsweep[dicom]``): the
  modality LUT (``RescaleSlope`` / ``RescaleIntercept``) is applied, ``MONOCHROME1`` images are
  inverted so that higher always means brighter, then 8-bit data is kept as is and wider data is
  min–max stretched to ``0..255`` as above.

Every decoded image is a ``uint8`` numpy array ``[H, W]``. Any failure raises
:class:`~lesionsweep.errors.DataError` naming the file.

Resizing (:func:`resize_image`, :func:`resize_mask`) is a *plain* resize to an ``S x S`` square,
without keeping the aspect ratio (NIH, SIIM and RSNA films are 1024 x 1024 squares, so nothing is
distorted there): ``cv2.INTER_AREA`` when the image shrinks, ``cv2.INTER_LINEAR`` when it grows.
Masks are resized by *area fraction*: a delivered pixel is on when more than half of the source
area it covers is on (``INTER_AREA`` on a float copy, then ``> 0.5``) when shrinking, and with
nearest neighbour when growing. Boxes are scaled by the same factor (:func:`scale_boxes`), so a
box and the mask it came from stay aligned in the continuous pixel coordinates described in
:mod:`lesionsweep.data.types`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from ..errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
DICOM_EXTENSIONS = (".dcm", ".dicom")


def pydicom_available() -> bool:
    """True when :mod:`pydicom` can be imported (needed for ``.dcm`` files)."""
    try:
        import pydicom  # noqa: F401
    except ImportError:
        return False
    return True


def _stretch_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Min–max stretch a numeric 2-D array to ``uint8`` ``0..255`` (constant image -> zeros)."""
    a = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(a)):
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    lo = float(a.min())
    hi = float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    out = (a - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _to_gray_uint8(img: np.ndarray, path: Path) -> np.ndarray:
    if img.ndim == 3:
        if img.shape[2] == 1:
            img = img[:, :, 0]
        elif img.shape[2] == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        elif img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY)
        else:
            raise DataError(f"{path}: unsupported image with {img.shape[2]} channels")
    if img.ndim != 2:
        raise DataError(f"{path}: expected a 2-D grayscale image, got shape {img.shape}")
    if img.dtype == np.uint8:
        return img
    return _stretch_to_uint8(img)


def _read_dicom(path: Path) -> np.ndarray:
    try:
        import pydicom
    except ImportError:
        raise DataError(
            f"{path}: reading DICOM files needs pydicom; install it with "
            "`pip install 'lesionsweep[dicom]'` (or `pip install pydicom`)"
        ) from None
    try:
        ds = pydicom.dcmread(str(path))
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises many types (InvalidDicomError, ValueError, ...)
        raise DataError(f"{path}: cannot decode DICOM file: {type(e).__name__}: {e}") from None
    arr = np.asarray(arr)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3 and photometric not in ("RGB", "YBR_FULL", "YBR_FULL_422"):
        if arr.shape[0] == 1:
            arr = arr[0]
        else:
            raise DataError(f"{path}: multi-frame DICOM ({arr.shape[0]} frames) is not supported")
    if arr.ndim == 3:  # colour DICOM (rare for CXR): pydicom gives RGB order
        arr = cv2.cvtColor(arr.astype(np.uint8, copy=False), cv2.COLOR_RGB2GRAY)
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    if arr.dtype == np.uint8 and slope == 1.0 and intercept == 0.0:
        return 255 - arr if photometric == "MONOCHROME1" else arr
    data = arr.astype(np.float32) * slope + intercept
    if photometric == "MONOCHROME1":
        data = data.max() - data
    return _stretch_to_uint8(data)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode one image file to grayscale ``uint8``.

    Args:
        path: a PNG / JPEG (any OpenCV format) or a DICOM (``.dcm``) file.

    Returns:
        ``uint8`` array ``[H, W]`` (0..255, higher = brighter).

    Raises:
        DataError: the file is missing, empty or cannot be decoded (the message names the path).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"image file not found: {p}")
    if p.suffix.lower() in DICOM_EXTENSIONS:
        return _read_dicom(p)
    img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if img is None:
        size = p.stat().st_size
        raise DataError(f"{p}: cannot decode image ({size} bytes; not a readable PNG/JPEG)")
    return _to_gray_uint8(img, p)


def resize_image(img: np.ndarray, size: int) -> np.ndarray:
    """Plain resize of a ``uint8`` ``[H, W]`` image to ``[size, size]``.

    ``INTER_AREA`` when the image shrinks (area ``H * W > size**2``), ``INTER_LINEAR`` otherwise;
    a no-op when the image is already ``size x size``.
    """
    h, w = img.shape[:2]
    if h == size and w == size:
        return img
    interp = cv2.INTER_AREA if h * w > size * size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a ``bool`` mask ``[H, W]`` or ``[K, H, W]`` to ``size x size`` planes.

    Shrinking: a pixel is on when more than half of the source area it covers is on (area
    fraction ``> 0.5``). Growing: nearest neighbour. Returns ``bool`` with the same leading dims.
    """
    if mask.ndim == 3:
        if mask.shape[0] == 0:
            return np.zeros((0, size, size), dtype=bool)
        return np.stack([resize_mask(m, size) for m in mask])
    h, w = mask.shape
    if h == size and w == size:
        return mask.astype(bool, copy=False)
    if not mask.any():
        return np.zeros((size, size), dtype=bool)
    if h * w > size * size:
        frac = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
        return frac > 0.5
    out = cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
    return out.astype(bool)


def scale_boxes(boxes: np.ndarray, native_size: float, size: int) -> np.ndarray:
    """Scale ``[N, 5]`` boxes ``(class, x0, y0, x1, y1)`` from a ``native_size`` square grid to a
    ``size`` square grid and clip them to ``[0, size]`` (continuous pixel coordinates)."""
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 5).copy()
    if out.shape[0]:
        out[:, 1:] *= np.float32(size / native_size)
        np.clip(out[:, 1:], 0.0, float(size), out=out[:, 1:])
    return out


def mask_component_boxes(mask: np.ndarray, class_index: int = 0) -> np.ndarray:
    """Bounding boxes of the 8-connected components of a ``bool`` mask ``[H, W]``.

    Returns ``float32`` ``[N, 5]`` rows ``(class_index, x0, y0, x1, y1)`` in continuous pixel
    coordinates of the mask (a component covering columns ``a..b`` gives ``x0 = a, x1 = b + 1``),
    ordered by component label (top-to-bottom scan order).
    """
    if not mask.any():
        return np.zeros((0, 5), dtype=np.float32)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    st = stats[1:n].astype(np.float32)  # label 0 is the background
    out = np.empty((n - 1, 5), dtype=np.float32)
    out[:, 0] = class_index
    out[:, 1] = st[:, cv2.CC_STAT_LEFT]
    out[:, 2] = st[:, cv2.CC_STAT_TOP]
    out[:, 3] = st[:, cv2.CC_STAT_LEFT] + st[:, cv2.CC_STAT_WIDTH]
    out[:, 4] = st[:, cv2.CC_STAT_TOP] + st[:, cv2.CC_STAT_HEIGHT]
    return out


def index_images(root: str | os.PathLike[str], extensions: Iterable[str]) -> dict[str, Path]:
    """Walk ``root`` once, recursively, and map each image file's stem to its path.

    Args:
        root: folder to search (symlinked folders are followed).
        extensions: lower-case suffixes to keep, e.g. ``(".png",)``.

    Returns:
        ``{stem: path}``. When two files share a stem, the one that sorts first by full path wins
        (so the result does not depend on the file system's listing order); for the same stem,
        extensions listed earlier in ``extensions`` win.
    """
    exts = tuple(e.lower() for e in extensions)
    rank = {e: i for i, e in enumerate(exts)}
    found: dict[str, tuple[int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            stem, ext = os.path.splitext(name)
            r = rank.get(ext.lower())
            if r is None:
                continue
            full = os.path.join(dirpath, name)
            prev = found.get(stem)
            if prev is None or (r, full) < prev:
                found[stem] = (r, full)
    return {stem: Path(p) for stem, (_, p) in found.items()}
