"""CAM method: PCAM identity, pooling wiring, stage choice, init and errors."""

from __future__ import annotations

import pytest
import torch
from lesionsweep.errors import ConfigError
from lesionsweep.methods import create_method
from lesionsweep.methods.cam import CAM
from lesionsweep.methods.pooling import GlobalAvgPool, LSEPool, PCAMPool, WildcatPool


def _cam(**kw) -> CAM:
    torch.manual_seed(0)
    m = create_method("cam", num_classes=3, backbone="test_resnet", **kw)
    assert isinstance(m, CAM)
    return m


def _x(c: int = 1, s: int = 64) -> torch.Tensor:
    return torch.randn(2, c, s, s, generator=torch.Generator().manual_seed(3))


def test_pcam_logit_is_probability_weighted_sum_of_the_map() -> None:
    m = _cam(pooling="pcam").train()
    out = m(_x())
    s = out.maps
    p = torch.sigmoid(s)
    expected = (p / p.sum((2, 3), keepdim=True) * s).sum((2, 3))
    torch.testing.assert_close(out.logits, expected, atol=1e-6, rtol=1e-5)
    out.logits.sum().backward()
    first_conv = next(p for n, p in m.backbone.named_parameters() if p.dim() == 4)
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    assert m.classifier.weight.grad.abs().sum() > 0


def test_gap_logit_is_map_mean() -> None:
    m = _cam(pooling="gap").eval()
    with torch.no_grad():
        out = m(_x())
    torch.testing.assert_close(out.logits, out.maps.mean((2, 3)))
    assert m.map_kind == "logits" and out.extras == {}


@pytest.mark.parametrize(
    "kwargs, cls",
    [
        ({"pooling": "gap"}, GlobalAvgPool),
        ({"pooling": "lse", "lse_r": 3.0}, LSEPool),
        (
            {"pooling": "wildcat", "wildcat_kmax": 2, "wildcat_kmin": 1, "wildcat_alpha": 0.7},
            WildcatPool,
        ),
        ({"pooling": "pcam", "fc_bn": True, "fc_drop": 0.2}, PCAMPool),
    ],
)
def test_pooling_knobs_reach_the_pooling(kwargs: dict, cls: type) -> None:
    m = _cam(**kwargs)
    assert isinstance(m.pool, cls)
    if cls is LSEPool:
        assert m.pool.r == 3.0
    if cls is WildcatPool:
        assert (m.pool.kmax, m.pool.kmin, m.pool.alpha) == (2.0, 1.0, 0.7)
    if cls is PCAMPool:
        assert m.pool.bn is not None and m.pool.fc_drop == 0.2
        assert m.pool.bn.num_features == 3 * m.classifier.in_channels
    out = m.train()(_x())
    assert out.logits.shape == (2, 3)


def test_pooling_output_matches_standalone_pooling() -> None:
    m = _cam(pooling="wildcat", wildcat_kmax=2).eval()
    with torch.no_grad():
        out = m(_x())
    torch.testing.assert_close(out.logits, WildcatPool(kmax=2)(out.maps))


def test_classifier_init_as_pcam() -> None:
    m = _cam()
    w = m.classifier.weight
    assert w.shape[:2] == (3, m.backbone.channels[-1]) and w.shape[2:] == (1, 1)
    assert 0.005 < w.std().item() < 0.015
    assert torch.count_nonzero(m.classifier.bias) == 0


def test_feature_index_and_output_stride_set_the_map_size() -> None:
    x = _x(s=64)
    assert _cam()(x).maps.shape[2:] == (2, 2)  # stride 32
    assert _cam(feature_index=2)(x).maps.shape[2:] == (8, 8)  # stride 8
    assert _cam(feature_index=-2)(x).maps.shape[2:] == (4, 4)  # stride 16
    assert _cam(output_stride=16)(x).maps.shape[2:] == (4, 4)


def test_errors() -> None:
    with pytest.raises(ConfigError, match="allowed: gap, gmp, lse, pcam, wildcat"):
        _cam(pooling="avg")
    with pytest.raises(ConfigError, match="pooling='pcam'"):
        _cam(pooling="gap", fc_bn=True)
    with pytest.raises(ConfigError, match="pooling='pcam'"):
        _cam(pooling="lse", fc_drop=0.3)
    with pytest.raises(ConfigError, match="out of range"):
        _cam(feature_index=7)
    with pytest.raises(ConfigError, match="unknown timm backbone"):  # not retried in a sweep
        create_method("cam", num_classes=2, backbone="not_a_timm_model")
    m = _cam(in_chans=1)
    with pytest.raises(ValueError, match=r"expected images \[B, 1, H, W\]"):
        m(_x(c=3))


@pytest.mark.parametrize("backbone", ["test_efficientnet", "test_convnext", "test_byobnet"])
def test_rgb_and_other_cnn_families(backbone: str) -> None:
    torch.manual_seed(0)
    m = create_method("cam", num_classes=2, backbone=backbone, in_chans=3, pooling="pcam")
    out = m(_x(c=3))
    assert out.logits.shape == (2, 2) and out.maps.shape[:2] == (2, 2)
    assert torch.isfinite(out.maps).all() and torch.isfinite(out.logits).all()


@pytest.mark.parametrize("method", ["cam", "multiscale_cam"])
@pytest.mark.parametrize("pooling", ["lse", "gmp", "wildcat"])
def test_features_first_pooling_equals_hand_written_head(method: str, pooling: str) -> None:
    """pool_on="features": image logit = W pool(F) + b on the same weights (Wang et al.'s order)."""
    torch.manual_seed(0)
    kw = {"pooling": pooling, "lse_r": 5.0, "wildcat_kmax": 2, "wildcat_kmin": 1}
    kw["wildcat_alpha"] = 0.7
    m = create_method(method, num_classes=3, backbone="test_resnet", pool_on="features", **kw)
    m.eval()
    for mod in m.modules():  # PCAM's N(0, 0.01) init leaves the orders within 1e-4 of each other
        if isinstance(mod, torch.nn.Conv2d) and mod.kernel_size == (1, 1) and mod.out_channels == 3:
            torch.nn.init.normal_(mod.weight)
            torch.nn.init.normal_(mod.bias)
    x = _x()
    with torch.no_grad():
        out = m(x)
        feats = m.backbone(x)
        convs = [m.classifier] if method == "cam" else list(m.classifiers)
        per_stage = []
        for f, conv in zip(feats, convs, strict=True):
            flat = f.double().flatten(2)  # [B, C, n]
            if pooling == "gmp":
                z = flat.amax(2)
            elif pooling == "lse":  # x* + (1/r) log(mean exp(r (x - x*))), r = 5
                top = flat.amax(2, keepdim=True)
                z = top[..., 0] + torch.log(torch.exp(5.0 * (flat - top)).mean(2)) / 5.0
            else:  # mean of the top 2 + 0.7 * the bottom 1
                srt = flat.sort(2, descending=True).values
                z = srt[..., :2].mean(2) + 0.7 * srt[..., -1]
            w = conv.weight.double().reshape(3, -1)
            per_stage.append(z @ w.T + conv.bias.double())
            # the maps are the class logit maps either way
        if method == "cam":
            ref = per_stage[0]
            torch.testing.assert_close(out.maps, m.classifier(feats[0]))
        else:
            alpha = m.relevance().double()
            ref = (torch.stack(per_stage, 2) * alpha[None]).sum(2)
    torch.testing.assert_close(out.logits.double(), ref, rtol=1e-5, atol=1e-5)
    # and it differs from pooling the class map
    m_map = create_method(method, num_classes=3, backbone="test_resnet", **kw)
    m_map.load_state_dict(m.state_dict())
    with torch.no_grad():
        assert not torch.allclose(m_map.eval()(x).logits, out.logits, atol=1e-2)


def test_pool_on_errors_and_wildcat_halve_reaches_the_pooling() -> None:
    with pytest.raises(ConfigError, match="pool_on must be one of map, features"):
        _cam(pool_on="classes")
    with pytest.raises(ConfigError, match="PCAM already pools the features"):
        _cam(pooling="pcam", pool_on="features")
    m = _cam(pooling="wildcat", wildcat_kmin=1, wildcat_alpha=0.5, wildcat_halve=True)
    assert isinstance(m.pool, WildcatPool) and m.pool.halve
