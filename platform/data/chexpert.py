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
validation set, since the official test labels are not distributed with the data). No
localization labels, so no ``*-loc`` splits. Option ``frontal_only`` keeps frontal views.
Images (320 x ~390 in the small version) are resized plainly (stretched) to ``S x S``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .base import (
    Option,
    RecordDataset,
    boolean,
    find_file,
    fraction,
    hash_unit,
    int_at_least,
    read_csv,
)

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
CHEXPERT_SPLITS = ("train", "val", "test")
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


CHEXPERT_OPTIONS: dict[str, Option] = {
    "seed": Option(0, int_at_least(0), "seed of the train/val patient split"),
    "val_fraction": Option(0.05, fraction(), "share of train.csv patients held out as val"),
    "uncertainty": Option(None, _uncertainty, "policy name or {class: policy} (default PCAM)"),
    "frontal_only": Option(False, boolean, "keep frontal views only"),
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


class CheXpertDataset(RecordDataset):
    """CheXpert image labels (no localization labels).

    Items: ``image`` ``uint8`` ``[1, S, S]``; ``target`` ``float32`` ``[K]``; ``target_mask``
    ``float32`` ``[K]`` (0 where U-Ignore hides an uncertain label); empty boxes; ``masks`` None.

    Args:
        root, split, image_size, skip_bad_images: as for
            :class:`~lesionsweep.data.nih.NIHDataset`; splits ``train``, ``val``, ``test``.
        classes: subset of :data:`CHEXPERT_CLASSES` (default :data:`PCAM_CLASSES`).
        options: ``seed`` (0), ``val_fraction`` (0.05), ``uncertainty`` (PCAM's per-class
            choice), ``frontal_only`` (False).
    """

    name = "chexpert"
    title = "CheXpert"
    default_classes = PCAM_CLASSES
    all_classes = CHEXPERT_CLASSES
    splits = CHEXPERT_SPLITS
    option_spec = CHEXPERT_OPTIONS

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
        names, index = self.info.classes, self.class_index
        self.policies = class_policies(names, opts["uncertainty"])
        subdirs = ["", *sorted(d.name for d in root.glob("CheXpert-v1.0*") if d.is_dir())]
        csv_name = "valid.csv" if split == "test" else "train.csv"
        csv = find_file(root, (csv_name,), f"CheXpert {csv_name}", subdirs=subdirs)
        # labels over all classes, so _finish can select (keeps the base-class contract)
        full_pol = {c: self.policies.get(c, "U-Zeros") for c in CHEXPERT_CLASSES}
        labels = read_chexpert_labels(csv, names, full_pol)
        rows = np.arange(len(labels.paths))
        if split != "test":
            is_val = hash_unit(labels.patients, opts["seed"]) < opts["val_fraction"]
            rows = rows[is_val] if split == "val" else rows[~is_val]
        if opts["frontal_only"]:
            rows = rows[labels.frontal[rows]]
        rel = [labels.paths[r] for r in rows.tolist()]
        bases = _resolve_bases(root, rel[:50])
        paths: list[Path | None] = []
        for p in rel:
            found = None
            for base, drop in bases:
                parts = Path(p).parts[drop:]
                cand = base.joinpath(*parts) if parts else None
                if cand is not None and cand.is_file():
                    found = cand
                    break
            paths.append(found)
        k_all = len(CHEXPERT_CLASSES)
        t_full = np.zeros((len(rows), k_all), np.float32)
        m_full = np.ones((len(rows), k_all), np.float32)
        t_full[:, index] = labels.target[rows]
        m_full[:, index] = labels.target_mask[rows]
        where = [f"{csv.name} line {r + 2}" for r in rows.tolist()]
        keep = self._finish(rel, paths, t_full, m_full, where)
        self.patients = [labels.patients[r] for r in rows[keep].tolist()]
