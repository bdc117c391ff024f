"""Pooling numerics on hand-made maps."""

from __future__ import annotations

import math

import pytest
import torch
from lesionsweep.errors import ConfigError
from lesionsweep.methods.pooling import (
    POOLINGS,
    GlobalAvgPool,
    GlobalMaxPool,
    LSEPool,
    PCAMPool,
    WildcatPool,
    create_pooling,
    pool_logits,
    pooling_names,
)
from torch import nn


def _ramp() -> torch.Tensor:
    """[2, 2, 4, 5]: class 0 = 0..19, class 1 = its negation; image 1 = image 0 + 100."""
    a = torch.arange(20, dtype=torch.float64).reshape(4, 5)
    img = torch.stack([a, -a])
    return torch.stack([img, img + 100])


def test_registry_names() -> None:
    assert pooling_names() == ["gap", "gmp", "lse", "pcam", "wildcat"]
    assert POOLINGS["wildcat"] is WildcatPool


def test_gap_and_gmp() -> None:
    x = _ramp()
    torch.testing.assert_close(
        GlobalAvgPool()(x), torch.tensor([[9.5, -9.5], [109.5, 90.5]], dtype=torch.float64)
    )
    torch.testing.assert_close(
        GlobalMaxPool()(x), torch.tensor([[19.0, 0.0], [119.0, 100.0]], dtype=torch.float64)
    )


def test_lse_hand_value() -> None:
    # values {0, ln 3}, r = 1: log(mean(exp(x))) = log((1 + 3) / 2) = ln 2
    x = torch.tensor([0.0, math.log(3.0)], dtype=torch.float64).reshape(1, 1, 1, 2)
    assert LSEPool(r=1.0)(x).item() == pytest.approx(math.log(2.0), abs=1e-12)
    # r = 2: x* + 0.5 * log(mean(exp(2 (x - x*)))) = 0.5 * log((1 + 9) / 2)
    assert LSEPool(r=2.0)(x).item() == pytest.approx(0.5 * math.log(5.0), abs=1e-12)


def test_lse_limits_and_bounds() -> None:
    x = _ramp()
    torch.testing.assert_close(LSEPool(r=1e4)(x), GlobalMaxPool()(x), atol=1e-3, rtol=0)
    torch.testing.assert_close(LSEPool(r=1e-6)(x), GlobalAvgPool()(x), atol=1e-4, rtol=0)
    # float32 stays accurate near r -> 0 (log1p/expm1 form)
    x32 = x.float()
    torch.testing.assert_close(LSEPool(r=1e-5)(x32), x32.mean((2, 3)), atol=1e-3, rtol=0)
    prev = GlobalAvgPool()(x)
    for r in (0.01, 0.1, 1.0, 10.0):
        cur = LSEPool(r=r)(x)
        assert (cur >= prev - 1e-9).all() and (cur <= GlobalMaxPool()(x) + 1e-9).all()
        prev = cur


@pytest.mark.parametrize("r", [0.0, -1.0, float("inf"), float("nan")])
def test_lse_rejects_bad_r(r: float) -> None:
    with pytest.raises(ConfigError, match="r must be"):
        LSEPool(r=r)


def test_wildcat_numerics() -> None:
    x = _ramp()[:1, :1]  # 0..19, n = 20
    assert WildcatPool(kmax=0.1)(x).item() == pytest.approx(18.5)  # top-2 mean
    assert WildcatPool(kmax=3)(x).item() == pytest.approx(18.0)  # top-3 count
    assert WildcatPool(kmax=1)(x).item() == pytest.approx(19.0)  # count 1 = GMP
    assert WildcatPool(kmax=50)(x).item() == pytest.approx(9.5)  # clipped to n = GAP
    assert WildcatPool(kmax=0.001)(x).item() == pytest.approx(19.0)  # at least one region
    # top-2 mean + 0.5 * bottom-4 mean (0,1,2,3) = 18.5 + 0.75
    assert WildcatPool(kmax=0.1, kmin=0.2, alpha=0.5)(x).item() == pytest.approx(19.25)
    assert WildcatPool(kmax=0.1, kmin=0.2, alpha=0.0)(x).item() == pytest.approx(18.5)
    assert WildcatPool(kmax=0.1, kmin=0.0, alpha=1.0)(x).item() == pytest.approx(18.5)
    # per map, per image
    out = WildcatPool(kmax=2)(_ramp())
    torch.testing.assert_close(
        out, torch.tensor([[18.5, -0.5], [118.5, 99.5]], dtype=torch.float64)
    )


def test_wildcat_halve_is_durands_code_scaling() -> None:
    """Durand's code: (top mean + alpha * bottom mean) / 2 when the bottom term is on, else the
    top mean unchanged; the paper (default): the plain sum."""
    x = _ramp()[:1, :1]  # 0..19
    code = WildcatPool(kmax=0.1, kmin=0.2, alpha=0.5, halve=True)
    assert code(x).item() == pytest.approx((18.5 + 0.5 * 1.5) / 2)
    assert WildcatPool(kmax=0.1, kmin=0.2, alpha=0.5)(x).item() == pytest.approx(18.5 + 0.75)
    # bottom term off (kmin = 0 or alpha = 0): no halving, as the code's `if` around it
    assert WildcatPool(kmax=0.1, kmin=0.0, alpha=0.5, halve=True)(x).item() == pytest.approx(18.5)
    assert WildcatPool(kmax=0.1, kmin=0.2, alpha=0.0, halve=True)(x).item() == pytest.approx(18.5)
    assert "halve=True" in repr(code)


def _lse_ref(v: list[float], r: float) -> float:
    m = max(v)
    return m + math.log(sum(math.exp(r * (t - m)) for t in v) / len(v)) / r


def test_pool_logits_features_first_by_hand() -> None:
    """pool_on="features": pool each feature channel, then y = W z + b (Wang et al., PCAM repo)."""
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 2, 3, generator=g, dtype=torch.float64)
    conv = nn.Conv2d(3, 2, 1).double()
    logit_map = conv(feats)
    w, b = conv.weight.detach().reshape(2, 3).tolist(), conv.bias.detach().tolist()
    for pool, reduce in (
        (LSEPool(r=2.0), lambda v: _lse_ref(v, 2.0)),
        (GlobalMaxPool(), max),
        (GlobalAvgPool(), lambda v: sum(v) / len(v)),
    ):
        got = pool_logits(pool, "features", feats, logit_map, conv)
        for i in range(2):
            z = [reduce(feats[i, c].flatten().tolist()) for c in range(3)]
            ref = [sum(w[k][c] * z[c] for c in range(3)) + b[k] for k in range(2)]
            assert got[i].tolist() == pytest.approx(ref, rel=1e-12, abs=1e-12)
    # "map" is the pooling of S; the orders agree for GAP only
    torch.testing.assert_close(
        pool_logits(GlobalAvgPool(), "map", feats, logit_map, conv),
        pool_logits(GlobalAvgPool(), "features", feats, logit_map, conv),
    )
    assert not torch.allclose(
        pool_logits(GlobalMaxPool(), "map", feats, logit_map, conv),
        pool_logits(GlobalMaxPool(), "features", feats, logit_map, conv),
    )
    with pytest.raises(ValueError, match="pool_on"):
        pool_logits(PCAMPool(), "features", feats, logit_map, conv)


@pytest.mark.parametrize(
    "kwargs", [{"kmax": 0}, {"kmax": -0.1}, {"kmax": 2.5}, {"kmin": -1}, {"kmin": 1.5}]
)
def test_wildcat_rejects_bad_k(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match="WILDCAT"):
        WildcatPool(**kwargs)


def _pcam_case(c: int = 6, k: int = 3) -> tuple[torch.Tensor, nn.Conv2d]:
    torch.manual_seed(0)
    feats = torch.randn(2, c, 4, 5, dtype=torch.float64, requires_grad=True)
    conv = nn.Conv2d(c, k, 1).double()
    return feats, conv


def test_pcam_equals_probability_weighted_logit_map() -> None:
    feats, conv = _pcam_case()
    s = conv(feats)
    out = PCAMPool()(s, features=feats, classifier=conv)
    p = torch.sigmoid(s)
    expected = (p / p.sum((2, 3), keepdim=True) * s).sum((2, 3))
    torch.testing.assert_close(out, expected)
    # constant map -> uniform weights -> GAP
    with torch.no_grad():
        conv.weight.zero_()
    s0 = conv(feats)
    torch.testing.assert_close(PCAMPool()(s0, features=feats, classifier=conv), s0.mean((2, 3)))


def test_pcam_gradient_flows_through_the_weights() -> None:
    feats, conv = _pcam_case()
    s = conv(feats)
    PCAMPool()(s, features=feats, classifier=conv).sum().backward()
    g_full = feats.grad.clone()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    # the same average with the weights detached: gradients must differ (the weights carry grad)
    feats.grad = None
    s = conv(feats)
    p = torch.sigmoid(s).detach()
    w = p / p.sum((2, 3), keepdim=True)
    (w * s).sum((2, 3)).sum().backward()
    assert (g_full - feats.grad).abs().max() > 1e-6


def test_pcam_fc_bn_and_drop() -> None:
    feats, conv = _pcam_case(c=4, k=2)
    s = conv(feats)
    with pytest.raises(ConfigError, match="num_features"):
        PCAMPool(fc_bn=True)
    with pytest.raises(ConfigError, match="fc_drop"):
        PCAMPool(fc_drop=1.0)
    bn = PCAMPool(fc_bn=True, num_features=4, num_classes=2).double()
    assert bn.bn is not None and bn.bn.num_features == 8
    out = bn(s, features=feats, classifier=conv)
    assert out.shape == (2, 2) and torch.isfinite(out).all()
    # batch-norm in train mode: each class's normalised z has zero batch mean, so the logits'
    # batch mean is the bias
    torch.testing.assert_close(out.mean(0), conv.bias.detach(), atol=1e-9, rtol=0)
    drop = PCAMPool(fc_drop=0.5).eval()
    torch.testing.assert_close(
        drop(s, features=feats, classifier=conv), PCAMPool()(s, features=feats, classifier=conv)
    )


def test_pcam_needs_features_and_classifier() -> None:
    feats, conv = _pcam_case()
    s = conv(feats)
    assert PCAMPool.needs_features and not GlobalAvgPool.needs_features
    with pytest.raises(ValueError, match="needs `features`"):
        PCAMPool()(s)
    with pytest.raises(ValueError, match="spatial size"):
        PCAMPool()(s, features=feats[:, :, :2], classifier=conv)


def test_maps_must_be_4d() -> None:
    with pytest.raises(ValueError, match=r"\[B, K, h, w\]"):
        GlobalAvgPool()(torch.zeros(2, 3, 4))


def test_create_pooling_errors() -> None:
    with pytest.raises(ConfigError) as ei:
        create_pooling("nope")
    assert "gap" in str(ei.value) and "wildcat" in str(ei.value)
    with pytest.raises(TypeError) as et:
        create_pooling("lse", gamma=0.5)
    assert "gamma" in str(et.value) and "allowed: r" in str(et.value)
    assert isinstance(create_pooling("wildcat", kmax=0.2, kmin=0.1, alpha=0.7), WildcatPool)
