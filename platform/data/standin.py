"""Stand-in dataset folders: real file layouts with generated images, for tests and benchmarks.

The real films are not redistributable, so the loader tests and ``benchmarks/bench_cache.py``
write folders with the official file names and formats (:func:`make_nih_root`) or official
metadata rows (:func:`write_lines_subset`) and film-like generated PNGs (:func:`standin_image`):
a smooth body-shaped gradient plus mild grain, so PNG sizes and decode times are of the same
order as real 8-bit chest films.
"""

from __future__ import annotations

import gzip
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np

from .nih import NIH_CLASSES


def standin_image(size: int, seed: int) -> np.ndarray:
    """A film-like ``uint8`` ``[size, size]`` grayscale image, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    low = rng.normal(0.0, 1.0, (8, 8)).astype(np.float32)
    field = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    body = np.exp(-(((xx - 0.5) / 0.32) ** 2) - (((yy - 0.55) / 0.45) ** 2))
    img = 40.0 + 150.0 * body + 18.0 * field
    img += rng.normal(0.0, 4.0, (size, size)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_png(path: Path, img: np.ndarray) -> Path:
    """Write ``img`` as PNG (creating folders)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"cannot write {path}")
    return path


def open_text(path: Path) -> list[str]:
    """Lines of a text file, transparently reading ``.gz`` and single-member ``.zip`` files."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as z:
            data = z.read(z.namelist()[0])
    else:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
    return data.decode("utf-8").splitlines()


def write_lines_subset(
    src: Path, dst: Path, keep: Callable[[str], bool], header_lines: int = 1
) -> int:
    """Copy the header and the data lines of ``src`` for which ``keep(line)`` is true to ``dst``
    (byte-for-byte lines, so the official quirks survive). Returns the number of data lines."""
    lines = open_text(src)
    out = lines[:header_lines] + [ln for ln in lines[header_lines:] if ln and keep(ln)]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("\n".join(out) + "\n")
    return len(out) - header_lines


def make_nih_root(
    root: Path,
    num_images: int = 300,
    image_px: int = 1024,
    images_per_patient: int = 3,
    box_fraction: float = 0.2,
    seed: int = 0,
    image_dir: str = "images_001/images",
) -> list[str]:
    """Write an NIH-style folder with generated labels, boxes and film-like PNGs.

    Files: ``Data_Entry_2017.csv`` with the original header (bracketed columns and a trailing
    comma), ``BBox_List_2017.csv`` (``Infiltrate`` spelling), ``train_val_list.txt`` /
    ``test_list.txt`` (patient-wise; every box image in the test list), and
    ``<image_dir>/<id>.png``. Returns the image ids.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    ids: list[str] = []
    rows: list[str] = []
    boxes: list[str] = []
    n_pat = max(1, -(-num_images // images_per_patient))
    test_patients = set(rng.choice(n_pat, size=max(1, n_pat // 4), replace=False).tolist())
    train_val: list[str] = []
    test: list[str] = []
    for i in range(num_images):
        pid = i // images_per_patient + 1
        name = f"{pid:08d}_{i % images_per_patient:03d}.png"
        k = int(rng.integers(0, 3))
        labs = sorted(set(rng.choice(len(NIH_CLASSES), size=k, replace=False).tolist()))
        text = "|".join(NIH_CLASSES[c] for c in labs) or "No Finding"
        rows.append(f"{name},{text},{i % images_per_patient},{pid},50,M,PA,2500,2048,0.168,0.168,")
        ids.append(name)
        in_test = (pid - 1) in test_patients
        (test if in_test else train_val).append(name)
        if in_test and labs and rng.random() < box_fraction / 0.25:
            c = labs[0] if labs[0] < 8 else int(rng.integers(0, 8))
            x, y = rng.uniform(50, 600, 2)
            w, h = rng.uniform(40, 300, 2)
            label = "Infiltrate" if NIH_CLASSES[c] == "Infiltration" else NIH_CLASSES[c]
            boxes.append(f"{name},{label},{x},{y},{w},{h}")
    header = (
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
        "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
    )
    (root / "Data_Entry_2017.csv").write_text("\n".join([header, *rows]) + "\n")
    (root / "BBox_List_2017.csv").write_text(
        "\n".join(["Image Index,Finding Label,Bbox [x,y,w,h],,,", *boxes]) + "\n"
    )
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    for i, name in enumerate(ids):
        write_png(root / image_dir / name, standin_image(image_px, seed * 100003 + i))
    return ids


def write_standin_images(
    folder: Path, names: Iterable[str], image_px: int, seed: int = 0
) -> list[Path]:
    """Write one film-like PNG per file name under ``folder``."""
    return [
        write_png(folder / n, standin_image(image_px, seed * 100003 + i))
        for i, n in enumerate(names)
    ]
