"""Shared test fixtures. Tests stay tiny: one torch thread, small images, no weights."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def txv_data_dir() -> Path:
    """Folder of the real dataset metadata files shipped in the torchxrayvision wheel."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("torchxrayvision (test extra) is not installed; `pip install -e '.[test]'`")
    d = Path(list(spec.submodule_search_locations)[0]) / "data"
    assert d.is_dir(), d
    return d


def write_chexlocalize_root(base: Path, n_train: int = 0) -> dict:
    """A CheXpert + CheXlocalize folder in the published layout, with tiny JPEGs.

    ``base/CheXpert-v1.0/{train.csv, valid.csv, train/..., valid/...}``,
    ``base/CheXpert/{test_labels.csv, test/...}`` and ``base/CheXlocalize/gt_{segmentations,
    annotations}_{val,test}.json``. Films are 48 x 40 JPEGs (h x w); the ground truth is given
    at twice that (96 x 80), as CheXlocalize's masks are at the full-resolution size while
    CheXpert-small's films are downscaled. Regions are rectangles aligned to a 16 x 16 grid
    (rows of 6, columns of 5 original pixels), so at ``image_size=16`` each rectangle covers
    whole cells and its resized mask is known exactly.

    Returns ``{"val": {cxr_id: {class: [(r0, r1, c0, c1) cells]}}, "test": ...}`` with the
    regions in 16 x 16 cells (end-exclusive), keyed by CheXpert column names.
    """
    import json

    import numpy as np
    from lesionsweep.data.chexlocalize import CHEXLOCALIZE_NAMES, encode_coco_rle
    from lesionsweep.data.chexpert import CHEXPERT_CLASSES
    from lesionsweep.data.standin import standin_image, write_png

    json_names = [n for n in CHEXLOCALIZE_NAMES if n != "Lung Opacity"]  # as published
    to_json = {CHEXLOCALIZE_NAMES[n]: n for n in json_names}
    sets = {
        "val": {
            "patient64541_study1_view1_frontal": {"Cardiomegaly": [(6, 12, 4, 12)]},
            "patient64542_study1_view1_frontal": {
                "Pleural Effusion": [(10, 14, 1, 5), (10, 14, 11, 15)],
                "Lung Opacity": [(2, 6, 2, 6)],
            },
            "patient64543_study1_view1_frontal": {},
            "patient64542_study1_view2_lateral": {"Pleural Effusion": [(9, 14, 2, 14)]},
        },
        "test": {
            "patient64741_study1_view1_frontal": {"Support Devices": [(0, 8, 7, 9)]},
            "patient64742_study1_view1_frontal": {"Edema": [(3, 13, 3, 13)]},
        },
    }
    cols = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_CLASSES]

    def row(rel: str, positives: list) -> str:
        view = "Lateral" if rel.endswith("lateral.jpg") else "Frontal"
        labels = ["1.0" if c in positives else "0.0" for c in CHEXPERT_CLASSES]
        return ",".join([rel, "Female", "60", view, "AP", *labels])

    seed = 0
    for part, csv_rel, prefix in (
        ("val", "CheXpert-v1.0/valid.csv", "CheXpert-v1.0/valid"),
        ("test", "CheXpert/test_labels.csv", "test"),
    ):
        rows = [",".join(cols)]
        segs, anns = {}, {}
        for cxr, regions in sets[part].items():
            patient, study, view = cxr.split("_", 2)
            rel = f"{prefix}/{patient}/{study}/{view}.jpg"
            img_base = base / "CheXpert" if part == "test" else base
            seed += 1
            write_png(img_base / rel, standin_image(48, seed)[:, :40])
            rows.append(row(rel, list(regions)))
            segs[cxr], anns[cxr] = {}, {"img_size": [96, 80]}
            for cls, name in to_json.items():
                m = np.zeros((96, 80), dtype=bool)
                polys = []
                for r0, r1, c0, c1 in regions.get(cls, []):
                    m[r0 * 6 : r1 * 6, c0 * 5 : c1 * 5] = True
                    x0, x1, y0, y1 = c0 * 5, c1 * 5 - 1, r0 * 6, r1 * 6 - 1
                    polys.append([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
                segs[cxr][name] = encode_coco_rle(m)
                if polys:
                    anns[cxr][name] = polys
        csv = base / csv_rel
        csv.parent.mkdir(parents=True, exist_ok=True)
        csv.write_text("\n".join(rows) + "\n")
        loc = base / "CheXlocalize"
        loc.mkdir(exist_ok=True)
        (loc / f"gt_segmentations_{part}.json").write_text(json.dumps(segs))
        (loc / f"gt_annotations_{part}.json").write_text(json.dumps(anns))
    if n_train:
        rows = [",".join(cols)]
        rng = np.random.default_rng(0)
        for p in range(1, n_train + 1):
            rel = f"CheXpert-v1.0/train/patient{p:05d}/study1/view1_frontal.jpg"
            write_png(base / rel, standin_image(48, 100 + p)[:, :40])
            pos = [c for c in CHEXPERT_CLASSES if rng.random() < 0.4]
            rows.append(row(rel, pos))
        (base / "CheXpert-v1.0/train.csv").write_text("\n".join(rows) + "\n")
    return sets


@pytest.fixture
def chexlocalize_root(tmp_path: Path) -> tuple[Path, dict]:
    """``(root, regions)`` of :func:`write_chexlocalize_root` in a fresh folder."""
    return tmp_path, write_chexlocalize_root(tmp_path)


@pytest.fixture(scope="session")
def chexlocalize_writer():  # noqa: ANN201 - returns write_chexlocalize_root
    """:func:`write_chexlocalize_root` itself, for tests that need other folders/sizes."""
    return write_chexlocalize_root
