"""CheXpert (Irvin et al. 2019) with per-class uncertainty policies.

Files: ``train.csv`` and ``valid.csv`` (compressed variants accepted) in ``root`` or in a
``CheXpert-v1.0*`` folder inside it. Image paths in the CSVs start with
``CheXpert-v1.0-small/...``; they are resolved against ``root``, ``root``'s parent, or ``root``
with that first component dropped (whichever finds the first images), so ``root`` may be the
folder holding ``CheXpert-v1.0-small`` or that folder itself.

Labels: blank -> 0, ``0`` -> 0, ``1`` -> 1, ``-1`` (uncertain) by a per-class policy:

* ``U-Ones``: 1; ``U-Zeros``: 0; ``U-Ignore``: 0 with ``target_mask`` 0 (the loss ignores it).

Defaults follow PCAM (``jfhealthcare/Chexpert``): classes Cardiomegaly, Edema, Consolidation,
Atelectasis, Pleural Effusion; U-Ones for Edema and Atelectasis, U-Zeros for the others. Option
``uncertainty`` is one policy name for every class, or a mapping ``{class: policy}`` overriding
the defaults (classes outside PCAM's five default to U-Zeros). Policy names are case-insensitive
and may drop the ``U-`` (``ones``, ``zeros``, ``ignore``).

Splits: ``train`` / ``val`` from ``train.csv``, patient-disjoint by
``hash_unit(patient, seed) < val_fraction`` (0.05); ``test`` is ``valid.csv`` (the official
validation set, since the official test labels are not distributed with the data). Option
``frontal_only`` keeps frontal views. Images (320 x ~390 in the small version) are resized plainly
(stretched) to ``S x S``.

Localization splits come from CheXlocalize (:mod:`lesionsweep.data.chexlocalize`):

* ``val-loc``: the CXRs of ``gt_segmentations_val.json`` (CheXpert's validation set, 234 CXRs),
  labels from ``valid.csv``. These are the images of the ``test`` split above: selecting on
  ``val-loc`` and reporting classification on ``test`` reuses the same films.
* ``test-loc``: the CXRs of ``gt_segmentations_test.json`` (CheXpert's test set, 668 CXRs), labels
  from ``test_labels.csv`` (CheXlocalize's download: ``CheXpert/test_labels.csv`` with paths
  ``test/patientNNNNN/studyN/viewN_frontal.jpg``). Sealed like every test split: only
  ``lesionsweep evaluate`` reaches it.

A CXR id (``patient64541_study1_view1_frontal``) is matched to the labels CSV row whose ``Path``
ends in ``patient64541/study1/view1_frontal.jpg``; the image is that row's path, resolved against
``root``, ``root``'s parent, or any folder directly inside ``root`` (so ``root`` may hold
``CheXpert-v1.0-small/``, ``CheXpert/`` and ``CheXlocalize/`` side by side). The JSON files are
looked for in option ``chexlocalize_dir`` (relative to ``root`` or absolute) or else in ``root``,
``root/CheXlocalize``, ``root``'s parent and ``root/../CheXlocalize``. Option ``loc_source``:
``segmentations`` (default, the RLE masks) or ``annotations`` (``gt_annotations_*.json``, the raw
polygons; only CXRs with a positive finding are in that file). Masks are decoded at the film's
original size, resized to ``S x S`` by area fraction > 0.5 (as the image is stretched) and carried
as ``masks`` ``bool [K, S, S]``; ``boxes`` are the bounding boxes of the 8-connected components of
the resized masks. Only the 10 CheXlocalize classes (:data:`CHEXLOCALIZE_CLASSES`; the JSON's
``Airspace Opacity`` is CheXpert's ``Lung Opacity``) have masks; other selected classes get empty
planes and ``info.loc_classes`` leaves them out, so localization metrics skip them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .base import (
    LOC_SPLITS,
    Option,
    RecordDataset,
    boolean,
    find_file,
    fraction,
    hash_unit,
    int_at_least,
    read_csv,
)
from .chexlocalize import (
    CHEXLOCALIZE_CLASSES,
    CHEXLOCALIZE_FILES,
    LocFile,
    cxr_id_from_path,
    read_annotations,
    read_segmentations,
)
from .images import mask_component_boxes, resize_mask

CHEXPERT_CLASSES = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
PCAM_CLASSES = ("Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion")
POLICIES = ("U-Ones", "U-Zeros", "U-Ignore")
PCAM_POLICY = {
    "Cardiomegaly": "U-Zeros",
    "Edema": "U-Ones",
    "Consolidation": "U-Zeros",
    "Atelectasis": "U-Ones",
    "Pleural Effusion": "U-Zeros",
}
CHEXPERT_SPLITS = ("train", "val", "val-loc", "test-loc", "test")
LOC_SOURCES = ("segmentations", "annotations")
_PATIENT_RE = re.compile(r"(patient\d+)")


def policy_name(v: Any) -> str:
    """Normalise a policy name (``ones`` / ``U-Ones`` / ``u_ones``) to ``U-Ones`` etc."""
    if not isinstance(v, str):
        raise ValueError(f"a policy must be one of {', '.join(POLICIES)}, got {v!r}")
    key = v.strip().lower().replace("_", "-")
    key = key[2:] if key.startswith("u-") else key
    for p in POLICIES:
        if p[2:].lower() == key:
            return p
    raise ValueError(f"unknown uncertainty policy {v!r}; allowed: {', '.join(POLICIES)}")


def _uncertainty(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, str):
        return policy_name(v)
    if isinstance(v, Mapping):
        out = {}
        for k, p in v.items():
            if k not in CHEXPERT_CLASSES:
                raise ValueError(
                    f"unknown class {k!r} in the uncertainty mapping; allowed: "
                    f"{', '.join(CHEXPERT_CLASSES)}"
                )
            out[str(k)] = policy_name(p)
        return out
    raise ValueError(f"expected a policy name or a mapping class -> policy, got {v!r}")


def _opt_dir(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        raise ValueError("expected a folder path (string) or null")
    return v


def _loc_source(v: Any) -> str:
    if v not in LOC_SOURCES:
        raise ValueError(f"allowed: {', '.join(LOC_SOURCES)}")
    return str(v)


CHEXPERT_OPTIONS: dict[str, Option] = {
    "seed": Option(0, int_at_least(0), "seed of the train/val patient split"),
    "val_fraction": Option(0.05, fraction(), "share of train.csv patients held out as val"),
    "uncertainty": Option(None, _uncertainty, "policy name or {class: policy} (default PCAM)"),
    "frontal_only": Option(False, boolean, "keep frontal views only"),
    "chexlocalize_dir": Option(None, _opt_dir, "folder of CheXlocalize's JSON files"),
    "loc_source": Option("segmentations", _loc_source, "segmentations or annotations"),
}


def class_policies(classes: Sequence[str], uncertainty: Any) -> dict[str, str]:
    """Per-class policy: ``uncertainty`` (a name or mapping) over PCAM's defaults."""
    out = {c: PCAM_POLICY.get(c, "U-Zeros") for c in classes}
    if isinstance(uncertainty, str):
        return dict.fromkeys(classes, uncertainty)
    if isinstance(uncertainty, Mapping):
        for k, p in uncertainty.items():
            if k not in out:
                raise DataError(
                    f"chexpert option uncertainty names class {k!r}, which is not among the "
                    f"selected classes: {', '.join(classes)}"
                )
            out[k] = p
    return out


@dataclass(frozen=True)
class ChexpertLabels:
    """Parsed CheXpert CSV for a set of classes.

    Attributes:
        paths: the CSV's ``Path`` column.
        patients: patient id per row (``patient00001``; the path itself when absent).
        frontal: ``bool`` per row (``Frontal/Lateral == "Frontal"``; all True without that column).
        target, target_mask: ``float32`` ``[N, K]`` after the policies.
        path: the file read.
    """

    paths: list[str]
    patients: list[str]
    frontal: np.ndarray
    target: np.ndarray
    target_mask: np.ndarray
    path: Path


def read_chexpert_labels(
    path: Path, classes: Sequence[str], policies: Mapping[str, str]
) -> ChexpertLabels:
    """Parse a CheXpert CSV and apply the uncertainty policies.

    Raises:
        DataError: missing columns or a label value other than blank, 0, 1, -1 (naming the file,
            line and column).
    """
    import pandas as pd

    df = read_csv(path, ["Path", *classes], index_col=False, dtype={"Path": str})
    raw = df[list(classes)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    text_nonblank = df[list(classes)].notna().to_numpy()
    valid = np.isnan(raw) & ~text_nonblank | np.isin(raw, (-1.0, 0.0, 1.0))
    if not valid.all():
        i, k = (int(a[0]) for a in np.nonzero(~valid))
        raise DataError(
            f"{path} line {i + 2}, column {classes[k]!r}: label '{df[classes[k]].iloc[i]}'; "
            "allowed: blank, 0, 1, -1"
        )
    target = (raw == 1.0).astype(np.float32)
    tmask = np.ones_like(target)
    unc = raw == -1.0
    for k, c in enumerate(classes):
        pol = policies[c]
        if pol == "U-Ones":
            target[unc[:, k], k] = 1.0
        elif pol == "U-Ignore":
            tmask[unc[:, k], k] = 0.0
    paths = df["Path"].astype(str).str.strip().tolist()
    patients = [m.group(1) if (m := _PATIENT_RE.search(p)) else p for p in paths]
    if "Frontal/Lateral" in df.columns:
        frontal = (df["Frontal/Lateral"].astype(str).str.strip() == "Frontal").to_numpy()
    else:
        frontal = np.ones(len(df), dtype=bool)
    return ChexpertLabels(paths, patients, frontal, target, tmask, path)


def _resolve_bases(root: Path, sample: Sequence[str]) -> list[tuple[Path, int]]:
    """Candidate ``(base, n_leading_components_to_drop)`` ordered by hits on ``sample``."""
    cands = [(root, 0), (root.parent, 0), (root, 1)]
    hits = []
    for base, drop in cands:
        n = 0
        for p in sample:
            parts = Path(p).parts[drop:]
            if parts and (base.joinpath(*parts)).is_file():
                n += 1
        hits.append(n)
    order = sorted(range(len(cands)), key=lambda j: (-hits[j], j))
    return [cands[j] for j in order]


def _loc_bases(root: Path, sample: Sequence[str]) -> list[tuple[Path, int]]:
    """Like :func:`_resolve_bases`, plus every folder directly inside ``root`` (CheXlocalize's
    download keeps ``CheXpert/test/...`` next to ``CheXlocalize/``)."""
    cands = [(root, 0), (root.parent, 0), (root, 1)]
    cands += [(d, drop) for d in sorted(root.iterdir()) if d.is_dir() for drop in (0, 1)]
    hits = []
    for base, drop in cands:
        n = 0
        for p in sample:
            parts = Path(p).parts[drop:]
            if parts and base.joinpath(*parts).is_file():
                n += 1
        hits.append(n)
    order = sorted(range(len(cands)), key=lambda j: (-hits[j], j))
    return [cands[j] for j in order]


def _find_paths(rel: Sequence[str], bases: Sequence[tuple[Path, int]]) -> list[Path | None]:
    out: list[Path | None] = []
    for p in rel:
        found = None
        for base, drop in bases:
            parts = Path(p).parts[drop:]
            cand = base.joinpath(*parts) if parts else None
            if cand is not None and cand.is_file():
                found = cand
                break
        out.append(found)
    return out


def find_chexlocalize_file(root: Path, name: str, folder: str | None) -> Path:
    """``name`` in ``folder`` (relative to ``root`` or absolute) or in the default places.

    Raises:
        DataError: not found (listing the folders searched).
    """
    if folder is not None:
        d = Path(folder)
        dirs = [d if d.is_absolute() else root / d]
    else:
        dirs = [root, root / "CheXlocalize", root.parent, root.parent / "CheXlocalize"]
    for d in dirs:
        if (d / name).is_file():
            return d / name
    raise DataError(
        f"CheXlocalize file {name} not found; looked in: {', '.join(str(d) for d in dirs)}. "
        "Download CheXlocalize (rajpurkarlab/cheXlocalize) next to CheXpert or set "
        "data.options.chexlocalize_dir; to train without localization splits set "
        "eval.loc_split: none"
    )


class CheXpertDataset(RecordDataset):
    """CheXpert image labels; CheXlocalize masks and boxes in ``val-loc`` / ``test-loc``.

    Items: ``image`` ``uint8`` ``[1, S, S]``; ``target`` ``float32`` ``[K]``; ``target_mask``
    ``float32`` ``[K]`` (0 where U-Ignore hides an uncertain label); in ``*-loc`` splits ``masks``
    ``bool`` ``[K, S, S]`` and ``boxes`` ``float32`` ``[N, 5]`` (class, x0, y0, x1, y1) in
    continuous pixels of the ``S x S`` image; elsewhere empty boxes and ``masks=None``.

    Args:
        root, split, image_size, skip_bad_images: as for
            :class:`~lesionsweep.data.nih.NIHDataset`; splits ``train``, ``val``, ``val-loc``,
            ``test-loc``, ``test``.
        classes: subset of :data:`CHEXPERT_CLASSES` (default :data:`PCAM_CLASSES`).
        options: ``seed`` (0), ``val_fraction`` (0.05), ``uncertainty`` (PCAM's per-class
            choice), ``frontal_only`` (False), ``chexlocalize_dir`` (None: default places),
            ``loc_source`` (``segmentations``).
    """

    name = "chexpert"
    title = "CheXpert"
    default_classes = PCAM_CLASSES
    all_classes = CHEXPERT_CLASSES
    splits = CHEXPERT_SPLITS

    @classmethod
    def offered_splits(cls, root: str | Path | None, options: Mapping[str, Any]) -> tuple[str, ...]:
        """All splits when CheXlocalize's validation file is found, else no ``*-loc`` split (so
        ``eval.loc_split: auto`` trains on CheXpert alone without complaint)."""
        seg_name, ann_name, _ = CHEXLOCALIZE_FILES["val-loc"]
        name = ann_name if options.get("loc_source") == "annotations" else seg_name
        try:
            find_chexlocalize_file(Path(root or "."), name, options.get("chexlocalize_dir"))
        except DataError:
            return tuple(s for s in cls.splits if not s.endswith("-loc"))
        return cls.splits

    option_spec = CHEXPERT_OPTIONS
    loc_has_masks = True

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        image_size: int = 256,
        classes: Sequence[str] | None = None,
        skip_bad_images: bool = False,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        root, opts = self._setup(root, split, image_size, classes, skip_bad_images, options)
        names = self.info.classes
        self.policies = class_policies(names, opts["uncertainty"])
        # labels over all classes, so _finish can select (keeps the base-class contract)
        self._full_pol = {c: self.policies.get(c, "U-Zeros") for c in CHEXPERT_CLASSES}
        self._loc: LocFile | None = None
        if split in LOC_SPLITS:
            self._init_loc(root, split, opts)
            return
        subdirs = ["", *sorted(d.name for d in root.glob("CheXpert-v1.0*") if d.is_dir())]
        csv_name = "valid.csv" if split == "test" else "train.csv"
        csv = find_file(root, (csv_name,), f"CheXpert {csv_name}", subdirs=subdirs)
        labels = read_chexpert_labels(csv, names, self._full_pol)
        rows = np.arange(len(labels.paths))
        if split != "test":
            is_val = hash_unit(labels.patients, opts["seed"]) < opts["val_fraction"]
            rows = rows[is_val] if split == "val" else rows[~is_val]
        if opts["frontal_only"]:
            rows = rows[labels.frontal[rows]]
        rel = [labels.paths[r] for r in rows.tolist()]
        paths = _find_paths(rel, _resolve_bases(root, rel[:50]))
        where = [f"{csv.name} line {r + 2}" for r in rows.tolist()]
        keep = self._store(labels, rows, rel, paths, where)
        self.patients = [labels.patients[r] for r in rows[keep].tolist()]

    def _store(
        self,
        labels: ChexpertLabels,
        rows: np.ndarray,
        ids: Sequence[str],
        paths: Sequence[Path | None],
        where: Sequence[str],
    ) -> np.ndarray:
        k_all = len(CHEXPERT_CLASSES)
        t_full = np.zeros((len(rows), k_all), np.float32)
        m_full = np.ones((len(rows), k_all), np.float32)
        t_full[:, self.class_index] = labels.target[rows]
        m_full[:, self.class_index] = labels.target_mask[rows]
        return self._finish(ids, paths, t_full, m_full, where)

    def _init_loc(self, root: Path, split: str, opts: Mapping[str, Any]) -> None:
        seg_name, ann_name, _ = CHEXLOCALIZE_FILES[split]
        folder = opts["chexlocalize_dir"]
        if opts["loc_source"] == "annotations":
            loc = read_annotations(find_chexlocalize_file(root, ann_name, folder))
        else:
            loc = read_segmentations(find_chexlocalize_file(root, seg_name, folder))
        subdirs = [
            "",
            *sorted(d.name for d in root.glob("CheXpert*") if d.is_dir()),
        ]
        if split == "val-loc":
            csv = find_file(root, ("valid.csv",), "CheXpert valid.csv", subdirs=subdirs)
        else:
            csv = find_file(
                root, ("test_labels.csv", "test.csv"), "CheXpert test labels", subdirs=subdirs
            )
        labels = read_chexpert_labels(csv, self.info.classes, self._full_pol)
        row_of: dict[str, int] = {}
        for r, p in enumerate(labels.paths):
            cid = cxr_id_from_path(p)
            if cid is not None:
                row_of.setdefault(cid, r)
        ids = [c for c in loc.ids if not opts["frontal_only"] or c.endswith("_frontal")]
        missing = [c for c in ids if c not in row_of]
        if missing:
            raise DataError(
                f"{loc.path}: CXR {missing[0]!r} has no row in {csv} (no label or image path "
                f"for it; {len(missing)} of {len(ids)} ids lack one)"
            )
        rows = np.array([row_of[c] for c in ids], dtype=np.int64)
        rel = [labels.paths[r] for r in rows.tolist()]
        paths = _find_paths(rel, _loc_bases(root, rel[:50]))
        where = [
            f"{loc.path.name} key {c!r}, {csv.name} line {r + 2}"
            for c, r in zip(ids, rows.tolist(), strict=True)
        ]
        keep = self._store(labels, rows, ids, paths, where)
        self.patients = [labels.patients[r] for r in rows[keep].tolist()]
        self._loc = loc
        # annotations arrive already in the S x S grid (see _annotations)
        self.native_size = float(self.image_size)
        localized = tuple(c for c in self.info.classes if c in CHEXLOCALIZE_CLASSES)
        self.info = replace(self.info, loc_classes=localized)

    def _annotations(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Boxes (full-class index, S x S grid) and ``bool`` ``[K_all, S, S]`` masks of item
        ``i``: CheXlocalize masks decoded at the original size and resized to ``S x S``."""
        assert self._loc is not None
        s = self.image_size
        masks = np.zeros((len(CHEXPERT_CLASSES), s, s), dtype=bool)
        boxes = [np.zeros((0, 5), np.float32)]
        for cls, region in self._loc.regions[self.ids[i]].items():
            k = CHEXPERT_CLASSES.index(cls)
            if self._class_remap[k] < 0 or region.empty:
                continue
            masks[k] = resize_mask(region.mask(), s)
            boxes.append(mask_component_boxes(masks[k], k))
        return np.concatenate(boxes), masks
