"""Image decoding, resizing and box/mask geometry shared by the loaders."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from lesionsweep.data.images import (
    index_images,
    mask_component_boxes,
    read_image,
    resize_image,
    resize_mask,
    scale_boxes,
)
from lesionsweep.errors import DataError


def _write_dicom(
    path: Path, arr: np.ndarray, photometric: str, bits: int, slope: float = 1.0
) -> Path:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.set_pixel_data(arr, photometric, bits)
    if slope != 1.0:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = 0
    ds.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path).Rows == arr.shape[0]
    return path


def test_png_8bit_roundtrip(tmp_path: Path) -> None:
    img = np.arange(48 * 40, dtype=np.uint32).reshape(48, 40).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (48, 40)
    np.testing.assert_array_equal(out, img)


def test_png_16bit_is_stretched_not_wrapped(tmp_path: Path) -> None:
    # a 12-bit film in a 16-bit PNG: values 0..4095; >>8 would give 0..15, astype would wrap
    img = np.tile(np.linspace(0, 4095, 32).astype(np.uint16), (8, 1))
    cv2.imwrite(str(tmp_path / "b.png"), img)
    out = read_image(tmp_path / "b.png")
    assert out.dtype == np.uint8
    assert out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out[0].astype(int)) >= 0)  # monotone like the source
    assert out[0, 16] == round(img[0, 16] / 4095 * 255)


def test_colour_png_and_jpeg_become_gray(tmp_path: Path) -> None:
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 2] = 200  # BGR: red
    cv2.imwrite(str(tmp_path / "c.png"), rgb)
    out = read_image(tmp_path / "c.png")
    assert out.shape == (16, 16) and int(out[0, 0]) == round(0.299 * 200)
    rgba = np.dstack([rgb, np.full((16, 16), 255, np.uint8)])
    cv2.imwrite(str(tmp_path / "d.png"), rgba)
    assert read_image(tmp_path / "d.png").shape == (16, 16)
    cv2.imwrite(str(tmp_path / "e.jpg"), np.full((16, 16), 100, np.uint8))
    assert abs(int(read_image(tmp_path / "e.jpg")[5, 5]) - 100) <= 2


def test_constant_16bit_image_is_zero(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "f.png"), np.full((8, 8), 777, np.uint16))
    assert read_image(tmp_path / "f.png").max() == 0


def test_missing_and_corrupt_images_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found.*nope.png"):
        read_image(tmp_path / "nope.png")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="broken.png"):
        read_image(bad)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.png"):
        read_image(empty)


def test_dicom_monochrome1_is_inverted_and_16bit_stretched(tmp_path: Path) -> None:
    a = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (4, 1))  # 0..4032, 64 columns
    p = _write_dicom(tmp_path / "m1.dcm", a, "MONOCHROME1", 12)
    out = read_image(p)
    assert out.dtype == np.uint8 and out.shape == (4, 64)
    assert out[0, 0] == 255 and out[0, -1] == 0  # low raw value = bright on MONOCHROME1
    assert np.all(np.diff(out[0].astype(int)) <= 0)
    p2 = _write_dicom(tmp_path / "m2.dcm", a, "MONOCHROME2", 12)
    out2 = read_image(p2)
    assert out2[0, 0] == 0 and out2[0, -1] == 255
    np.testing.assert_array_equal(out2, 255 - out)


def test_dicom_8bit_kept_and_negative_slope(tmp_path: Path) -> None:
    a = np.arange(0, 256, 4, dtype=np.uint8).reshape(8, 8)
    out = read_image(_write_dicom(tmp_path / "u8.dcm", a, "MONOCHROME2", 8))
    np.testing.assert_array_equal(out, a)
    out = read_image(_write_dicom(tmp_path / "u8i.dcm", a, "MONOCHROME1", 8))
    np.testing.assert_array_equal(out, 255 - a)
    b = np.arange(64, dtype=np.uint16).reshape(8, 8) * 10
    out = read_image(_write_dicom(tmp_path / "neg.dcm", b, "MONOCHROME2", 12, slope=-1.0))
    assert out[0, 0] == 255 and out[-1, -1] == 0


def test_corrupt_dicom_names_path(tmp_path: Path) -> None:
    pytest.importorskip("pydicom")
    p = tmp_path / "x.dcm"
    p.write_bytes(b"not a dicom file at all" * 10)
    with pytest.raises(DataError, match="x.dcm"):
        read_image(p)


def test_resize_image_area_downscale_and_linear_upscale() -> None:
    img = np.zeros((8, 8), np.uint8)
    img[:4, :4] = 200
    small = resize_image(img, 4)
    np.testing.assert_array_equal(small[:2, :2], 200)
    np.testing.assert_array_equal(small[2:, 2:], 0)
    half = np.zeros((4, 4), np.uint8)
    half[:, 1] = 255  # one column of 4 -> averaged into column 0 of 2 by INTER_AREA
    assert resize_image(half, 2)[0, 0] == 128
    assert resize_image(img, 16).shape == (16, 16)
    assert resize_image(img, 8) is img


def test_resize_mask_area_fraction_rule() -> None:
    m = np.zeros((4, 4), bool)
    m[0, 0] = m[0, 1] = m[1, 0] = True  # 3/4 of the top-left 2x2 block -> on
    m[2, 2] = m[2, 3] = True  # exactly 1/2 of the bottom-right block -> off (strict >)
    out = resize_mask(m, 2)
    np.testing.assert_array_equal(out, [[True, False], [False, False]])
    up = resize_mask(np.array([[True, False], [False, False]]), 4)
    np.testing.assert_array_equal(up[:2, :2], True)
    assert up.sum() == 4
    stack = resize_mask(np.stack([m, ~m]), 2)
    assert stack.shape == (2, 2, 2) and stack.dtype == bool


def test_scale_boxes_and_component_boxes() -> None:
    b = np.array([[3, 100.0, 200.0, 612.0, 1030.0]], np.float32)
    out = scale_boxes(b, 1024, 256)
    np.testing.assert_allclose(out, [[3, 25.0, 50.0, 153.0, 256.0]])  # clipped to the image
    m = np.zeros((6, 7), bool)
    m[1:3, 2:5] = True  # rows 1-2, cols 2-4
    m[5, 6] = True
    m[3, 5] = True  # diagonal neighbour of (2, 4): same 8-connected component
    boxes = mask_component_boxes(m, class_index=2)
    np.testing.assert_array_equal(boxes, [[2, 2, 1, 6, 4], [2, 6, 5, 7, 6]])
    assert mask_component_boxes(np.zeros((3, 3), bool)).shape == (0, 5)


def test_index_images_walks_recursively_and_deterministically(tmp_path: Path) -> None:
    for rel in ("images_001/images/a.png", "images_002/images/b.png", "z/a.png", "x/c.dcm"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "x" / "c.png").write_bytes(b"")
    idx = index_images(tmp_path, (".png",))
    assert set(idx) == {"a", "b", "c"}
    assert idx["a"] == tmp_path / "images_001/images/a.png"  # sorts first
    both = index_images(tmp_path, (".png", ".dcm"))
    assert both["c"].suffix == ".png"  # earlier extension wins
    assert index_images(tmp_path, (".dcm",))["c"].suffix == ".dcm"
