"""Contract tests every registered method runs through (tiny timm backbone, no weights).

Parametrised over the registry: adding a method adds its cases here with no edit. A method with
special needs gets its own test file instead of a branch here.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from lesionsweep.methods import (
    Method,
    MethodOutput,
    create_method,
    method_class,
    method_names,
    method_params,
    register_method,
)

NAMES = method_names()
B, K = 2, 3


def _size(name: str) -> int:
    return max(64, method_class(name).input_multiple)


def _build(name: str, in_chans: int = 1) -> Method:
    torch.manual_seed(0)
    return create_method(name, num_classes=K, backbone="test_resnet", in_chans=in_chans)


def _images(name: str, in_chans: int = 1) -> torch.Tensor:
    s = _size(name)
    return torch.randn(B, in_chans, s, s, generator=torch.Generator().manual_seed(1))


def test_registry_holds_the_seed_methods() -> None:
    assert {"cam", "multiscale_cam"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_constructor_contract(name: str) -> None:
    cls = method_class(name)
    assert issubclass(cls, Method) and cls.name == name
    assert cls.map_kind in ("logits", "probabilities", "normalized")
    assert cls.input_multiple >= 1
    params = method_params(name)
    assert {"backbone", "in_chans"} <= set(params)
    for p in params.values():  # defaults live in the constructor: every knob has one
        assert p.default is not inspect.Parameter.empty, (name, p.name)


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("name", NAMES)
def test_forward_shapes_and_finite_maps(name: str, in_chans: int) -> None:
    m = _build(name, in_chans).train()
    x = _images(name, in_chans)
    out = m(x)
    assert isinstance(out, MethodOutput)
    assert out.logits.shape == (B, K)
    assert out.logits.dtype.is_floating_point and out.maps.dtype.is_floating_point
    assert out.maps.dim() == 4 and out.maps.shape[:2] == (B, K)
    h, w = out.maps.shape[2:]
    assert 0 < h <= x.shape[2] and 0 < w <= x.shape[3]
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.maps).all()
    loc = m.localization_maps(out)
    assert loc.shape[:2] == (B, K) and loc.dim() == 4 and torch.isfinite(loc).all()
    assert isinstance(out.extras, dict)


@pytest.mark.parametrize("name", NAMES)
def test_loss_is_scalar_and_backward_gives_finite_grads(name: str) -> None:
    m = _build(name).train()
    x = _images(name)
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    for tm in (None, mask):
        m.zero_grad(set_to_none=True)
        out = m(x)
        loss = m.loss(out, targets, tm)
        assert loss.dim() == 0 and torch.isfinite(loss)
        loss.backward()
        grads = [p.grad for p in m.parameters() if p.requires_grad and p.grad is not None]
        assert grads, f"{name}: no parameter received a gradient"
        assert all(torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_kwarg_is_refused_with_allowed_names(name: str) -> None:
    with pytest.raises(TypeError) as ei:
        create_method(name, num_classes=K, backbone="test_resnet", definitely_not_a_knob=1)
    msg = str(ei.value)
    assert "definitely_not_a_knob" in msg
    assert "backbone" in msg and "in_chans" in msg


@pytest.mark.parametrize("name", NAMES)
def test_duplicate_registration_is_refused(name: str) -> None:
    cls = method_class(name)

    class Impostor(Method):
        def forward(self, x: torch.Tensor) -> MethodOutput:  # pragma: no cover
            raise NotImplementedError

    with pytest.raises(ValueError, match="already registered"):
        register_method(name)(Impostor)
    assert method_class(name) is cls and cls.name == name


@pytest.mark.parametrize("name", NAMES)
def test_eval_mode_is_deterministic(name: str) -> None:
    m = _build(name).eval()
    x = _images(name)
    with torch.no_grad():
        a, b = m(x), m(x)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
    torch.testing.assert_close(a.maps, b.maps, rtol=0, atol=0)
