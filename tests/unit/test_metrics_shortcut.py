"""Shortcut metrics on hand-made 4x5 maps, and on the phantom's confounder through the suite."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from lesionsweep.data.phantom import PhantomDataset
from lesionsweep.data.types import collate
from lesionsweep.metrics import LocalizationSuite
from lesionsweep.metrics.shortcut import ShortcutEvaluator, default_radius


def test_pointing_energy_area_by_hand() -> None:
    tubes = np.zeros((4, 4, 5), dtype=bool)
    lesions = np.zeros((4, 4, 5), dtype=bool)
    maps = np.zeros((4, 4, 5))
    # 0: tube in column 4; the map peaks on it -> pointing; mass: 2 (tube) of 2 + 2 -> 0.5
    tubes[0, :, 4] = True
    maps[0, 1, 4] = maps[0, 2, 4] = 1.0
    maps[0, 3, 0] = maps[0, 3, 1] = 1.0
    # 1: tube in row 0 crossing the lesion at (0, 2); the peak sits on that crossing: it is the
    #    lesion, not the shortcut. Tube region outside the lesion: 4 px; mass there 0.5 of 1.5
    tubes[1, 0, :] = True
    lesions[1, 0:2, 2] = True
    maps[1, 0, 2] = 1.0
    maps[1, 0, 0] = 0.5
    # 2: tube, constant map -> counted as uniform: energy = area share 3/20; peak (0, 0) on tube
    tubes[2, 0, 0:3] = True
    maps[2] = 7.0
    # 3: no tube -> ignored
    maps[3, 0, 0] = 9.0
    ev = ShortcutEvaluator(radius=0)
    ev.accumulate(maps[:2], tubes[:2], lesions[:2])
    ev.accumulate(maps[2:], tubes[2:], lesions[2:])
    r = ev.compute()
    assert r["shortcut_pointing"] == pytest.approx(2 / 3)
    assert r["shortcut_energy"] == pytest.approx((0.5 + 0.5 / 1.5 + 3 / 20) / 3)
    assert r["shortcut_area"] == pytest.approx((4 / 20 + 4 / 20 + 3 / 20) / 3)
    # a dilated tube region reaches a peak one pixel off the tube
    near = np.zeros((1, 4, 5))
    near[0, 1, 3] = 1.0
    for radius, want in ((0, 0.0), (1, 1.0)):
        ev = ShortcutEvaluator(radius)
        ev.accumulate(near, tubes[:1], lesions[:1])
        assert ev.compute()["shortcut_pointing"] == want
    ev.reset()
    assert all(math.isnan(v) for v in ev.compute().values())
    assert default_radius(64) == 1 and default_radius(256) == 4


def test_phantom_confounder_reaches_the_suite() -> None:
    ds = PhantomDataset("val", image_size=64, num_val=24, confounder_class="effusion")
    assert ds.info.confounder_class == "effusion"
    batch = collate([ds[i] for i in range(24)])
    assert batch.confounder is not None and batch.confounder.shape == (24, 64, 64)
    has = batch.confounder.any(dim=(1, 2))
    assert 0 < int(has.sum()) < 24
    k = ds.info.classes.index("effusion")
    # a map that is exactly the tube: pointing 1 (unless the peak falls on a lesion), energy high
    maps = torch.zeros((24, 5, 64, 64))
    maps[:, k] = batch.confounder.float() * 10.0
    suite = LocalizationSuite(ds.info, image_size=64)
    suite.accumulate(torch.zeros((24, 5)), maps, batch, "logits")
    tube_map = suite.compute()
    assert tube_map["shortcut_pointing"] > 0.8 and tube_map["shortcut_energy"] > 0.8
    # a map that is exactly the lesion: the tube gets neither the peak nor the mass
    assert batch.masks is not None
    maps[:, k] = batch.masks[:, k].float() * 10.0
    suite.reset()
    suite.accumulate(torch.zeros((24, 5)), maps, batch, "logits")
    lesion_map = suite.compute()
    assert lesion_map["shortcut_energy"] < 0.1
    assert lesion_map["shortcut_pointing"] < tube_map["shortcut_pointing"]
    # no confounder configured: no shortcut keys, items carry no confounder mask
    plain = PhantomDataset("val", image_size=64, num_val=2)
    assert plain[0].confounder is None and plain.info.confounder_class is None
    assert "shortcut_pointing" not in LocalizationSuite(plain.info, image_size=64).compute()
