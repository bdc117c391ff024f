"""CAM, Grad-CAM and Grad-CAM++ (the authors' formula) on tiny hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lesionsweep.methods import create_method
from lesionsweep.methods.wsmis.cams import (
    class_maps,
    grad_cam_pp_weights,
    normalize_maps,
    plain_cam,
)


def test_grad_cam_pp_weights_by_hand() -> None:
    a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64)
    g = torch.full_like(a, 0.5)
    # alpha = g^2 / (2 g^2 + sum_hw(g^3 A) + 1e-8) = 0.25 / (0.5 + 0.125 * 10 + 1e-8)
    alpha = 0.25 / (0.5 + 1.25 + 1e-8)
    w = grad_cam_pp_weights(a, g)
    assert w.shape == (1, 1)
    assert float(w) == pytest.approx(4 * alpha * 0.5, rel=1e-12)
    assert float(grad_cam_pp_weights(a, -g)) == 0.0  # relu(g) = 0


def test_grad_cam_pp_of_a_gap_head_matches_the_formula() -> None:
    torch.manual_seed(0)
    a = torch.rand(1, 3, 2, 2)
    weight = torch.tensor([[0.5, -1.0, 2.0]])
    bias = torch.tensor([0.3])
    feats = a.clone().requires_grad_(True)
    logits = torch.einsum("bchw,kc->bkhw", feats, weight).mean(dim=(2, 3)) + bias
    got = class_maps(feats, logits, weight, "gradcam++")[0, 0].double().numpy()
    # by hand: d exp(s) / dA_c = exp(s) * W_c / (h w), constant over space
    an = a.double().numpy()[0]
    s = float(logits[0, 0].detach())
    g = np.exp(s) * weight.double().numpy()[0][:, None, None] / 4 * np.ones((3, 2, 2))
    alpha = g**2 / (2 * g**2 + (g**3 * an).sum(axis=(1, 2), keepdims=True) + 1e-8)
    w = (alpha * np.maximum(g, 0)).sum(axis=(1, 2))
    expected = (w[:, None, None] * an).sum(0)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # the channel with a negative weight does not contribute
    assert w[1] == 0.0


def test_plain_cam_and_gradcam_normalise_identically_for_a_gap_head() -> None:
    torch.manual_seed(1)
    a = torch.rand(2, 4, 3, 3)
    weight = torch.randn(2, 4)
    cam = plain_cam(a, weight)
    assert cam.shape == (2, 2, 3, 3)
    torch.testing.assert_close(cam[0, 1], (weight[1][:, None, None] * a[0]).sum(0))
    feats = a.clone().requires_grad_(True)
    logits = torch.einsum("bchw,kc->bkhw", feats, weight).mean(dim=(2, 3))
    gc = class_maps(feats, logits, weight, "gradcam")
    torch.testing.assert_close(normalize_maps(gc), normalize_maps(cam), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="cam_kind"):
        class_maps(feats, logits, weight, "scorecam")
    with pytest.raises(ValueError, match="autograd"):
        class_maps(a, logits.detach(), weight, "gradcam++")


def test_normalize_maps() -> None:
    m = torch.tensor([[[[-1.0, 2.0], [4.0, 1.0]]], [[[-1.0, -2.0], [0.0, -3.0]]]])
    n = normalize_maps(m)
    assert n[0, 0].tolist() == [[0.0, 0.5], [1.0, 0.25]]
    assert n[1].abs().max() == 0.0  # nothing positive -> all zero, no NaN
    # scale-free
    torch.testing.assert_close(normalize_maps(m * 1e-6), n)


@pytest.mark.parametrize("kind", ["cam", "gradcam", "gradcam++"])
def test_model_cams_are_normalised_and_finite(kind: str) -> None:
    torch.manual_seed(0)
    m = create_method("wsmis", 2, backbone="test_resnet", cam_kind=kind).eval()
    x = torch.randn(2, 1, 64, 64)
    c = m.normalized_cams(x)
    assert c.shape == (2, 2, 8, 8)
    assert torch.isfinite(c).all() and c.min() >= 0 and c.max() <= 1
    out = m(x)
    assert out.maps.shape == (2, 2, 8, 8) and out.extras["features"].shape[-2:] == (8, 8)
    # the logit is the spatial mean of the raw CAM plus the bias
    torch.testing.assert_close(out.logits, out.maps.mean(dim=(2, 3)) + m.head.bias)
