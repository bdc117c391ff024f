"""Run-length encoded masks as used by the SIIM-ACR pneumothorax challenge.

The competition's ``train-rle.csv`` uses a *relative* run-length encoding over the
**column-major** flattened ``1024 x 1024`` mask: the string is pairs ``(offset, length)`` where
``offset`` counts pixels from the end of the previous run (from pixel 0 for the first run), and
``length`` is the run's length. Flattened index ``p`` is pixel ``(row = p % H, col = p // H)``.
``-1`` (or an empty field) means an empty mask. This matches the challenge's ``mask_functions.py``
(``rle2mask(rle, 1024, 1024).T``).

The ``absolute`` variant (standard Kaggle RLE) has 1-based absolute starts instead of offsets.

Everything here is vectorised: all rows of a CSV are parsed and range-checked at once
(:func:`parse_rle_column`), and masks are painted with a difference array and one cumulative sum
(:func:`runs_to_mask`), never pixel by pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import DataError

RLE_MODES = ("relative", "absolute")


@dataclass(frozen=True)
class RleTable:
    """All runs of a column of RLE strings, as absolute 0-based flat indices.

    Attributes:
        starts: ``int64`` ``[R]`` absolute 0-based start of every run (column-major index).
        lengths: ``int64`` ``[R]`` run lengths (>= 1).
        offsets: ``int64`` ``[n_rows + 1]``; the runs of row ``i`` are
            ``starts[offsets[i]:offsets[i + 1]]``.
    """

    starts: np.ndarray
    lengths: np.ndarray
    offsets: np.ndarray

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.starts[a:b], self.lengths[a:b]

    @property
    def num_rows(self) -> int:
        return int(self.offsets.shape[0] - 1)


def parse_rle_column(
    strings: Sequence[object],
    height: int = 1024,
    width: int = 1024,
    mode: str = "relative",
    source: str = "<rle>",
    row_label: str = "row",
    first_row_number: int = 0,
) -> RleTable:
    """Parse and range-check a column of RLE strings at once.

    Args:
        strings: one entry per CSV row: ``"-1"``, empty / NaN, or ``"o1 l1 o2 l2 ..."``.
        height, width: mask size the encoding refers to.
        mode: ``relative`` (SIIM ``train-rle.csv``) or ``absolute`` (1-based absolute starts).
        source: file name used in error messages.
        row_label, first_row_number: how error messages number rows (e.g. ``"line"`` and 2 for
            a CSV whose first data row is on line 2).

    Returns:
        An :class:`RleTable` with absolute 0-based starts.

    Raises:
        DataError: malformed tokens, an odd number of values, negative offsets, non-positive
            lengths, or a run that ends beyond the ``height * width`` mask (overrun). The message
            names ``source`` and the row number.
    """
    if mode not in RLE_MODES:
        raise DataError(f"unknown RLE mode {mode!r}; allowed: {', '.join(RLE_MODES)}")
    n_rows = len(strings)
    token_lists: list[list[str]] = []
    counts = np.zeros(n_rows, dtype=np.int64)
    for i, s in enumerate(strings):
        if s is None or (isinstance(s, float) and np.isnan(s)):
            toks: list[str] = []
        else:
            toks = str(s).split()
            if toks == ["-1"]:
                toks = []
        token_lists.append(toks)
        counts[i] = len(toks)

    def where(i: int) -> str:
        return f"{source} {row_label} {first_row_number + i}"

    odd = np.flatnonzero(counts % 2)
    if odd.size:
        i = int(odd[0])
        raise DataError(f"{where(i)}: RLE has an odd number of values ({counts[i]}); need pairs")
    flat_tokens = [t for toks in token_lists for t in toks]
    try:
        values = np.array(flat_tokens, dtype=np.int64) if flat_tokens else np.zeros(0, np.int64)
    except (ValueError, OverflowError):
        for i, toks in enumerate(token_lists):
            for t in toks:
                try:
                    int(t)
                except ValueError:
                    raise DataError(
                        f"{where(i)}: RLE value {t!r} is not an integer (expected 'offset length' "
                        "pairs or -1)"
                    ) from None
        raise
    first = values[0::2]
    lengths = values[1::2]
    pairs_per_row = counts // 2
    row_of_pair = np.repeat(np.arange(n_rows), pairs_per_row)
    offsets = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(pairs_per_row, out=offsets[1:])

    bad = np.flatnonzero(lengths < 1)
    if bad.size:
        i = int(row_of_pair[bad[0]])
        raise DataError(f"{where(i)}: RLE run length {int(lengths[bad[0]])} must be >= 1")
    if mode == "relative":
        bad = np.flatnonzero(first < 0)
        if bad.size:
            i = int(row_of_pair[bad[0]])
            raise DataError(f"{where(i)}: relative RLE offset {int(first[bad[0]])} is negative")
        total = np.cumsum(first + lengths)
        base = np.zeros(n_rows, dtype=np.int64)
        nonempty = pairs_per_row > 0
        row_first = offsets[:-1][nonempty]
        base[nonempty] = np.where(row_first > 0, total[np.maximum(row_first - 1, 0)], 0)
        starts = total - lengths - base[row_of_pair]
    else:
        bad = np.flatnonzero(first < 1)
        if bad.size:
            i = int(row_of_pair[bad[0]])
            raise DataError(f"{where(i)}: absolute RLE start {int(first[bad[0]])} must be >= 1")
        starts = first - 1
    ends = starts + lengths
    limit = height * width
    over = np.flatnonzero(ends > limit)
    if over.size:
        i = int(row_of_pair[over[0]])
        raise DataError(
            f"{where(i)}: RLE overruns the {height}x{width} mask: a run ends at flat pixel "
            f"{int(ends[over[0]])} > {limit}"
        )
    return RleTable(starts=starts, lengths=lengths, offsets=offsets)


def runs_to_mask(
    starts: np.ndarray, lengths: np.ndarray, height: int = 1024, width: int = 1024
) -> np.ndarray:
    """Paint absolute 0-based column-major runs into a ``bool`` mask ``[height, width]``.

    Overlapping runs (several CSV rows of one image) are united.
    """
    n = height * width
    if len(starts) == 0:
        return np.zeros((height, width), dtype=bool)
    starts = np.asarray(starts, dtype=np.int64)
    ends = starts + np.asarray(lengths, dtype=np.int64)
    if starts.min() < 0 or ends.max() > n:
        raise DataError(f"RLE runs fall outside the {height}x{width} mask")
    diff = np.bincount(starts, minlength=n + 1) - np.bincount(ends, minlength=n + 1)
    flat = np.cumsum(diff[:n]) > 0
    return np.ascontiguousarray(flat.reshape(width, height).T)


def encode_rle(mask: np.ndarray, mode: str = "relative") -> str:
    """Encode a ``bool`` mask ``[H, W]`` the way :func:`parse_rle_column` reads it.

    Returns ``"-1"`` for an empty mask. Column-major, like the SIIM challenge files.
    """
    if mode not in RLE_MODES:
        raise DataError(f"unknown RLE mode {mode!r}; allowed: {', '.join(RLE_MODES)}")
    flat = np.asarray(mask, dtype=bool).T.ravel()
    if not flat.any():
        return "-1"
    padded = np.concatenate([[False], flat, [False]]).astype(np.int8)
    d = np.diff(padded)
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    lengths = ends - starts
    if mode == "relative":
        prev_end = np.concatenate([[0], ends[:-1]])
        first = starts - prev_end
    else:
        first = starts + 1
    return " ".join(f"{a} {b}" for a, b in zip(first.tolist(), lengths.tolist(), strict=True))
