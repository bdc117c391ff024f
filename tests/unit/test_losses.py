"""Classification losses on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
from lesionsweep.methods import create_loss, loss_names

LN2 = math.log(2.0)


def sp(x: float) -> float:
    """softplus: -log sigmoid(-x) = BCE of logit x against target 0."""
    return math.log1p(math.exp(x))


def test_registry() -> None:
    assert set(loss_names()) == {"bce", "weighted_bce", "wcel", "focal"}


def test_bce_hand_value_and_mask() -> None:
    loss = create_loss("bce")
    logits = torch.tensor([[0.0, math.log(3.0)]])
    targets = torch.tensor([[1.0, 0.0]])
    # log 2 and log(1 + 3) = 2 log 2 -> mean 1.5 log 2
    assert loss(logits, targets).item() == pytest.approx(1.5 * LN2, rel=1e-6)
    assert loss(logits, targets, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(LN2, rel=1e-6)
    assert loss(logits, targets, torch.zeros(1, 2)).item() == 0.0


def test_weighted_bce_per_batch_pos_weight() -> None:
    loss = create_loss("weighted_bce")
    logits = torch.zeros(4, 2)
    # class 0: 1 positive of 4 -> pos_weight 3; class 1: no positive -> contributes 0
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    # class 0 total = 3 log2 (positive) + 3 log2 (negatives); summed over classes, mean over B
    assert loss(logits, targets).item() == pytest.approx(6 * LN2 / 4, rel=1e-6)
    # masking one negative of class 0: n = 3, pos_weight 2 -> (2 + 2) log2 / 4
    mask = torch.ones(4, 2)
    mask[3, 0] = 0
    assert loss(logits, targets, mask).item() == pytest.approx(LN2, rel=1e-6)
    # non-zero logits: positive x=1 weighted 3 * sp(-1), negatives sp(x)
    x = torch.tensor([[1.0, 5.0], [-1.0, 5.0], [0.5, 5.0], [2.0, 5.0]])
    expected = (3 * sp(-1.0) + sp(-1.0) + sp(0.5) + sp(2.0)) / 4
    assert loss(x, targets).item() == pytest.approx(expected, rel=1e-6)
    # a batch with no positive at all -> 0 (PCAM's batch_weight code)
    assert loss(x, torch.zeros(4, 2)).item() == 0.0


def test_wcel_betas() -> None:
    loss = create_loss("wcel")
    x = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    # |P| = 1, |N| = 3: beta_P = 4, beta_N = 4/3; mean over the 4 labels
    expected = (4 * sp(-0.5) + 4 / 3 * (sp(-1.0) + sp(2.0) + sp(0.0))) / 4
    assert loss(x, t).item() == pytest.approx(expected, rel=1e-6)
    # masking the only positive: beta_P unused, beta_N = 3/3 = 1, mean over 3 known labels
    mask = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    expected_m = (sp(-1.0) + sp(2.0) + sp(0.0)) / 3
    assert loss(x, t, mask).item() == pytest.approx(expected_m, rel=1e-6)


def test_focal() -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 3) * 3
    t = (torch.rand(5, 3) > 0.5).float()
    torch.testing.assert_close(create_loss("focal", gamma=0.0)(x, t), create_loss("bce")(x, t))
    # logit 0: p_t = 1/2 -> (1/2)^2 log 2; alpha 0.25 weights positives 0.25, negatives 0.75
    z = torch.zeros(1, 2)
    tz = torch.tensor([[1.0, 0.0]])
    assert create_loss("focal", gamma=2.0)(z, tz).item() == pytest.approx(0.25 * LN2, rel=1e-6)
    got = create_loss("focal", gamma=2.0, alpha=0.25)(z, tz).item()
    assert got == pytest.approx((0.25 + 0.75) / 2 * 0.25 * LN2, rel=1e-6)
    # confident correct prediction is down-weighted much more than BCE
    conf = torch.tensor([[4.0]])
    one = torch.ones(1, 1)
    ratio = create_loss("focal", gamma=2.0)(conf, one) / create_loss("bce")(conf, one)
    assert ratio.item() == pytest.approx((1 - torch.sigmoid(conf)).item() ** 2, rel=1e-5)


@pytest.mark.parametrize("name", ["bce", "weighted_bce", "wcel", "focal"])
def test_target_mask_ignores_entries(name: str) -> None:
    loss = create_loss(name)
    torch.manual_seed(1)
    x = torch.randn(6, 3, requires_grad=True)
    t = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 1]])
    mask = torch.ones(6, 3)
    mask[0, 0] = mask[2, 1] = mask[4, 2] = 0
    base = loss(x, t, mask)
    x2 = x.detach().clone()
    x2[0, 0], x2[2, 1], x2[4, 2] = 50.0, -50.0, 7.0  # masked entries: anything
    torch.testing.assert_close(loss(x2, t, mask), base.detach())
    base.backward()
    assert x.grad[0, 0] == 0 and x.grad[2, 1] == 0 and x.grad[4, 2] == 0
    assert x.grad.abs().sum() > 0


def test_create_loss_errors() -> None:
    with pytest.raises(TypeError, match="allowed: alpha, gamma"):
        create_loss("focal", beta=1.0)
    with pytest.raises(KeyError, match="registered losses"):
        create_loss("hinge")
    with pytest.raises(ValueError, match="gamma"):
        create_loss("focal", gamma=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        create_loss("focal", alpha=1.5)


def test_loss_params_list_only_real_knobs() -> None:
    from lesionsweep.methods.losses import loss_params

    assert set(loss_params("bce")) == set()
    assert set(loss_params("focal")) == {"gamma", "alpha"}
    with pytest.raises(TypeError, match="allowed: \\(none\\)"):
        create_loss("bce", kwargs=1)
