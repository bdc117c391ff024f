"""The preprocessed cache: exact round trip, bit-packed masks, atomic builds, corruption."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from lesionsweep.config import DataConfig
from lesionsweep.data import SPLITS, CachedDataset, build_cache, build_dataset, collate
from lesionsweep.data.rle import encode_rle
from lesionsweep.data.standin import make_nih_root, standin_image, write_png
from lesionsweep.errors import DataError

NIH_OPTS = {"val_loc_per_class": 1}


@pytest.fixture(scope="module")
def nih_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nih")
    make_nih_root(root, num_images=48, image_px=64, seed=3)
    return root


@pytest.fixture(scope="module")
def siim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("siim")
    rng = np.random.default_rng(0)
    rows = ["ImageId, EncodedPixels"]
    for k in range(24):
        iid = f"1.2.840.{k}"
        if k % 2:
            m = np.zeros((1024, 1024), bool)
            for _ in range(1 + k % 3):
                y, x = rng.integers(0, 900, 2)
                m[y : y + 80, x : x + 60] = True
                rows.append(f"{iid}, {encode_rle(m)}")
                m[:] = False
        else:
            rows.append(f"{iid}, -1")
        write_png(root / "png" / f"{iid}.png", standin_image(40, k))
    (root / "train-rle.csv").write_text("\n".join(rows) + "\n")
    return root


def _cfg(root: Path, dataset: str = "nih", size: int = 32, **kw: object) -> DataConfig:
    opts = NIH_OPTS if dataset == "nih" else {"val_fraction": 0.3, "test_fraction": 0.3}
    return DataConfig(dataset=dataset, root=str(root), image_size=size, options=opts, **kw)  # type: ignore[arg-type]


def _same(a, b) -> None:  # type: ignore[no-untyped-def]
    assert a.id == b.id
    torch.testing.assert_close(a.image, b.image, rtol=0, atol=0)
    torch.testing.assert_close(a.target, b.target)
    torch.testing.assert_close(a.target_mask, b.target_mask)
    torch.testing.assert_close(a.boxes, b.boxes)
    assert (a.masks is None) == (b.masks is None)
    if a.masks is not None:
        assert a.masks.dtype == torch.bool and torch.equal(a.masks, b.masks)


def test_round_trip_equals_the_source(nih_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(nih_root)
    out = build_cache(cfg, tmp_path / "c")
    man = json.loads((out / "manifest.json").read_text())
    assert man["version"] == 1 and man["image_size"] == 32 and set(man["splits"]) == set(SPLITS)
    assert man["source"]["options"] == {"seed": 0, "val_fraction": 0.1, "val_loc_per_class": 1}
    n_boxes = 0
    for split in SPLITS:
        src = build_dataset(cfg, split)
        cached = CachedDataset(out, split)
        assert len(cached) == len(src) > 0, split
        assert cached.info == src.info  # type: ignore[attr-defined]
        for i in range(len(src)):  # type: ignore[arg-type]
            _same(cached[i], src[i])
        n_boxes += sum(len(cached[i].boxes) for i in range(len(cached)))
        images = np.load(out / split / "images.npy", mmap_mode="r")
        assert images.dtype == np.uint8 and images.shape == (len(src), 1, 32, 32)  # type: ignore[arg-type]
    assert n_boxes > 0
    batch = collate([CachedDataset(out, "test-loc")[i] for i in range(3)])
    assert batch.images.shape == (3, 1, 32, 32)


def test_masks_are_bit_packed_and_exact(siim_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(siim_root, "siim", size=36)  # 36*36 = 1296 bits: not a multiple of 8 per row
    out = build_cache(cfg, tmp_path / "c", splits=("test-loc", "train"), num_workers=2)
    assert json.loads((out / "manifest.json").read_text())["splits"].keys() == {"test-loc", "train"}
    packed = np.load(out / "test-loc" / "masks.npy", mmap_mode="r")
    assert packed.dtype == np.uint8 and packed.shape[1:] == (1, (36 * 36 + 7) // 8)
    assert not (out / "train" / "masks.npy").exists()
    src = build_dataset(cfg, "test-loc")
    cached = CachedDataset(out, "test-loc")
    assert cached.info.has_masks and len(cached) == len(src) > 3  # type: ignore[arg-type]
    assert any(cached[i].masks.any() for i in range(len(cached)))  # type: ignore[union-attr]
    for i in range(len(cached)):
        _same(cached[i], src[i])
    with pytest.raises(DataError, match=r"split 'val' is not in the cache.*test-loc, train"):
        CachedDataset(out, "val")


def test_unreadable_image_aborts_atomically_or_is_skipped(nih_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    for f in nih_root.iterdir():
        if f.is_file():
            (root / f.name).symlink_to(f)
    src = build_dataset(_cfg(nih_root), "train")
    (root / "images").mkdir()
    for p in src.paths:  # type: ignore[attr-defined]
        (root / "images" / p.name).symlink_to(p)
    bad = src.ids[5]  # type: ignore[attr-defined]
    (root / "images" / bad).unlink()
    (root / "images" / bad).write_bytes(b"\x89PNG broken")
    cfg = _cfg(root)
    caches = tmp_path / "caches"
    with pytest.raises(DataError, match=bad):
        build_cache(cfg, caches / "c", splits=("train",))
    assert list(caches.iterdir()) == []  # no half cache, no temp folder left
    out = build_cache(cfg, caches / "c", splits=("train",), skip_bad_images=True)
    cached = CachedDataset(out, "train")
    assert len(cached) == len(src) - 1 and bad not in cached.ids  # type: ignore[arg-type]
    assert len(cached.skipped) == 1 and bad in cached.skipped[0][0]
    assert "cannot decode" in cached.skipped[0][1]
    # a failing rebuild leaves the existing cache intact
    with pytest.raises(DataError, match="already exists"):
        build_cache(cfg, out, splits=("train",))
    with pytest.raises(DataError, match=bad):
        build_cache(cfg, out, splits=("train",), overwrite=True)
    assert len(CachedDataset(out, "train")) == len(cached)
    assert sorted(p.name for p in caches.iterdir()) == ["c"]


def test_corrupt_or_mismatched_cache(nih_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(nih_root)
    out = build_cache(cfg, tmp_path / "c", splits=("train", "val"))
    with pytest.raises(DataError, match="cache folder not found"):
        CachedDataset(tmp_path / "nope", "train")
    ds = build_dataset(replace(cfg, cache=str(out)), "train")
    assert isinstance(ds, CachedDataset)
    with pytest.raises(DataError, match=r"image_size 32, the config asks for 64"):
        build_dataset(replace(cfg, cache=str(out), image_size=64), "train")
    with pytest.raises(DataError, match=r"built with options"):
        build_dataset(replace(cfg, cache=str(out), options={"seed": 1}), "train")
    with pytest.raises(DataError, match=r"holds dataset 'nih'"):
        build_dataset(replace(cfg, dataset="siim", cache=str(out), options={}), "train")
    sub = build_dataset(replace(cfg, cache=str(out), classes=("Mass", "Nodule")), "train")
    assert sub.info.classes == ("Mass", "Nodule") and sub[0].target.shape == (2,)  # type: ignore[attr-defined]
    full = CachedDataset(out, "train")
    np.testing.assert_array_equal(sub.targets, full.targets[:, [4, 5]])  # type: ignore[attr-defined]
    with pytest.raises(DataError, match=r"class\(es\) \['Tumour'\] not in the cache"):
        CachedDataset(out, "train", classes=["Tumour"])
    # truncated image array
    img = out / "val" / "images.npy"
    img.write_bytes(img.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"corrupt cache: cannot read .*val/images.npy"):
        CachedDataset(out, "val")
    (out / "train" / "box_offsets.npy").unlink()
    with pytest.raises(DataError, match=r"corrupt cache: .*box_offsets.npy is missing"):
        CachedDataset(out, "train")
    man = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**man, "version": 99}))
    with pytest.raises(DataError, match=r"cache version 99.*rebuild"):
        CachedDataset(out, "train")
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match=r"corrupt cache manifest"):
        CachedDataset(out, "train")
    (out / "manifest.json").unlink()
    with pytest.raises(DataError, match=r"manifest.json is missing"):
        CachedDataset(out, "train")


def test_pickling_never_copies_the_image_array(nih_root: Path, tmp_path: Path) -> None:
    out = build_cache(_cfg(nih_root, size=128), tmp_path / "c", splits=("train",))
    ds = CachedDataset(out, "train")
    blob = pickle.dumps(ds)
    assert len(blob) < 0.5 * len(ds) * 128 * 128  # the memory map is reopened, not serialised
    again = pickle.loads(blob)
    _same(again[3], ds[3])


def test_bad_splits_and_options_fail_before_writing(nih_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"split\(s\) 'dev' not available.*train, val, val-loc"):
        build_cache(_cfg(nih_root), tmp_path / "c", splits=("dev",))
    with pytest.raises(DataError, match=r"unknown options? 'sed'"):
        build_cache(replace(_cfg(nih_root), options={"sed": 1}), tmp_path / "c")
    assert not any(tmp_path.iterdir())


def test_the_phantoms_confounder_masks_round_trip(tmp_path: Path) -> None:
    opts = {"num_train": 4, "num_val": 12, "confounder_class": "effusion", "confounder_prob": 1.0}
    cfg = DataConfig(dataset="phantom", image_size=64, options=opts)
    out = build_cache(cfg, tmp_path / "c", splits=("val",), num_workers=0)
    src, cached = build_dataset(cfg, "val"), CachedDataset(out, "val")
    assert cached.info.confounder_class == src.info.confounder_class == "effusion"
    tubes = 0
    for i in range(len(src)):
        a, b = src[i], cached[i]
        assert a.confounder is not None and b.confounder is not None
        assert b.confounder.dtype == torch.bool and torch.equal(a.confounder, b.confounder)
        tubes += int(b.confounder.any())
    assert tubes > 0
    batch = collate([cached[0], cached[1]])
    assert batch.confounder is not None and batch.confounder.shape == (2, 64, 64)
    # a class subset without the confounder's class names none (as the phantom does)
    sub = CachedDataset(out, "val", classes=["nodule"])
    assert sub.info.confounder_class is None
    plain = build_cache(replace(cfg, options={"num_train": 4, "num_val": 3}), tmp_path / "p")
    assert CachedDataset(plain, "val")[0].confounder is None
