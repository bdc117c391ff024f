"""The synthetic chest-film phantom: determinism, exact boxes/masks, knobs, statistics, sanity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lesionsweep.data.phantom import (
    PHANTOM_CLASSES,
    PhantomDataset,
    PhantomSpec,
    render_phantom,
    save_preview,
)
from lesionsweep.data.types import Sample, collate
from lesionsweep.errors import DataError
from scipy import ndimage

EIGHT = np.ones((3, 3), dtype=bool)


def _items(spec: PhantomSpec, n: int, stream: int = 0):
    return [render_phantom(spec, stream, i) for i in range(n)]


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_different_seed_different() -> None:
    spec = PhantomSpec(image_size=64, prevalence=0.5, confounder_class="nodule", seed=7)
    a, b = render_phantom(spec, 0, 3), render_phantom(spec, 0, 3)
    assert a.image.tobytes() == b.image.tobytes()
    assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.masks, b.masks)
    assert a.meta["confounder"] == b.meta["confounder"]
    other = render_phantom(PhantomSpec(image_size=64, prevalence=0.5, seed=8), 0, 3)
    assert a.image.tobytes() != other.image.tobytes()
    assert render_phantom(spec, 0, 4).image.tobytes() != a.image.tobytes()


def test_splits_use_disjoint_streams_and_aliases_match() -> None:
    kw = dict(image_size=64, num_val=3, num_test=3)
    train, val, test = (PhantomDataset(split=s, **kw) for s in ("train", "val", "test"))
    imgs = [ds[0].image for ds in (train, val, test)]
    assert not torch.equal(imgs[0], imgs[1]) and not torch.equal(imgs[1], imgs[2])
    for split, alias in (("val", "val-loc"), ("test", "test-loc")):
        a, b = PhantomDataset(split=split, **kw)[2], PhantomDataset(split=alias, **kw)[2]
        assert a.id == b.id == f"phantom-{split}-000002"
        assert torch.equal(a.image, b.image) and torch.equal(a.boxes, b.boxes)


def test_item_independent_of_access_order_count_and_cache() -> None:
    ref = PhantomDataset(image_size=64, num_train=6, prevalence=0.5)
    forward = [ref[i] for i in range(6)]
    for ds in (
        PhantomDataset(image_size=64, num_train=40, prevalence=0.5, cache_in_memory=False),
        PhantomDataset(image_size=64, num_train=6, prevalence=0.5),
    ):
        for i in (5, 2, 0, 4, 1, 3, 2):
            s = ds[i]
            assert torch.equal(s.image, forward[i].image)
            assert torch.equal(s.boxes, forward[i].boxes)
            assert torch.equal(s.masks, forward[i].masks)
    assert torch.equal(ref[-1].image, forward[5].image)
    with pytest.raises(IndexError):
        ref[6]


def test_dataset_pickles_for_worker_processes() -> None:
    import pickle

    ds = PhantomDataset(image_size=64, num_train=3, prevalence={"mass": 0.5}, classes=["mass"])
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[2].image, ds[2].image) and clone.info == ds.info


def test_confounder_changes_only_the_tube() -> None:
    base = PhantomSpec(image_size=64, prevalence=0.5, seed=3)
    tube = PhantomSpec(
        image_size=64, prevalence=0.5, seed=3, confounder_class="effusion", confounder_prob=1.0,
        confounder_base_rate=1.0,
    )  # fmt: skip
    for i in range(8):
        a, b = render_phantom(base, 0, i), render_phantom(tube, 0, i)
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.masks, b.masks)
        assert not a.meta["confounder"] and b.meta["confounder"]
        x0, y0, x1, y1 = (int(v) for v in b.meta["confounder_box"])
        outside = np.ones((64, 64), dtype=bool)
        outside[max(0, y0 - 2) : y1 + 2, max(0, x0 - 2) : x1 + 2] = False  # + antialiasing
        assert np.array_equal(a.image[outside], b.image[outside])
        assert not np.array_equal(a.image, b.image)


# ----------------------------------------------------------------------------- boxes, masks


def _check_item(item, size: int) -> None:
    assert item.image.dtype == np.uint8 and item.image.shape == (size, size)
    assert item.masks.dtype == bool and item.masks.shape == (len(PHANTOM_CLASSES), size, size)
    assert item.labels.dtype == np.float32 and item.boxes.dtype == np.float32
    assert np.array_equal(item.labels, item.masks.any(axis=(1, 2)).astype(np.float32))
    assert np.all(np.diff(item.boxes[:, 0]) >= 0), "boxes sorted by class"
    for k in range(len(PHANTOM_CLASSES)):
        lab, n = ndimage.label(item.masks[k], structure=EIGHT)
        comp_boxes = sorted(
            (float(sl[1].start), float(sl[0].start), float(sl[1].stop), float(sl[0].stop))
            for sl in ndimage.find_objects(lab)
        )
        boxes = sorted(tuple(map(float, b[1:])) for b in item.boxes if int(b[0]) == k)
        assert comp_boxes == boxes, (k, comp_boxes, boxes)
        assert n == len(boxes)
    if len(item.boxes):
        assert item.boxes[:, 1:].min() >= 0 and item.boxes[:, 1:].max() <= size
        assert np.all(item.boxes[:, 3] > item.boxes[:, 1]) and np.all(
            item.boxes[:, 4] > item.boxes[:, 2]
        )


@pytest.mark.parametrize("size", [64, 96])
def test_each_box_is_the_tight_box_of_one_mask_component(size: int) -> None:
    spec = PhantomSpec(image_size=size, prevalence=0.6, difficulty=0.7, confounder_class="mass")
    items = _items(spec, 40)
    for item in items:
        _check_item(item, size)
    per_class = np.stack([it.labels for it in items]).sum(axis=0)
    assert np.all(per_class > 0), "every class drawn at least once"
    assert any(len(it.boxes) == 0 for it in _items(PhantomSpec(image_size=64, prevalence=0.1), 10))


def test_crowded_same_class_lesions_never_touch() -> None:
    # nodules and masses on small lungs crowded by effusions and pneumothoraces: placement runs
    # out of room (items 81 and 87 of this seed did) and must drop a lesion, not overlap it
    prev = {"nodule": 1.0, "mass": 1.0, "effusion": 1.0, "pneumothorax": 1.0}
    spec = PhantomSpec(image_size=64, prevalence=prev, difficulty=1.0, seed=5)
    for item in _items(spec, 90):
        _check_item(item, 64)


def test_confounder_box_and_mask_agree() -> None:
    spec = PhantomSpec(
        image_size=64, prevalence=0.5, confounder_class="nodule", confounder_prob=1.0
    )
    seen = 0
    for item in _items(spec, 12):
        m = item.meta["confounder_mask"]
        if not item.meta["confounder"]:
            assert m is None and item.meta["confounder_box"] is None
            continue
        seen += 1
        assert item.meta["confounder_kind"] in ("drain", "ng_tube")
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        box = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
        assert tuple(item.meta["confounder_box"]) == tuple(float(v) for v in box)
        plain = render_phantom(PhantomSpec(image_size=64, prevalence=0.5), 0, item.meta["index"])
        gain = item.image[m].astype(float) - plain.image[m]
        assert gain.mean() > 20, "the tube is radio-opaque"
    assert seen >= 6


# ----------------------------------------------------------------------------- statistics


def test_prevalence_per_class_is_respected() -> None:
    prev = {"nodule": 0.1, "mass": 0.5, "cardiomegaly": 0.3, "effusion": 0.7}
    labels = np.stack(
        [it.labels for it in _items(PhantomSpec(image_size=64, prevalence=prev), 300)]
    )
    for k, name in enumerate(PHANTOM_CLASSES):
        assert abs(labels[:, k].mean() - prev.get(name, 0.0)) < 0.09, (name, labels[:, k].mean())
    assert labels[:, PHANTOM_CLASSES.index("pneumothorax")].sum() == 0


def test_confounder_co_occurrence_rates() -> None:
    spec = PhantomSpec(
        image_size=64, prevalence=0.5, confounder_class="mass", confounder_prob=0.8,
        confounder_base_rate=0.1,
    )  # fmt: skip
    items = _items(spec, 300)
    has = np.array([it.labels[PHANTOM_CLASSES.index("mass")] == 1 for it in items])
    tube = np.array([it.meta["confounder"] for it in items])
    assert 100 < has.sum() < 200
    assert abs(tube[has].mean() - 0.8) < 0.1
    assert abs(tube[~has].mean() - 0.1) < 0.07


def test_difficulty_lowers_lesion_contrast() -> None:
    def contrast(difficulty: float) -> float:
        spec = PhantomSpec(image_size=96, prevalence={"mass": 1.0}, difficulty=difficulty)
        vals = []
        for it in _items(spec, 20):
            m = it.masks[PHANTOM_CLASSES.index("mass")]
            ring = ndimage.binary_dilation(m, iterations=4) & ~ndimage.binary_dilation(m)
            vals.append(it.image[m].mean() - it.image[ring].mean())
        return float(np.mean(vals))

    easy, hard = contrast(0.0), contrast(1.0)
    assert easy > 15 and easy > 1.8 * hard, (easy, hard)


# ----------------------------------------------------------------------------- image sanity


def test_image_looks_like_a_frontal_chest_film() -> None:
    size = 128
    imgs = np.stack([it.image for it in _items(PhantomSpec(image_size=size, prevalence=0.0), 12)])
    imgs = imgs.astype(np.float64)
    rows = slice(int(0.3 * size), int(0.55 * size))
    mediastinum = imgs[:, rows, int(0.47 * size) : int(0.53 * size)].mean()
    lungs = np.mean(
        [imgs[:, rows, int(f * size) - 3 : int(f * size) + 3].mean() for f in (0.25, 0.75)]
    )
    abdomen = imgs[:, int(0.9 * size) :, int(0.35 * size) : int(0.65 * size)].mean()
    outside = imgs[:, int(0.85 * size) :, :3].mean()
    assert mediastinum > lungs + 60, (mediastinum, lungs)
    assert abdomen > lungs + 50, (abdomen, lungs)
    assert outside < lungs, (outside, lungs)
    for im in imgs:
        assert im.std() > 30 and im.min() < 40 and im.max() > 180
    # left and right halves are not identical (anatomy is asymmetric: heart, aortic knob)
    assert np.abs(imgs[:, :, : size // 2] - imgs[:, :, size // 2 :][:, :, ::-1]).mean() > 5


def test_lesions_sit_inside_the_thorax() -> None:
    for it in _items(PhantomSpec(image_size=64, prevalence=0.7), 20):
        for _cls, x0, y0, x1, y1 in it.boxes:
            assert 0.03 * 64 < (x0 + x1) / 2 < 0.97 * 64 and 0.05 * 64 < (y0 + y1) / 2 < 0.95 * 64


# ----------------------------------------------------------------------------- dataset API


def test_dataset_items_and_info() -> None:
    ds = PhantomDataset(split="train", image_size=64, num_train=4, prevalence=0.6)
    assert len(ds) == 4
    assert ds.info.name == "phantom" and ds.info.classes == PHANTOM_CLASSES
    assert ds.info.has_boxes and ds.info.has_masks and ds.info.image_size == 64
    s = ds[1]
    assert isinstance(s, Sample) and s.id == "phantom-train-000001"
    assert s.image.dtype == torch.uint8 and s.image.shape == (1, 64, 64)
    assert s.target.dtype == torch.float32 and s.target.shape == (5,)
    assert s.boxes.dtype == torch.float32 and s.boxes.shape[1] == 5
    assert s.masks.dtype == torch.bool and s.masks.shape == (5, 64, 64)
    assert torch.equal(s.target, s.masks.flatten(1).any(1).float())
    assert s.meta["split"] == "train" and s.meta["confounder"] is False
    batch = collate([ds[i] for i in range(4)])
    assert batch.images.shape == (4, 1, 64, 64) and batch.masks.shape == (4, 5, 64, 64)


def test_class_subset_selects_and_reorders() -> None:
    full = PhantomDataset(image_size=64, num_train=12, prevalence=0.6)
    sub = PhantomDataset(
        image_size=64, num_train=12, prevalence=0.6, classes=["effusion", "nodule"]
    )
    assert sub.info.classes == ("effusion", "nodule")
    order = [PHANTOM_CLASSES.index("effusion"), PHANTOM_CLASSES.index("nodule")]
    for i in range(12):
        a, b = full[i], sub[i]
        assert torch.equal(a.image, b.image), "images do not depend on the class subset"
        assert torch.equal(b.target, a.target[order]) and torch.equal(b.masks, a.masks[order])
        want = [(order.index(int(r[0])), *r[1:].tolist()) for r in a.boxes if int(r[0]) in order]
        assert sorted(map(tuple, b.boxes.tolist())) == sorted(
            map(tuple, torch.tensor(want).tolist())
        )


def test_factory_style_kwargs_and_unknown_options() -> None:
    options = {"num_val": 3, "difficulty": 0.5, "confounder_class": "mass"}
    ds = PhantomDataset(split="val-loc", image_size=64, classes=None, **options)
    assert len(ds) == 3 and ds[2].id == "phantom-val-000002"
    with pytest.raises(TypeError, match=r"bogus.*nmu_train|nmu_train.*bogus"):
        PhantomDataset(image_size=64, bogus=1, nmu_train=3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": 63}, "image_size"),
        ({"image_size": 1025}, "image_size"),
        ({"image_size": 100.5}, "image_size"),
        ({"image_size": "128"}, "image_size"),
        ({"prevalence": 1.5}, "prevalence"),
        ({"prevalence": {"nodules": 0.2}}, "nodule"),
        ({"prevalence": {"mass": -0.1}}, "mass"),
        ({"difficulty": -0.1}, "difficulty"),
        ({"difficulty": True}, "difficulty"),
        ({"confounder_class": "tube"}, "confounder_class"),
        ({"confounder_prob": 2.0}, "confounder_prob"),
        ({"confounder_base_rate": -1}, "confounder_base_rate"),
        ({"seed": -1}, "seed"),
        ({"classes": ["nodule", "fracture"]}, "fracture.*pneumothorax"),
        ({"classes": []}, "classes"),
        ({"classes": ["mass", "mass"]}, "unique"),
        ({"classes": "mass"}, "classes"),
        ({"split": "validation"}, "validation.*val-loc"),
        ({"num_train": -1}, "num_train"),
    ],
)
def test_bad_knobs_raise_data_error(kwargs: dict, match: str) -> None:
    with pytest.raises(DataError, match=match):
        PhantomDataset(**{"image_size": 64, **kwargs})


def test_size_bounds_render() -> None:
    small = render_phantom(PhantomSpec(image_size=64, prevalence=1.0), 0, 0)
    _check_item(small, 64)
    big = render_phantom(PhantomSpec(image_size=1024, prevalence=1.0), 0, 0)
    _check_item(big, 1024)
    # the same item at another size shows the same lesion classes in about the same places
    assert np.array_equal(small.labels, big.labels)
    with pytest.raises(DataError, match="stream"):
        render_phantom(PhantomSpec(), -1, 0)


# ----------------------------------------------------------------------------- fast paths


@pytest.mark.parametrize("sw, s", [(64, 128), (65, 130), (64, 97), (64, 64)])
def test_window_upsampling_equals_the_full_resize(sw: int, s: int) -> None:
    # masks are cut from fields upsampled like the image; at factor 2 only a block around the
    # window is resized, which must give the very values of the full resize
    import cv2
    from lesionsweep.data.phantom.banks import _upsample_region

    rng = np.random.default_rng(0)
    arr = rng.standard_normal((sw, sw)).astype(np.float32)
    full = cv2.resize(arr, (s, s), interpolation=cv2.INTER_LINEAR)
    for _ in range(30):
        r0, r1 = sorted(rng.integers(0, s + 1, 2))
        c0, c1 = sorted(rng.integers(0, s + 1, 2))
        r1, c1 = max(r1, r0 + 1), max(c1, c0 + 1)
        got = _upsample_region(arr, s, (r0, min(r1, s), c0, min(c1, s)))
        assert np.array_equal(got, full[r0:r1, c0:c1]), (r0, r1, c0, c1)


def test_cut_keeps_the_largest_component_on_its_tight_box() -> None:
    from lesionsweep.data.phantom.anatomy import _cut

    rng = np.random.default_rng(1)
    for _ in range(20):
        mask = ndimage.binary_opening(rng.random((40, 50)) < 0.35)
        lab, n = ndimage.label(mask, structure=EIGHT)
        les = _cut(3, mask, 7, 11)
        if n == 0:
            assert les is None
            continue
        sizes = np.bincount(lab.ravel())[1:]
        want = lab == 1 + int(np.argmax(sizes))
        rows, cols = np.flatnonzero(want.any(1)), np.flatnonzero(want.any(0))
        assert (les.cls, les.y0, les.x0) == (3, 7 + rows[0], 11 + cols[0])
        assert np.array_equal(les.mask, want[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])


@pytest.mark.parametrize("size", [130, 129])
def test_boxes_exact_on_both_upsampling_paths(size: int) -> None:
    # even sizes take the windowed factor-2 upsampling, odd ones the full resize
    prev = {"cardiomegaly": 1.0, "effusion": 1.0, "pneumothorax": 1.0, "mass": 0.5}
    for item in _items(PhantomSpec(image_size=size, prevalence=prev, seed=2), 6):
        _check_item(item, size)
        assert item.labels[PHANTOM_CLASSES.index("cardiomegaly")] == 1


def test_threads_render_the_same_bytes() -> None:
    # no shared mutable buffers: concurrent renders of one item agree with a serial render
    from concurrent.futures import ThreadPoolExecutor

    spec = PhantomSpec(image_size=64, prevalence=0.5, confounder_class="mass")
    want = [render_phantom(spec, 0, i).image.tobytes() for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: render_phantom(spec, 0, i % 8).image.tobytes(), range(32)))
    assert got == want * 4


def test_save_preview_writes_png(tmp_path) -> None:
    from PIL import Image

    out = save_preview(tmp_path / "sub" / "preview.png", n=2, image_size=64, seed=1)
    with Image.open(out) as im:
        assert im.mode == "RGB" and im.width >= 2 * 64 and im.height >= 64
