"""SIIM run-length decoding: golden values, round trips, errors and the real challenge file."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from lesionsweep.data.rle import encode_rle, parse_rle_column, runs_to_mask
from lesionsweep.data.siim import read_siim_rle
from lesionsweep.errors import DataError


def test_relative_column_major_golden() -> None:
    # 4 rows x 3 cols, flat column-major: p = col * 4 + row
    # "1 2 3 1": run [1, 3) then offset 3 from the end (3) -> run [6, 7)
    t = parse_rle_column(["1 2 3 1"], height=4, width=3)
    np.testing.assert_array_equal(t.starts, [1, 6])
    np.testing.assert_array_equal(t.lengths, [2, 1])
    m = runs_to_mask(t.starts, t.lengths, 4, 3)
    expected = np.zeros((4, 3), bool)
    expected[1, 0] = expected[2, 0] = True  # p=1,2 -> col 0, rows 1-2
    expected[2, 1] = True  # p=6 -> col 1, row 2
    np.testing.assert_array_equal(m, expected)


def test_absolute_mode_golden() -> None:
    t = parse_rle_column(["2 2 7 1"], height=4, width=3, mode="absolute")
    np.testing.assert_array_equal(t.starts, [1, 6])


def test_empty_rows_and_offsets_across_rows() -> None:
    t = parse_rle_column(["-1", " 0 1 1 1", None, float("nan"), "", "5 2"], 4, 4)
    np.testing.assert_array_equal(t.offsets, [0, 0, 2, 2, 2, 2, 3])
    np.testing.assert_array_equal(t.starts, [0, 2, 5])  # second row restarts from pixel 0
    assert t.row(0)[0].size == 0


@pytest.mark.parametrize("mode", ["relative", "absolute"])
def test_roundtrip_random_masks(mode: str) -> None:
    rng = np.random.default_rng(0)
    masks = [rng.random((16, 12)) < p for p in (0.0, 0.05, 0.5, 0.95, 1.0)]
    t = parse_rle_column([encode_rle(m, mode) for m in masks], 16, 12, mode=mode)
    for i, m in enumerate(masks):
        np.testing.assert_array_equal(runs_to_mask(*t.row(i), 16, 12), m)


def test_union_of_overlapping_rows() -> None:
    a = np.zeros((8, 8), bool)
    a[1:4, 1:4] = True
    b = np.zeros((8, 8), bool)
    b[2:6, 2:6] = True
    t = parse_rle_column([encode_rle(a), encode_rle(b)], 8, 8)
    m = runs_to_mask(t.starts, t.lengths, 8, 8)
    np.testing.assert_array_equal(m, a | b)


@pytest.mark.parametrize(
    ("rows", "pattern"),
    [
        (["-1", "10 5", "0 17"], r"line 4: RLE overruns the 4x4 mask"),
        (["1 2 3"], r"line 2: RLE has an odd number"),
        (["1 x"], r"line 2: RLE value 'x' is not an integer"),
        (["1 0"], r"line 2: RLE run length 0"),
        (["-3 2"], r"line 2: relative RLE offset -3 is negative"),
    ],
)
def test_bad_rle_names_file_and_line(rows: list[str], pattern: str) -> None:
    with pytest.raises(DataError, match=pattern) as e:
        parse_rle_column(rows, 4, 4, source="train-rle.csv", row_label="line", first_row_number=2)
    assert "train-rle.csv" in str(e.value)


def test_overrun_by_accumulated_offsets() -> None:
    # each pair fits alone; their relative accumulation ends past 16 pixels
    with pytest.raises(DataError, match="overruns"):
        parse_rle_column(["5 5 5 5"], 4, 4)
    parse_rle_column(["5 5 1 5"], 4, 4)  # ends exactly at 16: fine


def test_real_siim_file_decodes_within_bounds(txv_data_dir: Path) -> None:
    path = txv_data_dir / "siim-pneumothorax-train-rle.csv.gz"
    t0 = time.perf_counter()
    ids, runs, first_line = read_siim_rle(path)  # parses + range-checks every row
    elapsed = time.perf_counter() - t0
    assert elapsed < 20, elapsed  # vectorised: a few seconds at most even on a slow box
    assert len(ids) == 12047  # 12,954 rows, several per image for multi-region masks
    per_image = np.diff(runs.offsets)
    assert int((per_image > 0).sum()) == 2669
    assert runs.starts.shape == (683072,)
    assert runs.starts.min() >= 0
    assert int((runs.starts + runs.lengths).max()) <= 1024 * 1024
    assert first_line[0] == 2
    # line 3 of the file: "557374 2 1015 8 ..." -> relative offsets accumulate
    assert ids[1] == "1.2.276.0.7230010.3.1.4.8323329.13666.1517875247.117800"
    s, ln = runs.row(1)
    np.testing.assert_array_equal(s[:3], [557374, 557374 + 2 + 1015, 558391 + 8 + 1009])
    np.testing.assert_array_equal(ln[:3], [2, 8, 14])
    m = runs_to_mask(s, ln, 1024, 1024)
    assert m[557374 % 1024, 557374 // 1024] and not m[557373 % 1024, 557373 // 1024]
    # decode a sample of positive images and check areas (pixels never counted twice)
    pos = np.flatnonzero(per_image > 0)[::150]
    for i in pos:
        s, ln = runs.row(int(i))
        m = runs_to_mask(s, ln, 1024, 1024)
        assert 0 < m.sum() <= ln.sum()
