"""DropBlock and its warm-up (WSMIS stage 1)."""

from __future__ import annotations

import pytest
import torch
from lesionsweep.methods import create_method
from lesionsweep.methods.wsmis.dropblock import DropBlock2D, LinearWarmup


def test_drop_fraction_is_close_to_drop_prob() -> None:
    torch.manual_seed(0)
    db = DropBlock2D(drop_prob=0.1, block_size=3).train()
    x = torch.ones(16, 4, 64, 64)
    out = db(x)
    dropped = out == 0
    # blocks are shared over channels
    assert torch.equal(dropped, dropped[:, :1].expand_as(dropped))
    frac = dropped.float().mean().item()
    gamma = 0.1 / 9
    interior = 1 - (1 - gamma) ** 9  # 0.0956 away from the border
    assert abs(frac - interior) < 0.01
    assert abs(frac - 0.1) < 0.015


def test_rescaling_keeps_the_mean() -> None:
    torch.manual_seed(1)
    db = DropBlock2D(drop_prob=0.3, block_size=5).train()
    ones = torch.ones(4, 2, 32, 32)
    # a constant input keeps its mean exactly (scale = numel / kept)
    assert db(ones).mean().item() == pytest.approx(1.0, abs=1e-5)
    x = torch.rand(8, 3, 32, 32) + 1.0
    means = torch.stack([db(x).mean() for _ in range(200)])
    assert means.mean().item() == pytest.approx(x.mean().item(), rel=0.01)
    kept = db(ones)
    assert set(torch.unique(kept).tolist()) <= {0.0, kept.max().item()}
    assert kept.max().item() > 1.0


def test_identity_in_eval_and_at_zero_prob() -> None:
    x = torch.randn(2, 3, 16, 16)
    db = DropBlock2D(0.5, 3).eval()
    assert db(x) is x
    assert DropBlock2D(0.0, 3).train()(x) is x


@pytest.mark.parametrize("block", [1, 2, 3, 4])
def test_block_mask_is_a_block_of_the_given_size(block: int) -> None:
    db = DropBlock2D(0.1, block)
    centres = torch.zeros(1, 9, 9)
    centres[0, 4, 4] = 1.0
    keep = db.block_mask(centres)
    assert keep.shape == (1, 9, 9)
    assert int((keep == 0).sum()) == block * block
    rows, cols = torch.nonzero(keep[0] == 0, as_tuple=True)
    assert int(rows.max() - rows.min()) + 1 == block and int(cols.max() - cols.min()) + 1 == block


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="drop_prob"):
        DropBlock2D(1.0, 3)
    with pytest.raises(ValueError, match="block_size"):
        DropBlock2D(0.1, 0)
    with pytest.raises(ValueError, match="warmup"):
        LinearWarmup(0.1, -1)


def test_linear_warmup_schedule() -> None:
    s = LinearWarmup(0.3, 10)
    assert [s(i) for i in (0, 5, 10, 11, 1000)] == pytest.approx([0.0, 0.15, 0.3, 0.3, 0.3])
    assert LinearWarmup(0.3, 0)(0) == 0.3


def test_model_advances_the_warmup_per_training_forward() -> None:
    m = create_method(
        "wsmis", 1, backbone="test_resnet", drop_prob=0.3, block_size=3, dropblock_warmup_steps=4
    )
    x = torch.randn(2, 1, 64, 64)
    m.train()
    seen = []
    for _ in range(6):
        m(x)
        seen.append(m.dropblock.drop_prob)
    assert seen == pytest.approx([0.0, 0.075, 0.15, 0.225, 0.3, 0.3])
    m.eval()
    m(x)
    assert int(m.dropblock_step) == 6  # eval forwards do not advance the schedule
    # the same DropBlock instance acts after each of the last two stages
    hooks = [mod for mod in m.backbone.body.modules() if mod._forward_hooks]
    assert len(hooks) == 2
