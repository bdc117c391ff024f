"""SIIM-ACR pneumothorax: real RLE rows, masks, component boxes, splits and bad inputs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lesionsweep.data.images import mask_component_boxes, resize_mask
from lesionsweep.data.rle import encode_rle, parse_rle_column, runs_to_mask
from lesionsweep.data.siim import SIIMDataset, read_siim_rle
from lesionsweep.data.standin import open_text, standin_image, write_lines_subset, write_png
from lesionsweep.errors import DataError

SPLITS = ("train", "val", "val-loc", "test-loc", "test")


@pytest.fixture(scope="module")
def siim_root(tmp_path_factory: pytest.TempPathFactory, txv_data_dir: Path) -> Path:
    """Real rows (official header with its leading space) for ~55 images, including images with
    several rows, and 48-px stand-in PNGs in a nested folder."""
    src = txv_data_dir / "siim-pneumothorax-train-rle.csv.gz"
    lines = open_text(src)[1:]
    ids = [ln.split(",", 1)[0] for ln in lines]
    counts: dict[str, int] = {}
    for i in ids:
        counts[i] = counts.get(i, 0) + 1
    multi = [i for i in dict.fromkeys(ids) if counts[i] > 1][:10]
    first = list(dict.fromkeys(ids))[:50]
    keep = set(multi) | set(first)
    root = tmp_path_factory.mktemp("siim")
    write_lines_subset(src, root / "train-rle.csv", lambda ln: ln.split(",", 1)[0] in keep)
    for k, i in enumerate(sorted(keep)):
        write_png(root / "dicom-images-train" / f"s{k % 3}" / f"{i}.png", standin_image(48, k))
    return root


def test_header_quirk_and_grouping(siim_root: Path) -> None:
    assert open_text(siim_root / "train-rle.csv")[0] == "ImageId, EncodedPixels"
    lines = open_text(siim_root / "train-rle.csv")[1:]
    n = len({ln.split(",", 1)[0] for ln in lines})
    assert len(lines) > n >= 50  # several rows for some images
    ids, runs, first_line = read_siim_rle(siim_root / "train-rle.csv")
    assert len(ids) == n and runs.num_rows == n
    assert first_line[0] == 2 and np.all(np.diff(first_line) > 0)


def test_items_masks_and_boxes(siim_root: Path) -> None:
    full = {s: SIIMDataset(siim_root, s, image_size=64) for s in SPLITS}
    assert sorted(full["train"].ids + full["val"].ids + full["test"].ids) == sorted(
        full["train"].ids + full["val-loc"].ids + full["test-loc"].ids
    )
    n = len({ln.split(",", 1)[0] for ln in open_text(siim_root / "train-rle.csv")[1:]})
    assert len(full["train"]) + len(full["val"]) + len(full["test"]) == n
    assert full["val-loc"].ids == full["val"].ids and full["test-loc"].ids == full["test"].ids
    for s in ("train", "val", "test"):
        item = full[s][0]
        assert item.masks is None and item.boxes.shape == (0, 5)
        assert not full[s].info.has_masks
    loc = SIIMDataset(siim_root, "test-loc", image_size=64)
    assert loc.info.has_masks and loc.info.has_boxes and loc.info.classes == ("pneumothorax",)
    n_pos = 0
    for i in range(len(loc)):
        s = loc[i]
        native = loc.mask_native(i)
        assert s.masks is not None and s.masks.shape == (1, 64, 64) and s.masks.dtype == torch.bool
        np.testing.assert_array_equal(s.masks[0].numpy(), resize_mask(native, 64))
        assert s.target.item() == float(native.any())
        want = mask_component_boxes(native, 0)
        want[:, 1:] *= 64 / 1024
        np.testing.assert_allclose(s.boxes.numpy(), want, rtol=1e-6)
        n_pos += int(native.any())
    assert n_pos > 0


def test_multi_row_images_are_united(siim_root: Path) -> None:
    lines = open_text(siim_root / "train-rle.csv")[1:]
    by_id: dict[str, list[str]] = {}
    for ln in lines:
        i, rle = ln.split(",", 1)
        by_id.setdefault(i, []).append(rle)
    multi = [i for i, r in by_id.items() if len(r) > 1]
    ds = {s: SIIMDataset(siim_root, s, image_size=64) for s in ("val-loc", "test-loc", "train")}
    found = 0
    for d in ds.values():
        for j, i in enumerate(d.ids):
            if i in multi:
                m = d.mask_native(j)
                union = np.zeros_like(m)
                for rle in by_id[i]:  # decode each row on its own
                    t = parse_rle_column([rle])
                    part = runs_to_mask(t.starts, t.lengths)
                    assert part.any()
                    union |= part
                np.testing.assert_array_equal(m, union)
                found += 1
    assert found == len(multi) >= 5


def test_split_is_a_deterministic_hash_of_the_image_id(siim_root: Path) -> None:
    a = SIIMDataset(siim_root, "val", image_size=32, options={"seed": 0})
    b = SIIMDataset(siim_root, "val", image_size=32, options={"seed": 0})
    c = SIIMDataset(siim_root, "val", image_size=32, options={"seed": 5, "val_fraction": 0.5})
    assert a.ids == b.ids and a.ids != c.ids
    capped = SIIMDataset(siim_root, "val-loc", image_size=32, options={"val_loc_size": 2})
    assert len(capped) == min(2, len(a)) and set(capped.ids) <= set(a.ids)


def test_rle_overrun_names_file_and_line(tmp_path: Path) -> None:
    full = np.zeros((1024, 1024), bool)
    full[10:20, 10:20] = True
    rows = ["ImageId, EncodedPixels", f"a, {encode_rle(full)}", "b, -1", "c, 1048570 10"]
    (tmp_path / "train-rle.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"train-rle.csv line 4: RLE overruns the 1024x1024"):
        SIIMDataset(tmp_path, "train")


def test_wrong_columns_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"SIIM run-length file not found.*train-rle.csv"):
        SIIMDataset(tmp_path, "train")
    (tmp_path / "train-rle.csv").write_text("ImageId,Mask\na,-1\n")
    with pytest.raises(DataError, match=r"missing column\(s\) 'EncodedPixels'.*found: 'ImageId'"):
        SIIMDataset(tmp_path, "train")


def test_dicom_images_and_missing_pydicom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    (tmp_path / "train-rle.csv").write_text("ImageId, EncodedPixels\n1.2.3, -1\n")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.set_pixel_data(standin_image(40, 1), "MONOCHROME2", 8)
    (tmp_path / "a" / "b").mkdir(parents=True)
    ds.save_as(tmp_path / "a" / "b" / "1.2.3.dcm", enforce_file_format=True)
    opts = {"val_fraction": 0.01, "test_fraction": 0.01}
    split = next(
        s for s in ("train", "val", "test") if len(SIIMDataset(tmp_path, s, 32, options=opts))
    )
    item = SIIMDataset(tmp_path, split, image_size=32, options=opts)[0]
    assert item.image.shape == (1, 32, 32) and item.target.item() == 0
    monkeypatch.setitem(sys.modules, "pydicom", None)  # makes `import pydicom` fail
    with pytest.raises(DataError, match=r"DICOM.*pydicom is not installed"):
        SIIMDataset(tmp_path, split, image_size=32, options=opts)


def test_bad_options(siim_root: Path) -> None:
    with pytest.raises(DataError, match=r"unknown options? 'fold'.*rle.*seed"):
        SIIMDataset(siim_root, "train", options={"fold": 1})
    with pytest.raises(DataError, match=r"val_fraction \+ test_fraction must be < 1"):
        SIIMDataset(siim_root, "train", options={"val_fraction": 0.5, "test_fraction": 0.6})
    with pytest.raises(DataError, match=r"rle='rel'.*relative, absolute"):
        SIIMDataset(siim_root, "train", options={"rle": "rel"})
