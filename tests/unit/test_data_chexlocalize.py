"""CheXlocalize ground truth in the CheXpert loader: RLE codec against pycocotools, the
published JSON layouts (fixture in ``tests/conftest.py``), val-loc / test-loc, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lesionsweep.config import DataConfig
from lesionsweep.data.cache import CachedDataset, build_cache
from lesionsweep.data.chexlocalize import (
    CHEXLOCALIZE_CLASSES,
    coco_rle_counts,
    cxr_id_from_path,
    encode_coco_rle,
    read_segmentations,
    runs_to_mask,
)
from lesionsweep.data.chexpert import PCAM_CLASSES, CheXpertDataset
from lesionsweep.data.types import DatasetInfo, collate
from lesionsweep.errors import DataError

mask_api = pytest.importorskip("pycocotools.mask")  # test extra: the reference implementation


def _random_masks(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n):
        h, w = (int(v) for v in rng.integers(1, 70, 2))
        m = rng.random((h, w)) < rng.random()
        if t % 5 == 0:
            m[:] = False
        if t % 7 == 0:
            m[:] = True
        out.append(m)
    big = np.zeros((2320, 2828), dtype=bool)  # a CheXlocalize-sized film, long runs
    big[300:2000, 5:2800] = True
    return [*out, big]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' decode under numpy 2
def test_rle_codec_matches_pycocotools() -> None:
    for m in _random_masks(200, 0):
        ref = mask_api.encode(np.asfortranarray(m.astype(np.uint8)))
        ours = encode_coco_rle(m)
        assert ours == {"size": list(ref["size"]), "counts": ref["counts"].decode()}
        runs = coco_rle_counts(ref["counts"].decode(), "x")
        assert int(runs.sum()) == m.size
        np.testing.assert_array_equal(runs_to_mask(runs, m.shape), mask_api.decode(ref) > 0)
    # the published sample's empty masks (rajpurkarlab/cheXlocalize sample/gt_segmentations_val)
    assert coco_rle_counts("PVWX6", "x").tolist() == [2320 * 2828]
    assert coco_rle_counts("nefl3", "x").tolist() == [2022 * 2021]
    # uncompressed COCO RLE (a list of ints) is read too
    assert coco_rle_counts([3, 2, 1], "x").tolist() == [3, 2, 1]


def test_ids_and_paths() -> None:
    assert cxr_id_from_path("CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg") == (
        "patient64541_study1_view1_frontal"
    )
    assert cxr_id_from_path("test/patient64741/study2/view3_lateral.jpg") == (
        "patient64741_study2_view3_lateral"
    )
    assert cxr_id_from_path("train.csv") is None
    assert len(CHEXLOCALIZE_CLASSES) == 10 and "Lung Opacity" in CHEXLOCALIZE_CLASSES


def test_val_loc_masks_boxes_labels(chexlocalize_root: tuple[Path, dict]) -> None:
    root, regions = chexlocalize_root
    classes = ["Cardiomegaly", "Lung Opacity", "Pleural Effusion", "Pneumonia"]
    ds = CheXpertDataset(root, "val-loc", image_size=16, classes=classes)
    assert ds.ids == list(regions["val"])  # file order, lateral view included
    assert ds.info.has_masks and ds.info.has_boxes
    # Pneumonia has no CheXlocalize segmentation: not a localized class
    assert ds.info.loc_classes == ("Cardiomegaly", "Lung Opacity", "Pleural Effusion")
    assert ds.info.localized == (True, True, True, False)
    for i, cxr in enumerate(ds.ids):
        s = ds[i]
        assert s.image.shape == (1, 16, 16) and s.masks is not None
        assert s.masks.shape == (4, 16, 16) and s.masks.dtype.is_floating_point is False
        want = np.zeros((4, 16, 16), dtype=bool)
        boxes = []
        for cls, rects in regions["val"][cxr].items():
            k = classes.index(cls)
            for r0, r1, c0, c1 in rects:
                want[k, r0:r1, c0:c1] = True
                boxes.append((k, c0, r0, c1, r1))
        np.testing.assert_array_equal(s.masks.numpy(), want)
        got = sorted(tuple(float(v) for v in b) for b in s.boxes.tolist())
        assert got == sorted(tuple(float(v) for v in b) for b in boxes)
        # labels come from valid.csv (the fixture marks exactly the segmented classes)
        np.testing.assert_array_equal(s.target.numpy(), want.any(axis=(1, 2)).astype(np.float32))
    assert collate([ds[0], ds[1]]).masks.shape == (2, 4, 16, 16)
    fr = CheXpertDataset(root, "val-loc", 16, classes=classes, options={"frontal_only": True})
    assert len(fr) == 3 and all(i.endswith("_frontal") for i in fr.ids)


def test_test_loc_and_annotations_source(chexlocalize_root: tuple[Path, dict]) -> None:
    root, regions = chexlocalize_root
    classes = ["Edema", "Support Devices"]
    te = CheXpertDataset(root, "test-loc", image_size=16, classes=classes)
    assert te.ids == list(regions["test"])
    assert te[0].masks[1, 0:8, 7:9].all() and int(te[0].masks.sum()) == 16
    # raw polygons (gt_annotations_*.json) rasterise to the same masks on these rectangles
    for split in ("val-loc", "test-loc"):
        seg = CheXpertDataset(root, split, 16, classes=list(CHEXLOCALIZE_CLASSES))
        ann = CheXpertDataset(
            root, split, 16, classes=list(CHEXLOCALIZE_CLASSES),
            options={"loc_source": "annotations"},
        )  # fmt: skip
        assert ann.ids == seg.ids
        for i in range(len(seg)):
            np.testing.assert_array_equal(ann[i].masks.numpy(), seg[i].masks.numpy())
    # the JSON files found through an explicit folder as well
    moved = root / "elsewhere"
    (root / "CheXlocalize").rename(moved)
    with pytest.raises(DataError, match=r"gt_segmentations_test.json not found.*loc_split: none"):
        CheXpertDataset(root, "test-loc", 16, classes=classes)
    ok = CheXpertDataset(
        root, "test-loc", 16, classes=classes, options={"chexlocalize_dir": "elsewhere"}
    )
    assert len(ok) == 2


def test_default_classes_are_localized(chexlocalize_root: tuple[Path, dict]) -> None:
    root, _ = chexlocalize_root
    ds = CheXpertDataset(root, "val-loc", image_size=16)
    assert ds.info.classes == PCAM_CLASSES and ds.info.loc_classes == PCAM_CLASSES


def _edit(path: Path, fn) -> None:  # noqa: ANN001
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_bad_inputs_name_file_and_key(chexlocalize_root: tuple[Path, dict]) -> None:
    root, _ = chexlocalize_root
    seg = root / "CheXlocalize" / "gt_segmentations_val.json"
    good = seg.read_text()
    cxr = "patient64541_study1_view1_frontal"

    def wrong_size(d: dict) -> None:
        d[cxr]["Cardiomegaly"]["size"] = [96, 81]

    _edit(seg, wrong_size)
    with pytest.raises(
        DataError,
        match=rf"gt_segmentations_val.json CXR '{cxr}' pathology 'Cardiomegaly': RLE covers 7680 "
        r"pixels but its size \[96, 81\] has 7776",
    ):
        CheXpertDataset(root, "val-loc", 16)
    seg.write_text(good)
    _edit(seg, lambda d: d[cxr].__setitem__("Nodule", d[cxr]["Edema"]))
    with pytest.raises(DataError, match=rf"CXR '{cxr}' has unknown pathology 'Nodule'; allowed"):
        CheXpertDataset(root, "val-loc", 16)
    seg.write_text(good)
    _edit(seg, lambda d: d[cxr]["Edema"].__setitem__("counts", "PV"))
    with pytest.raises(DataError, match=r"pathology 'Edema': RLE counts string is truncated"):
        CheXpertDataset(root, "val-loc", 16)
    seg.write_text(good)
    _edit(seg, lambda d: d.__setitem__("patient1_x", d[cxr]))
    with pytest.raises(DataError, match=r"CXR id 'patient1_x' is not of the form"):
        read_segmentations(seg)
    seg.write_text(good)
    # an id whose image is missing: named with the JSON key; skip_bad_images drops it
    (root / "CheXpert-v1.0/valid/patient64543/study1/view1_frontal.jpg").unlink()
    with pytest.raises(
        DataError,
        match=r"image for 'patient64543_study1_view1_frontal' \(gt_segmentations_val.json key "
        r"'patient64543_study1_view1_frontal', valid.csv line 4\) not found",
    ):
        CheXpertDataset(root, "val-loc", 16)
    assert len(CheXpertDataset(root, "val-loc", 16, skip_bad_images=True)) == 3
    # an id without a labels row
    _edit(seg, lambda d: d.__setitem__("patient69999_study1_view1_frontal", d[cxr]))
    with pytest.raises(
        DataError, match=r"CXR 'patient69999_study1_view1_frontal' has no row in .*valid.csv"
    ):
        CheXpertDataset(root, "val-loc", 16, skip_bad_images=True)
    seg.write_text("{not json")
    with pytest.raises(DataError, match=r"gt_segmentations_val.json: not valid JSON"):
        CheXpertDataset(root, "val-loc", 16)
    ann = root / "CheXlocalize" / "gt_annotations_test.json"
    _edit(ann, lambda d: d["patient64742_study1_view1_frontal"].__setitem__("Edema", [[1, 2, 3]]))
    with pytest.raises(DataError, match=r"pathology 'Edema': contour 0 is not a list of \[x, y\]"):
        CheXpertDataset(root, "test-loc", 16, options={"loc_source": "annotations"})
    with pytest.raises(
        DataError, match=r"loc_source='pixels'.*allowed: segmentations, annotations"
    ):
        CheXpertDataset(root, "test-loc", 16, options={"loc_source": "pixels"})


def test_cache_keeps_masks_and_localized_classes(
    chexlocalize_root: tuple[Path, dict], tmp_path: Path
) -> None:
    root, _ = chexlocalize_root
    classes = ("Cardiomegaly", "Pneumonia", "Pleural Effusion")
    cfg = DataConfig(dataset="chexpert", root=str(root), image_size=16, classes=classes)
    out = build_cache(cfg, tmp_path / "cache", splits=("val-loc", "test-loc"), num_workers=0)
    src = CheXpertDataset(root, "val-loc", 16, classes=list(classes))
    cached = CachedDataset(out, "val-loc")
    assert cached.info.loc_classes == ("Cardiomegaly", "Pleural Effusion") == src.info.loc_classes
    for i in range(len(src)):
        assert cached[i].id == src[i].id
        assert torch.equal(cached[i].masks, src[i].masks)
    sub = CachedDataset(out, "val-loc", classes=["Pleural Effusion", "Pneumonia"])
    assert sub.info.loc_classes == ("Pleural Effusion",)


def test_loc_splits_are_offered_only_with_chexlocalize_files(
    chexlocalize_root: tuple[Path, dict], tmp_path: Path
) -> None:
    """CheXpert without CheXlocalize's download still trains with eval.loc_split: auto."""
    from lesionsweep.config import config_from_dict
    from lesionsweep.data import available_splits
    from lesionsweep.training.trainer import resolve_loc_split

    root, _ = chexlocalize_root
    data = DataConfig(dataset="chexpert", root=str(root), image_size=16)
    assert "val-loc" in available_splits("chexpert", data)
    for f in (root / "CheXlocalize").glob("gt_*.json"):
        f.unlink()
    assert set(available_splits("chexpert", data)) == {"train", "val", "test"}
    assert "val-loc" in available_splits("chexpert")  # what the dataset can offer at all
    cfg = config_from_dict({"data": {"dataset": "chexpert", "root": str(root), "image_size": 16}})
    info = DatasetInfo("chexpert", ("Cardiomegaly",), False, False, 16)  # what 'val' has
    assert resolve_loc_split(cfg, info) is None
