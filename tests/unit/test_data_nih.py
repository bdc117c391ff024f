"""NIH ChestX-ray14: the real metadata files, their quirks, the splits and the dataset."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from lesionsweep.data.base import hash_unit
from lesionsweep.data.nih import (
    NIH_CLASSES,
    NihBoxes,
    NIHDataset,
    NihEntries,
    nih_split_rows,
    read_nih_boxes,
    read_nih_entries,
)
from lesionsweep.data.standin import open_text, write_lines_subset, write_standin_images
from lesionsweep.errors import DataError

BOX_COUNTS = {
    "Atelectasis": 180,
    "Cardiomegaly": 146,
    "Effusion": 153,
    "Infiltration": 123,  # "Infiltrate" in the box file
    "Mass": 85,
    "Nodule": 79,
    "Pneumonia": 120,
    "Pneumothorax": 98,
}
LABEL_COUNTS = [
    11559,
    2776,
    13317,
    19894,
    5782,
    6331,
    1431,
    5302,
    4667,
    2303,
    2516,
    1686,
    3385,
    227,
]


@pytest.fixture(scope="module")
def entries(txv_data_dir: Path) -> NihEntries:
    return read_nih_entries(txv_data_dir / "Data_Entry_2017_v2020.csv.gz")


@pytest.fixture(scope="module")
def boxes(txv_data_dir: Path) -> NihBoxes:
    return read_nih_boxes(txv_data_dir / "BBox_List_2017.csv.gz")


@pytest.fixture(scope="module")
def lists(entries: NihEntries, boxes: NihBoxes) -> tuple[list[str], list[str]]:
    """Generated patient-wise official-style lists: every box patient (hence all 880 box images)
    in the test list, plus about 20 % of the other patients."""
    box_ids = set(boxes.ids.tolist())
    pats = entries.patients.tolist()
    box_patients = {p for p, n in zip(pats, entries.ids.tolist(), strict=True) if n in box_ids}
    u = hash_unit(pats, 99)
    is_test = np.array([p in box_patients for p in pats]) | (u < 0.2)
    return entries.ids[~is_test].tolist(), entries.ids[is_test].tolist()


def _rows(
    entries: NihEntries, boxes: NihBoxes, lists: tuple, split: str, **kw: object
) -> np.ndarray:
    args = {"seed": 0, "val_fraction": 0.1, "val_loc_per_class": 5, **kw}
    return nih_split_rows(
        entries,
        split,
        train_val=lists[0],
        test=lists[1],
        boxes=boxes,
        **args,  # type: ignore[arg-type]
    )


# ----------------------------------------------------------------------------- real metadata


def test_real_label_file(entries: NihEntries) -> None:
    assert len(entries.ids) == 112120
    assert len(set(entries.patients.tolist())) == 30805
    np.testing.assert_array_equal(entries.labels.sum(axis=0), LABEL_COUNTS)
    assert int((entries.labels.sum(axis=1) == 0).sum()) == 60361  # "No Finding"
    i = entries.row_of()["00000001_001.png"]  # "Cardiomegaly|Emphysema"
    assert [NIH_CLASSES[c] for c in np.flatnonzero(entries.labels[i])] == [
        "Cardiomegaly",
        "Emphysema",
    ]
    assert entries.patients[i] == "1"


def test_real_box_file(entries: NihEntries, boxes: NihBoxes) -> None:
    assert len(boxes.ids) == 984
    assert len(set(boxes.ids.tolist())) == 880
    counts = {NIH_CLASSES[c]: n for c, n in enumerate(np.bincount(boxes.classes, minlength=14))}
    assert {k: v for k, v in counts.items() if v} == BOX_COUNTS
    # first line: 00013118_008.png,Atelectasis,225.08...,547.01...,86.77...,79.18...
    assert boxes.ids[0] == "00013118_008.png" and boxes.classes[0] == 0
    np.testing.assert_allclose(boxes.xyxy[0], [225.084745762712, 547.019216763771,
                                               225.084745762712 + 86.7796610169491,
                                               547.019216763771 + 79.1864406779661])  # fmt: skip
    assert boxes.xyxy[:, 2:].max() <= 1024
    # no image has two boxes of one class: 984 (image, class) pairs
    assert len(set(zip(boxes.ids.tolist(), boxes.classes.tolist(), strict=True))) == 984
    # every box class is also an image label of that image
    row_of = entries.row_of()
    rows = np.array([row_of[n] for n in boxes.ids.tolist()])
    assert entries.labels[rows, boxes.classes].all()


def test_original_header_variant_with_trailing_comma(tmp_path: Path, txv_data_dir: Path) -> None:
    lines = open_text(txv_data_dir / "Data_Entry_2017_v2020.csv.gz")[:6]
    v2020 = tmp_path / "v2020.csv"
    v2020.write_text("\n".join(lines) + "\n")
    orig = tmp_path / "Data_Entry_2017.csv"  # header and rows end with a comma: 'Unnamed: 11'
    orig.write_text("\n".join(ln + "," for ln in lines) + "\n")
    a, b = read_nih_entries(v2020), read_nih_entries(orig)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.patients, b.patients)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("Image,Labels\nx.png,Mass\n", r"missing column\(s\) 'Image Index', 'Finding Labels'"),
        ("Image Index,Finding Labels,Patient ID\na.png,Mass|Tumour,1\n", r"line 2.*'Tumour'"),
        ("Image Index,Finding Labels,Patient ID\na.png,Mass,1\na.png,Mass,1\n", r"line 3.*dupl"),
        ("Image Index,Finding Labels,Patient ID\na.png,,1\n", r"line 2: empty"),
    ],
)
def test_bad_label_files(tmp_path: Path, text: str, pattern: str) -> None:
    p = tmp_path / "Data_Entry_2017.csv"
    p.write_text(text)
    with pytest.raises(DataError, match=pattern) as e:
        read_nih_entries(p)
    assert "Data_Entry_2017.csv" in str(e.value)


BOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (BOX_HEADER + "a.png,Mass,1,2,-3,4\n", r"line 2: bad box"),
        (BOX_HEADER + "a.png,Mass,1,x,3,4\n", r"line 2: bad box"),
        ("Image Index,Finding Label,x,y,w\na.png,Mass,1,2,3\n", r"4 box columns"),
        (BOX_HEADER + "a.png,Mass,1,2,3,4\nb.png,Tumour,1,2,3,4\n", r"line 3: unknown box label"),
        ("Image,Label,x,y,w,h\na.png,Mass,1,2,3,4\n", r"missing column\(s\) 'Image Index'"),
    ],
)
def test_bad_box_files(tmp_path: Path, text: str, pattern: str) -> None:
    p = tmp_path / "BBox_List_2017.csv"
    p.write_text(text)
    with pytest.raises(DataError, match=pattern) as e:
        read_nih_boxes(p)
    assert "BBox_List_2017.csv" in str(e.value)


# ----------------------------------------------------------------------------- splits


def test_train_val_split_is_patient_disjoint(entries: NihEntries, boxes: NihBoxes, lists) -> None:
    tr = _rows(entries, boxes, lists, "train")
    va = _rows(entries, boxes, lists, "val")
    assert len(np.intersect1d(tr, va)) == 0
    assert sorted(entries.ids[np.concatenate([tr, va])].tolist()) == sorted(lists[0])
    p_tr, p_va = set(entries.patients[tr].tolist()), set(entries.patients[va].tolist())
    assert not p_tr & p_va
    share = len(p_va) / (len(p_tr) + len(p_va))
    assert 0.09 < share < 0.11
    np.testing.assert_array_equal(va, _rows(entries, boxes, lists, "val"))  # deterministic
    other = _rows(entries, boxes, lists, "val", seed=1)
    assert len(np.intersect1d(va, other)) < 0.3 * len(va)


def test_loc_splits_on_the_880_box_images(entries: NihEntries, boxes: NihBoxes, lists) -> None:
    vl = _rows(entries, boxes, lists, "val-loc")
    tl = _rows(entries, boxes, lists, "test-loc")
    te = _rows(entries, boxes, lists, "test")
    assert len(vl) + len(tl) == 880 and len(np.intersect1d(vl, tl)) == 0
    assert set(entries.ids[np.concatenate([vl, tl])].tolist()) == set(boxes.ids.tolist())
    assert np.isin(vl, te).all() and np.isin(tl, te).all()  # test = the whole test list
    assert len(te) == len(lists[1])
    assert not set(entries.patients[vl].tolist()) & set(entries.patients[tl].tolist())
    vl_ids = set(entries.ids[vl].tolist())
    in_vl = np.array([n in vl_ids for n in boxes.ids.tolist()])
    per_class = np.bincount(boxes.classes[in_vl], minlength=8)[:8]
    assert (per_class >= 5).all(), per_class
    assert len(vl) == 37  # seed 0, default 5 per class: a small held-out set
    assert (np.bincount(boxes.classes[~in_vl], minlength=8)[:8] > 0).all()
    np.testing.assert_array_equal(vl, _rows(entries, boxes, lists, "val-loc"))
    assert set(_rows(entries, boxes, lists, "val-loc", seed=3).tolist()) != set(vl.tolist())
    big = set(entries.ids[_rows(entries, boxes, lists, "val-loc", val_loc_per_class=20)])
    in_big = np.array([n in big for n in boxes.ids.tolist()])
    assert (np.bincount(boxes.classes[in_big], minlength=8)[:8] >= 20).all()


def test_list_with_unknown_image(entries: NihEntries, boxes: NihBoxes) -> None:
    with pytest.raises(DataError, match=r"test_list.txt line 2: image 'nope.png'"):
        nih_split_rows(
            entries, "test", train_val=None, test=["00000001_000.png", "nope.png"], boxes=boxes,
            seed=0, val_fraction=0.1, val_loc_per_class=5,
        )  # fmt: skip


# ----------------------------------------------------------------------------- dataset


@pytest.fixture(scope="module")
def nih_root(tmp_path_factory: pytest.TempPathFactory, txv_data_dir: Path, entries, boxes) -> Path:
    """A root with the official file formats: real rows for the 880 box images plus 120 other
    images, generated lists, and 32-px stand-in PNGs in the Kaggle folder layout."""
    root = tmp_path_factory.mktemp("nih")
    others = [n for n in entries.ids[:400].tolist() if n not in set(boxes.ids.tolist())][:120]
    keep = set(boxes.ids.tolist()) | set(others)
    write_lines_subset(
        txv_data_dir / "Data_Entry_2017_v2020.csv.gz",
        root / "Data_Entry_2017_v2020.csv",
        lambda ln: ln.split(",", 1)[0] in keep,
    )
    (root / "BBox_List_2017.csv.gz").symlink_to(txv_data_dir / "BBox_List_2017.csv.gz")
    test_ids = sorted(boxes.ids.tolist()) + others[:20]
    (root / "test_list.txt").write_text("\n".join(test_ids) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(others[20:]) + "\n")
    names = sorted(keep)
    write_standin_images(root / "images_001" / "images", names[:500], 32)
    write_standin_images(root / "images_002" / "images", names[500:], 32)
    return root


def test_dataset_loc_items_carry_all_scaled_boxes(nih_root: Path, boxes: NihBoxes) -> None:
    ds = NIHDataset(nih_root, "test-loc", image_size=64)
    assert ds.info.has_boxes and not ds.info.has_masks and ds.info.classes == NIH_CLASSES
    vl = NIHDataset(nih_root, "val-loc", image_size=64)
    assert len(ds) + len(vl) == 880 and len(vl) == 37
    by_image: dict[str, list[tuple[int, np.ndarray]]] = {}
    for n, c, b in zip(boxes.ids.tolist(), boxes.classes.tolist(), boxes.xyxy, strict=True):
        by_image.setdefault(n, []).append((c, b))
    multi = [i for i, n in enumerate(ds.ids) if len(by_image[n]) > 1][:3]
    for i in [0, *multi]:
        s = ds[i]
        assert s.image.shape == (1, 64, 64) and s.image.dtype.is_floating_point is False
        assert s.target.shape == (14,) and s.target_mask.tolist() == [1.0] * 14
        want = sorted((c, *(b * 64 / 1024)) for c, b in by_image[s.id])
        got = sorted(map(tuple, s.boxes.tolist()))
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-5)
        for c, *_ in want:
            assert s.target[int(c)] == 1
    assert multi, "the released file has images with several boxes"


def test_dataset_splits_and_class_subset(nih_root: Path) -> None:
    tr = NIHDataset(nih_root, "train", image_size=32)
    va = NIHDataset(nih_root, "val", image_size=32)
    te = NIHDataset(nih_root, "test", image_size=32)
    assert len(tr) + len(va) == 100 and len(te) == 900
    assert not tr.info.has_boxes and tr[0].boxes.shape == (0, 5) and tr[0].masks is None
    assert te[0].boxes.shape == (0, 5)  # classification split: no boxes delivered
    sub = NIHDataset(nih_root, "test-loc", image_size=32, classes=["Mass", "Atelectasis"])
    assert sub.info.classes == ("Mass", "Atelectasis")
    full = NIHDataset(nih_root, "test-loc", image_size=32)
    for i in range(40):
        a, b = sub[i], full[i]
        np.testing.assert_array_equal(a.target.numpy(), b.target.numpy()[[4, 0]])
        keep = [r for r in b.boxes.tolist() if r[0] in (4, 0)]
        want = sorted([[{4: 0, 0: 1}[int(r[0])], *r[1:]] for r in keep])
        assert sorted(a.boxes.tolist()) == want


def test_missing_image_names_id_and_row(nih_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    for f in nih_root.iterdir():
        (root / f.name).symlink_to(f)
    (root / "images_002").unlink()  # only images_001 left: 500 of 1000 images
    with pytest.raises(DataError, match=r"Data_Entry_2017_v2020.csv line \d+.*not found") as e:
        NIHDataset(root, "test", image_size=32)
    assert "skip_bad_images" in str(e.value)
    ds = NIHDataset(root, "test", image_size=32, skip_bad_images=True)
    assert len(ds) + len(ds.skipped) == 900 and len(ds.skipped) > 0
    assert "not found" in ds.skipped[0][1]


def test_unreadable_image_with_and_without_skip(nih_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "images").mkdir(parents=True)
    for f in nih_root.iterdir():
        if not f.name.startswith("images"):
            (root / f.name).symlink_to(f)
    tr = NIHDataset(nih_root, "train", image_size=32)
    for p in tr.paths:
        (root / "images" / p.name).symlink_to(p)
    bad_name = tr.ids[3]
    (root / "images" / bad_name).unlink()
    (root / "images" / bad_name).write_bytes(b"not a png")
    ds = NIHDataset(root, "train", image_size=32)
    with pytest.raises(DataError, match=rf"{bad_name}.*Data_Entry_2017_v2020.csv line \d+"):
        ds[3]
    ds = NIHDataset(root, "train", image_size=32, skip_bad_images=True)
    s = ds[3]
    assert s.id == tr.ids[4]  # the next readable item takes its place
    assert len(ds.skipped) == 1 and bad_name in ds.skipped[0][0]
    assert ds[3].id == tr.ids[4] and len(ds.skipped) == 1  # recorded once


def test_options_splits_and_files_are_checked(nih_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown options? 'val_los'.*val_loc_per_class"):
        NIHDataset(nih_root, "train", options={"val_los": 3})
    with pytest.raises(DataError, match=r"val_fraction=1.5"):
        NIHDataset(nih_root, "train", options={"val_fraction": 1.5})
    with pytest.raises(DataError, match=r"unknown split 'valid'.*train, val, val-loc"):
        NIHDataset(nih_root, "valid")
    with pytest.raises(DataError, match=r"unknown class\(es\) 'Infiltrate'"):
        NIHDataset(nih_root, "train", classes=["Infiltrate"])
    root = tmp_path / "nolists"
    root.mkdir()
    (root / "Data_Entry_2017_v2020.csv").symlink_to(nih_root / "Data_Entry_2017_v2020.csv")
    with pytest.raises(DataError, match=r"test_list.txt"):
        NIHDataset(root, "test")
    with pytest.raises(DataError, match=r"NIH label file not found.*Data_Entry_2017.csv"):
        NIHDataset(tmp_path, "test")
    with pytest.raises(DataError, match=r"root folder not found"):
        NIHDataset(tmp_path / "nowhere", "test")


def test_images_are_resized_plainly(nih_root: Path) -> None:
    ds = NIHDataset(nih_root, "train", image_size=16)
    s = ds[0]
    src = cv2.imread(str(ds.paths[0]), cv2.IMREAD_GRAYSCALE)
    want = cv2.resize(src, (16, 16), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(s.image[0].numpy(), want)
