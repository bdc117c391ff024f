"""build_dataset: dispatch, split and option checks, config plumbing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from lesionsweep.config import DataConfig, config_from_dict
from lesionsweep.data import DATASETS, SPLITS, Sample, available_splits, build_dataset
from lesionsweep.data.nih import NIHDataset
from lesionsweep.data.standin import make_nih_root
from lesionsweep.errors import DataError


@pytest.fixture(scope="module")
def nih_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nih")
    make_nih_root(root, num_images=30, image_px=48, seed=1)
    return root


def test_registry_and_available_splits() -> None:
    assert set(DATASETS) == {"phantom", "nih", "siim", "rsna", "chexpert"}
    for name in ("nih", "siim", "rsna", "phantom", "chexpert"):  # CheXpert's *-loc: CheXlocalize
        assert available_splits(name) == SPLITS


def test_nih_through_the_config(nih_root: Path) -> None:
    raw = {
        "data": {
            "dataset": "nih",
            "root": str(nih_root),
            "image_size": 40,
            "classes": ["Effusion", "Mass"],
            "skip_bad_images": True,
            "options": {"val_fraction": 0.2, "val_loc_per_class": 1},
        }
    }
    cfg = config_from_dict(raw).data
    ds = build_dataset(cfg, "test-loc")
    assert isinstance(ds, NIHDataset)
    assert ds.info.classes == ("Effusion", "Mass") and ds.info.image_size == 40
    assert ds.skip_bad_images and ds.options["val_fraction"] == 0.2
    s = ds[0]
    assert isinstance(s, Sample) and s.image.shape == (1, 40, 40) and s.target.shape == (2,)


def test_phantom_dispatch_and_option_errors() -> None:
    cfg = DataConfig(dataset="phantom", image_size=64, options={"num_train": 3, "num_val": 2})
    ds = build_dataset(cfg, "train")
    assert len(ds) == 3 and ds.info.image_size == 64  # type: ignore[arg-type, attr-defined]
    assert ds[0].image.shape == (1, 64, 64)
    assert len(build_dataset(cfg, "val-loc")) == 2  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"phantom.*num_trian"):
        build_dataset(replace(cfg, options={"num_trian": 3}), "train")
    with pytest.raises(DataError, match=r"repeat data config fields"):
        build_dataset(replace(cfg, options={"image_size": 32}), "train")


def test_split_and_dataset_errors(nih_root: Path) -> None:
    cfg = DataConfig(dataset="nih", root=str(nih_root), image_size=32)
    with pytest.raises(DataError, match=r"unknown split 'validation'.*train, val, val-loc, test"):
        build_dataset(cfg, "validation")
    # CheXpert's val-loc needs CheXlocalize's files next to the data
    with pytest.raises(DataError, match=r"CheXlocalize file gt_segmentations_val.json not found"):
        build_dataset(replace(cfg, dataset="chexpert"), "val-loc")
    with pytest.raises(DataError, match=r"data.root is required for dataset 'nih'"):
        build_dataset(replace(cfg, root=None), "train")
    with pytest.raises(DataError, match=r"unknown dataset 'mimic'.*phantom, nih"):
        build_dataset(replace(cfg, dataset="mimic"), "train")
    with pytest.raises(DataError, match=r"unknown options? 'folds' for dataset 'nih'"):
        build_dataset(replace(cfg, options={"folds": 5}), "train")
    with pytest.raises(DataError, match=r"image_size must be an integer >= 8"):
        build_dataset(replace(cfg, image_size=4), "train")
