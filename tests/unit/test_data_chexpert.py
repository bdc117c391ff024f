"""CheXpert: uncertainty policies on the real train.csv, path resolution, splits, bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from lesionsweep.data.chexpert import (
    CHEXPERT_CLASSES,
    PCAM_CLASSES,
    PCAM_POLICY,
    CheXpertDataset,
    class_policies,
    read_chexpert_labels,
)
from lesionsweep.data.standin import standin_image, write_png
from lesionsweep.errors import DataError

# value counts of the real train.csv (223,414 rows) for PCAM's five tasks
POSITIVE = np.array([27000, 52246, 14783, 33376, 86187])
UNCERTAIN = np.array([8087, 12984, 27742, 33739, 11628])


@pytest.fixture(scope="module")
def train_csv(txv_data_dir: Path) -> Path:
    return txv_data_dir / "chexpert_train.csv.gz"


def test_pcam_default_policy_counts(train_csv: Path) -> None:
    lab = read_chexpert_labels(train_csv, PCAM_CLASSES, PCAM_POLICY)
    assert lab.target.shape == (223414, 5)
    # U-Ones for Edema and Atelectasis, U-Zeros for the others, blank -> 0
    np.testing.assert_array_equal(lab.target.sum(0), POSITIVE + UNCERTAIN * [0, 1, 0, 1, 0])
    np.testing.assert_array_equal(lab.target.sum(0), [27000, 65230, 14783, 67115, 86187])
    assert lab.target_mask.all()
    assert int(lab.frontal.sum()) == 191027
    assert lab.paths[0] == "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"
    assert lab.patients[0] == "patient00001"


@pytest.mark.parametrize("policy", ["U-Ones", "U-Zeros", "U-Ignore"])
def test_single_policy_counts(train_csv: Path, policy: str) -> None:
    pol = class_policies(PCAM_CLASSES, policy)
    lab = read_chexpert_labels(train_csv, PCAM_CLASSES, pol)
    ones = POSITIVE + (UNCERTAIN if policy == "U-Ones" else 0)
    np.testing.assert_array_equal(lab.target.sum(0), ones)
    hidden = UNCERTAIN if policy == "U-Ignore" else 0
    np.testing.assert_array_equal((lab.target_mask == 0).sum(0), hidden)
    assert not (lab.target * (1 - lab.target_mask)).any()  # ignored labels are 0


def test_policy_mapping_and_names() -> None:
    pol = class_policies(PCAM_CLASSES, {"Cardiomegaly": "U-Ignore"})
    assert pol == {**PCAM_POLICY, "Cardiomegaly": "U-Ignore"}
    assert class_policies(["Fracture"], None) == {"Fracture": "U-Zeros"}
    with pytest.raises(DataError, match="not among the selected classes"):
        class_policies(["Edema"], {"Cardiomegaly": "U-Ones"})


def _write_root(base: Path, n_patients: int = 40) -> Path:
    """``base/CheXpert-v1.0-small/{train.csv, valid.csv, train/..., valid/...}`` with JPEGs."""
    top = base / "CheXpert-v1.0-small"
    cols = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_CLASSES]
    rng = np.random.default_rng(0)
    vals = ["", "0.0", "1.0", "-1.0"]
    for part, n in (("train", n_patients), ("valid", 5)):
        rows = [",".join(cols)]
        for p in range(1, n + 1):
            for view in ("frontal", "lateral"):
                rel = f"CheXpert-v1.0-small/{part}/patient{p:05d}/study1/view1_{view}.jpg"
                labels = [vals[int(k)] for k in rng.integers(0, 4, len(CHEXPERT_CLASSES))]
                rows.append(",".join([rel, "Female", "50", view.title(), "AP", *labels]))
                write_png(base / rel, standin_image(20 + p % 3, p))  # JPEG by extension
        (top / f"{part}.csv").parent.mkdir(parents=True, exist_ok=True)
        (top / f"{part}.csv").write_text("\n".join(rows) + "\n")
    return top


def test_dataset_paths_splits_and_policies(tmp_path: Path) -> None:
    top = _write_root(tmp_path)
    for root in (tmp_path, top):  # the parent of CheXpert-v1.0-small, or the folder itself
        tr = CheXpertDataset(root, "train", image_size=32)
        va = CheXpertDataset(root, "val", image_size=32)
        te = CheXpertDataset(root, "test", image_size=32)
        assert len(tr) + len(va) == 80 and len(te) == 10
        va2 = CheXpertDataset(root, "val", image_size=32, options={"val_fraction": 0.3})
        tr2 = CheXpertDataset(root, "train", image_size=32, options={"val_fraction": 0.3})
        assert len(va2) + len(tr2) == 80 and len(va2) > len(va)
        assert not set(va2.patients) & set(tr2.patients)
        assert tr.info.classes == PCAM_CLASSES and not tr.info.has_boxes
        s = te[0]
        assert s.image.shape == (1, 32, 32) and s.boxes.shape == (0, 5) and s.masks is None
        assert s.id.startswith("CheXpert-v1.0-small/valid/")
    fr = CheXpertDataset(top, "train", 32, options={"frontal_only": True, "val_fraction": 0.01})
    assert len(fr) == 40 and all("frontal" in i for i in fr.ids)
    opts = {"uncertainty": "ignore", "val_fraction": 0.01}
    ign = CheXpertDataset(top, "train", 32, classes=["Edema"], options=opts)
    assert ign.info.classes == ("Edema",) and ign.target_mask.shape == (80, 1)
    raw = {ln.split(",")[0]: ln.split(",")[5 + CHEXPERT_CLASSES.index("Edema")]
           for ln in (top / "train.csv").read_text().splitlines()[1:]}  # fmt: skip
    hidden = np.array([raw[i] == "-1.0" for i in ign.ids])
    assert hidden.any()
    np.testing.assert_array_equal(ign.target_mask[:, 0] == 0, hidden)
    np.testing.assert_array_equal(ign.targets[:, 0], [raw[i] == "1.0" for i in ign.ids])
    item = ign[int(np.flatnonzero(hidden)[0])]
    assert item.target_mask.tolist() == [0.0] and item.target.tolist() == [0.0]


def test_loc_splits_need_chexlocalize_and_bad_inputs(tmp_path: Path) -> None:
    top = _write_root(tmp_path, n_patients=3)
    # val-loc / test-loc come from CheXlocalize (tests/unit/test_data_chexlocalize.py)
    with pytest.raises(DataError, match=r"CheXlocalize file gt_segmentations_val.json not found"):
        CheXpertDataset(top, "val-loc")
    with pytest.raises(DataError, match=r"uncertainty=.*unknown uncertainty policy 'U-Twos'"):
        CheXpertDataset(top, "train", options={"uncertainty": "U-Twos"})
    with pytest.raises(DataError, match=r"unknown class 'Cardio'"):
        CheXpertDataset(top, "train", options={"uncertainty": {"Cardio": "U-Ones"}})
    with pytest.raises(DataError, match=r"unknown options? 'policy'.*uncertainty"):
        CheXpertDataset(top, "train", options={"policy": "U-Ones"})
    text = (top / "train.csv").read_text().splitlines()
    cells = text[3].split(",")
    cells[5 + CHEXPERT_CLASSES.index("Edema")] = "2.0"
    text[3] = ",".join(cells)
    (top / "train.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"train.csv line 4, column 'Edema': label '2.0'"):
        CheXpertDataset(top, "train")
    (top / "valid.csv").unlink()
    with pytest.raises(DataError, match=r"CheXpert valid.csv not found"):
        CheXpertDataset(top, "test")
    (tmp_path / "CheXpert-v1.0-small" / "train" / "patient00001" / "study1").joinpath(
        "view1_frontal.jpg"
    ).unlink()
    (top / "train.csv").write_text("\n".join([text[0], text[1], text[2]]) + "\n")
    with pytest.raises(DataError, match=r"patient00001/study1/view1_frontal.jpg.*train.csv line 2"):
        CheXpertDataset(top, "train")
    ds = CheXpertDataset(top, "train", skip_bad_images=True)
    assert len(ds) == 1 and len(ds.skipped) == 1
