"""RSNA pneumonia: the real label file, box grouping, the dataset and bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from lesionsweep.data.rsna import RSNADataset, read_rsna_labels
from lesionsweep.data.standin import open_text, standin_image, write_lines_subset, write_png
from lesionsweep.errors import DataError

HEADER = "patientId,x,y,width,height,Target"


def test_real_label_file(txv_data_dir: Path) -> None:
    r = read_rsna_labels(txv_data_dir / "kaggle_stage_2_train_labels.csv.zip")
    assert len(r.ids) == 26684
    assert int(r.target.sum()) == 6012
    assert r.xyxy.shape == (9555, 4)
    # patients with 0, 1, 2, 3, 4 boxes
    np.testing.assert_array_equal(np.bincount(np.diff(r.box_offsets)), [20672, 2614, 3266, 119, 13])
    assert np.array_equal(np.diff(r.box_offsets) > 0, r.target > 0)
    i = r.ids.index("00436515-870c-4b36-a041-de91049b9ab4")  # lines 6-7 of the file
    assert r.first_line[i] == 6
    np.testing.assert_array_equal(
        r.xyxy[r.box_offsets[i] : r.box_offsets[i + 1]],
        [[264, 152, 264 + 213, 152 + 379], [562, 152, 562 + 256, 152 + 453]],
    )
    assert r.xyxy.min() >= 0 and r.xyxy.max() <= 1024


@pytest.fixture(scope="module")
def rsna_root(tmp_path_factory: pytest.TempPathFactory, txv_data_dir: Path) -> Path:
    src = txv_data_dir / "kaggle_stage_2_train_labels.csv.zip"
    ids = list(dict.fromkeys(ln.split(",", 1)[0] for ln in open_text(src)[1:400]))[:80]
    keep = set(ids)
    root = tmp_path_factory.mktemp("rsna")
    write_lines_subset(src, root / "stage_2_train_labels.csv", lambda ln: ln.split(",")[0] in keep)
    for k, i in enumerate(ids):
        write_png(root / "stage_2_train_images" / f"{i}.png", standin_image(40, k))
    return root


def test_dataset_boxes_scaled_and_only_in_loc_splits(rsna_root: Path, txv_data_dir: Path) -> None:
    ref = read_rsna_labels(rsna_root / "stage_2_train_labels.csv")
    splits = {s: RSNADataset(rsna_root, s, image_size=48) for s in ("train", "val", "test")}
    assert sum(len(d) for d in splits.values()) == len(ref.ids)
    assert RSNADataset(rsna_root, "test-loc", image_size=48).ids == splits["test"].ids
    for s, d in splits.items():
        assert not d.info.has_boxes and d[0].boxes.shape == (0, 5), s
    loc = RSNADataset(rsna_root, "test-loc", image_size=48)
    assert loc.info.has_boxes and not loc.info.has_masks
    n_boxes = 0
    for i in range(len(loc)):
        s = loc[i]
        p = ref.ids.index(s.id)
        want = ref.xyxy[ref.box_offsets[p] : ref.box_offsets[p + 1]] * 48 / 1024
        np.testing.assert_allclose(s.boxes[:, 1:].numpy(), want, rtol=1e-6)
        assert (s.boxes[:, 0] == 0).all() and s.target.item() == float(len(want) > 0)
        assert s.masks is None and s.image.shape == (1, 48, 48)
        n_boxes += len(want)
    assert n_boxes > 0


@pytest.mark.parametrize(
    ("rows", "pattern"),
    [
        (["a,,,,,2"], r"line 2: Target 2 must be 0 or 1"),
        (["a,,,,,0", "b,1,2,,4,1"], r"line 3: Target 1 needs a box"),
        (["a,1,2,3,4,0"], r"line 2: Target 0 row has box values"),
        (["a,1,2,3,4,1", "a,,,,,0"], r"line 2: patient 'a' has both"),
        (["a,1,2,-3,4,1"], r"line 2: Target 1 needs a box"),
    ],
)
def test_bad_label_rows(tmp_path: Path, rows: list[str], pattern: str) -> None:
    (tmp_path / "stage_2_train_labels.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    with pytest.raises(DataError, match=pattern) as e:
        RSNADataset(tmp_path, "train")
    assert "stage_2_train_labels.csv" in str(e.value)


def test_missing_file_columns_and_images(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"RSNA label file not found.*stage_2_train_labels.csv"):
        RSNADataset(tmp_path, "train")
    (tmp_path / "stage_2_train_labels.csv").write_text("patientId,Target\na,0\n")
    with pytest.raises(DataError, match=r"missing column\(s\) 'x', 'y', 'width', 'height'"):
        RSNADataset(tmp_path, "train")
    rows = [f"p{i},,,,,0" for i in range(30)]
    (tmp_path / "stage_2_train_labels.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    with pytest.raises(DataError, match=r"image for 'p\d+' \(stage_2_train_labels.csv line \d+\)"):
        RSNADataset(tmp_path, "train")
    ds = RSNADataset(tmp_path, "train", skip_bad_images=True)
    assert len(ds) == 0 and len(ds.skipped) > 10


def test_unknown_option_and_split(rsna_root: Path) -> None:
    with pytest.raises(DataError, match=r"unknown options? 'rle' for dataset 'rsna'"):
        RSNADataset(rsna_root, "train", options={"rle": "relative"})
    with pytest.raises(DataError, match=r"unknown split 'dev'"):
        RSNADataset(rsna_root, "dev")
