"""PYLON: map resolution, pyramid-attention size rule, UP-module structure, max-pooled logits."""

from __future__ import annotations

import pytest
import torch
from lesionsweep.errors import ConfigError
from lesionsweep.methods import create_method
from lesionsweep.methods.pylon import ConvBnRelu, Pylon, PyramidAttention, UpModule
from torch import nn


def _pylon(**kw: object) -> Pylon:
    torch.manual_seed(0)
    m = create_method("pylon", 3, backbone="test_resnet", **kw)
    assert isinstance(m, Pylon)
    return m


def test_map_is_quarter_of_input_and_logit_is_spatial_max() -> None:
    m = _pylon()
    x = torch.randn(2, 1, 256, 256)
    out = m(x)
    assert out.maps.shape == (2, 3, 64, 64)
    assert out.logits.shape == (2, 3)
    assert out.maps.dtype == torch.float32
    torch.testing.assert_close(out.logits, out.maps.amax(dim=(2, 3)))
    loss = m.loss(out, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    loss.backward()
    assert torch.isfinite(loss)
    assert next(m.encoder.parameters()).grad.abs().sum() > 0
    assert m.pa.down1[0].weight.grad.abs().sum() > 0


def test_non_square_input_and_eval_batch_of_one() -> None:
    m = _pylon().eval()
    with torch.no_grad():
        out = m(torch.randn(1, 1, 256, 512))
    assert out.maps.shape == (1, 3, 64, 128)


def test_pyramid_attention_refuses_224_with_the_rule() -> None:
    m = _pylon()
    with pytest.raises(ValueError) as ei:
        m(torch.randn(2, 1, 224, 224))
    msg = str(ei.value)
    assert "224x224" in msg and "multiple of 256" in msg and "stride-32" in msg
    assert isinstance(ei.value, ConfigError)


def test_without_pa_any_multiple_of_32_works() -> None:
    m = _pylon(use_pa=False)
    assert not hasattr(m.pa, "down1")
    out = m(torch.randn(2, 1, 224, 224))
    assert out.maps.shape == (2, 3, 56, 56)


def test_training_batch_of_one_at_256_is_refused_clearly() -> None:
    m = _pylon()
    with pytest.raises(ValueError, match=">= 2 images"):
        m(torch.randn(1, 1, 256, 256))


def test_backbone_without_four_stages_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"strides 4, 8, 16 and 32.*\[16, 16, 16\]"):
        create_method("pylon", 2, backbone="test_vit")


def test_backbone_without_stride_2_stage_works() -> None:
    # ConvNeXt has no stride-2 feature: the four stages are all it has
    torch.manual_seed(0)
    m = create_method("pylon", 2, backbone="test_convnext")
    assert m(torch.randn(2, 1, 256, 256)).maps.shape == (2, 2, 64, 64)


def test_input_channels_checked() -> None:
    m = _pylon()
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        m(torch.randn(2, 3, 256, 256))


def _n(mod: nn.Module) -> int:
    return sum(p.numel() for p in mod.parameters())


def test_up_module_1layer_vs_2layer_structure() -> None:
    c, n = 48, 16
    one = UpModule(c, n, "1layer", 1)
    two = UpModule(c, n, "2layer", 1)
    assert isinstance(one.conv, ConvBnRelu)
    assert one.conv[0].in_channels == c and one.conv[0].out_channels == n
    assert isinstance(two.conv, nn.Sequential) and len(two.conv) == 2
    assert (two.conv[0][0].in_channels, two.conv[0][0].out_channels) == (c, c)
    assert (two.conv[1][0].in_channels, two.conv[1][0].out_channels) == (c, n)
    # conv weight + bias + BN weight/bias
    assert _n(one) == c * n + n + 2 * n
    assert _n(two) == (c * c + c + 2 * c) + (c * n + n + 2 * n)
    three = UpModule(c, n, "1layer", 3)
    assert three.conv[0].kernel_size == (3, 3) and three.conv[0].padding == (1, 1)


def test_up_module_adds_resized_deep_feature() -> None:
    up = UpModule(4, 2, "1layer", 1).eval()
    skip = torch.randn(1, 4, 8, 8)
    deep = torch.randn(1, 2, 4, 4)
    expected = torch.nn.functional.interpolate(
        deep, size=(8, 8), mode="bilinear", align_corners=True
    ) + up.conv(skip)
    torch.testing.assert_close(up(skip, deep), expected)


def test_method_uses_n_dec_ch_up_type_and_n_up() -> None:
    m = _pylon(n_dec_ch=8, up_type="1layer", n_up=2, seg_kern_size=3)
    # test_resnet stages at strides 8 and 16 have 48 and 192 channels
    assert len(m.ups) == 2
    assert m.ups[0].conv[0].in_channels == 192 and m.ups[1].conv[0].in_channels == 48
    assert m.head.kernel_size == (3, 3) and m.head.in_channels == 8
    assert m(torch.randn(2, 1, 256, 256)).maps.shape == (2, 3, 32, 32)
    assert _pylon(up_type="2layer").ups[0].conv[0][0].out_channels == 192


def test_pyramid_attention_formula() -> None:
    torch.manual_seed(0)
    pa = PyramidAttention(6, 4, use_pa=True).eval()
    with torch.no_grad():  # make mid a constant map: out is then the attention map a (scaled)
        pa.mid[0].weight.zero_()
        pa.mid[0].bias.fill_(2.0)
    x = torch.randn(2, 6, 16, 8)
    out = pa(x)
    mid = pa.mid(x)
    assert out.shape == (2, 4, 16, 8)
    mp = torch.nn.functional.max_pool2d

    def up(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(
            t, scale_factor=2, mode="bilinear", align_corners=True
        )

    x1 = pa.down1(mp(x, 2))
    x2 = pa.down2(mp(x1, 2))
    x3 = pa.down3(mp(x2, 2))
    assert x3.shape[-2:] == (2, 1)
    a = up(pa.conv1(x1) + up(pa.conv2(x2) + up(pa.conv3(x3))))
    torch.testing.assert_close(out, a * mid)
    assert torch.all(out[:, :1] == out)  # one spatial mask shared by every channel


def test_smp_style_init() -> None:
    m = _pylon()
    for mod in [*m.pa.modules(), *m.ups.modules()]:
        if isinstance(mod, nn.Conv2d):
            assert torch.all(mod.bias == 0)
        if isinstance(mod, nn.BatchNorm2d):
            assert torch.all(mod.weight == 1) and torch.all(mod.bias == 0)
    assert torch.all(m.head.bias == 0)
    fan_in, fan_out = m.head.in_channels, m.head.out_channels
    bound = (6.0 / (fan_in + fan_out)) ** 0.5  # xavier-uniform
    assert m.head.weight.abs().max() <= bound


@pytest.mark.parametrize(
    "kw",
    [{"up_type": "3layer"}, {"n_up": 4}, {"up_kernel_size": 2}, {"seg_kern_size": 0}],
)
def test_bad_knobs_refused(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="PYLON"):
        create_method("pylon", 2, backbone="test_resnet", **kw)
