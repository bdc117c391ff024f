"""Multiscale CAM (Sedai et al.): relevance weights, logit mixing, map mixing, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from lesionsweep.errors import ConfigError
from lesionsweep.methods import create_method
from lesionsweep.methods.multiscale import MultiscaleCAM, parse_stages


def _ms(**kw) -> MultiscaleCAM:
    torch.manual_seed(0)
    m = create_method("multiscale_cam", num_classes=3, backbone="test_resnet", **kw)
    assert isinstance(m, MultiscaleCAM)
    return m


def _x(c: int = 1, s: int = 64) -> torch.Tensor:
    return torch.randn(2, c, s, s, generator=torch.Generator().manual_seed(5))


def test_alpha_is_convex_per_class() -> None:
    m = _ms()
    assert m.beta.shape == (3, 3)
    torch.testing.assert_close(m.relevance(), torch.full((3, 3), 1 / 3))  # uniform at init
    with torch.no_grad():
        m.beta.copy_(torch.randn(3, 3) * 3)
    a = m.relevance()
    assert (a >= 0).all()
    torch.testing.assert_close(a.sum(1), torch.ones(3))
    hot = _ms(temperature=1e3)
    with torch.no_grad():
        hot.beta.copy_(m.beta)
    torch.testing.assert_close(hot.relevance(), torch.full((3, 3), 1 / 3), atol=1e-2, rtol=0)


def test_relevance_init_deep() -> None:
    a = _ms(relevance_init_deep=2.0).relevance()
    deep = math.exp(2.0) / (math.exp(2.0) + 2.0)
    torch.testing.assert_close(a[:, -1], torch.full((3,), deep))
    torch.testing.assert_close(a[:, 0], torch.full((3,), 1.0 / (math.exp(2.0) + 2.0)))


def test_logits_and_map_are_alpha_mixtures_of_stage_cams() -> None:
    m = _ms().eval()
    with torch.no_grad():
        m.beta.copy_(torch.tensor([[0.0, 1.0, -1.0], [2.0, 0.0, 0.0], [0.5, 0.5, 3.0]]))
    x = _x()
    with torch.no_grad():
        out = m(x)
        feats = m.backbone(x)
        cams = [conv(f) for conv, f in zip(m.classifiers, feats, strict=True)]
    alpha = m.relevance().detach()
    assert [c.shape[-1] for c in cams] == [8, 4, 2]  # strides 8, 16, 32 at 64 px
    pooled = torch.stack([c.mean((2, 3)) for c in cams], dim=2)
    torch.testing.assert_close(out.extras["stage_logits"], pooled)
    torch.testing.assert_close(out.extras["alpha"], alpha)
    torch.testing.assert_close(out.logits, (pooled * alpha).sum(2))
    expected = sum(
        alpha[None, :, s, None, None]
        * F.interpolate(c, size=(8, 8), mode="bilinear", align_corners=False)
        for s, c in enumerate(cams)
    )
    assert out.maps.shape == (2, 3, 8, 8)
    torch.testing.assert_close(out.maps, expected)


def test_stage_choice_sets_map_size() -> None:
    assert _ms(stages="3,4")(_x()).maps.shape == (2, 3, 4, 4)
    assert _ms(stages=(1, 2, 3, 4))(_x()).maps.shape == (2, 3, 16, 16)
    assert _ms(stages=[-1])(_x()).maps.shape == (2, 3, 2, 2)
    assert _ms(stages="2, 4", output_stride=16)(_x()).maps.shape == (2, 3, 8, 8)


def test_single_stage_is_plain_cam() -> None:
    m = _ms(stages=(4,)).eval()
    with torch.no_grad():
        out = m(_x())
    torch.testing.assert_close(out.extras["alpha"], torch.ones(3, 1))
    torch.testing.assert_close(out.logits, out.maps.mean((2, 3)))


def test_beta_and_all_stage_heads_learn() -> None:
    m = _ms().train()
    with torch.no_grad():
        m.beta.copy_(torch.randn(3, 3))
    out = m(_x())
    m.loss(out, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])).backward()
    assert m.beta.grad is not None and m.beta.grad.abs().sum() > 0
    assert all(c.weight.grad.abs().sum() > 0 for c in m.classifiers)


@pytest.mark.parametrize("pooling", ["gmp", "lse", "pcam", "wildcat"])
def test_pooling_family_per_stage(pooling: str) -> None:
    m = _ms(pooling=pooling, in_chans=3)
    assert len(m.pools) == 3 and len({id(p) for p in m.pools}) == 3
    out = m(_x(c=3))
    assert out.logits.shape == (2, 3) and torch.isfinite(out.logits).all()


def test_parse_stages() -> None:
    assert parse_stages("2,3,4") == (2, 3, 4)
    assert parse_stages([3, 4]) == (3, 4)
    for bad in ("", "a,b", (2, 2), ()):
        with pytest.raises(ConfigError, match="stages"):
            parse_stages(bad)


def test_errors() -> None:
    with pytest.raises(ConfigError, match="out of range"):
        _ms(stages=(2, 9))
    with pytest.raises(ConfigError, match="temperature"):
        _ms(temperature=0.0)
    with pytest.raises(ConfigError, match="pooling='pcam'"):
        _ms(fc_bn=True)
