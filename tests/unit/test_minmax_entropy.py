"""Min-max entropy: loss terms by hand, the soft mask R+, mask detaching, WILDCAT head, erasing."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from lesionsweep.errors import ConfigError
from lesionsweep.methods import MethodOutput, create_loss, create_method
from lesionsweep.methods.minmax_entropy import DropoutWildcatPool, MinMaxEntropy
from lesionsweep.methods.pooling import WildcatPool


def _mme(**kw: object) -> MinMaxEntropy:
    torch.manual_seed(0)
    kw.setdefault("dropout", 0.0)
    m = create_method("minmax_entropy", 2, backbone="test_resnet", **kw)
    assert isinstance(m, MinMaxEntropy)
    return m


def _sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _bce(s: float, t: float) -> float:
    return -(t * math.log(_sig(s)) + (1 - t) * math.log(1 - _sig(s)))


def _output(loc: list[list[float]], pos: list[list[float]], neg: list[list[float]]) -> MethodOutput:
    t = torch.tensor
    return MethodOutput(
        logits=t(pos),
        maps=torch.zeros(len(loc), len(loc[0]), 2, 2),
        extras={"localizer_logits": t(loc), "positive_logits": t(pos), "negative_logits": t(neg)},
    )


def test_multilabel_loss_terms_by_hand() -> None:
    m = _mme().eval()
    out = _output(loc=[[1.0, -2.0]], pos=[[0.5, 0.0]], neg=[[2.0, -1.0]])
    y = torch.tensor([[1.0, 0.0]])
    terms = m.loss_terms(out, y)
    pos = (_bce(0.5, 1) + _bce(0.0, 0)) / 2
    neg = (_bce(2.0, 0.5) + _bce(-1.0, 0.5)) / 2  # binary entropy push to p = 0.5
    loc = (_bce(1.0, 1) + _bce(-2.0, 0)) / 2
    assert terms["positive"].item() == pytest.approx(pos, rel=1e-6)
    assert terms["negative"].item() == pytest.approx(neg, rel=1e-6)
    assert terms["localizer"].item() == pytest.approx(loc, rel=1e-6)
    assert m.loss(out, y).item() == pytest.approx(pos + neg + loc, rel=1e-6)
    # the max-entropy term's minimum is ln 2 at logit 0
    zero = _output(loc=[[0.0, 0.0]], pos=[[0.0, 0.0]], neg=[[0.0, 0.0]])
    assert m.loss_terms(zero, y)["negative"].item() == pytest.approx(math.log(2), rel=1e-6)
    # target_mask drops unknown labels from the positive / localizer terms (BCE criterion)
    mask = torch.tensor([[1.0, 0.0]])
    masked = m.loss_terms(out, y, mask)
    assert masked["positive"].item() == pytest.approx(_bce(0.5, 1), rel=1e-6)
    assert masked["localizer"].item() == pytest.approx(_bce(1.0, 1), rel=1e-6)
    assert masked["negative"].item() == pytest.approx(neg, rel=1e-6)


def test_injected_criterion_is_used_for_positive_and_localizer_terms() -> None:
    torch.manual_seed(0)
    focal = create_loss("focal", gamma=2.0)
    m = create_method("minmax_entropy", 2, backbone="test_resnet", criterion=focal).eval()
    out = _output(loc=[[1.0, -2.0]], pos=[[0.5, 0.0]], neg=[[2.0, -1.0]])
    y = torch.tensor([[1.0, 0.0]])
    terms = m.loss_terms(out, y)
    assert terms["positive"].item() == pytest.approx(focal(out.extras["positive_logits"], y).item())
    assert terms["localizer"].item() == pytest.approx(
        focal(out.extras["localizer_logits"], y).item()
    )


def test_single_label_loss_terms_by_hand() -> None:
    m = _mme(multilabel=False).eval()
    out = _output(loc=[[1.0, -1.0]], pos=[[2.0, 0.0]], neg=[[0.0, 3.0]])
    y = torch.tensor([[0.0, 1.0]])

    def log_softmax(v: list[float]) -> list[float]:
        z = math.log(sum(math.exp(a) for a in v))
        return [a - z for a in v]

    terms = m.loss_terms(out, y)
    assert terms["positive"].item() == pytest.approx(-log_softmax([2.0, 0.0])[1], rel=1e-6)
    assert terms["negative"].item() == pytest.approx(-sum(log_softmax([0.0, 3.0])) / 2, rel=1e-6)
    assert terms["localizer"].item() == pytest.approx(-log_softmax([1.0, -1.0])[1], rel=1e-6)
    with pytest.raises(ValueError, match=r"one-hot.*row\(s\) \[0\]"):
        m.loss_terms(out, torch.tensor([[1.0, 1.0]]))
    with pytest.raises(ValueError, match="every label known"):
        m.loss_terms(out, y, torch.tensor([[1.0, 0.0]]))


def _mask_case() -> tuple[torch.Tensor, torch.Tensor]:
    # K = 2 class maps on 2x2 for two images; scores are logits
    maps = torch.tensor(
        [
            [[[0.0, 1.0], [2.0, 3.0]], [[4.0, 0.0], [0.0, 0.0]]],
            [[[1.0, 1.0], [1.0, 5.0]], [[0.0, 2.0], [0.0, 0.0]]],
        ]
    )
    scores = torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0]])
    return scores, maps


def test_soft_mask_formula_batch_vs_per_image() -> None:
    scores, maps = _mask_case()
    m_b = _mme(multilabel=False, w=8.0, sigma=0.5)
    m_i = _mme(multilabel=False, w=8.0, sigma=0.5, batch_minmax=False)
    # softmax weights: image 0 -> (1/4, 3/4), image 1 -> (3/4, 1/4)
    mp = torch.tensor(
        [
            [[0.25 * 0 + 0.75 * 4, 0.25 * 1], [0.25 * 2, 0.25 * 3]],
            [[0.75 * 1, 0.75 * 1 + 0.25 * 2], [0.75 * 1, 0.75 * 5]],
        ]
    )
    lo, hi = mp.min(), mp.max()  # 0.25 and 3.75 over the whole batch
    exp_b = torch.sigmoid(8 * ((mp - lo) / (hi - lo) - 0.5)).unsqueeze(1)
    lo_i = mp.flatten(1).min(1).values.view(2, 1, 1)
    hi_i = mp.flatten(1).max(1).values.view(2, 1, 1)
    exp_i = torch.sigmoid(8 * ((mp - lo_i) / (hi_i - lo_i) - 0.5)).unsqueeze(1)
    torch.testing.assert_close(m_b.soft_mask(scores, maps, (2, 2)), exp_b)
    torch.testing.assert_close(m_i.soft_mask(scores, maps, (2, 2)), exp_i)
    assert not torch.allclose(exp_b, exp_i)
    # upsampling is bilinear with align_corners=True: corners keep their values
    up = m_b.soft_mask(scores, maps, (5, 5))
    torch.testing.assert_close(up[:, :, ::4, ::4], exp_b)
    # multilabel weights are sigmoids: image 0 -> (1/2, 3/4)
    m_ml = _mme(batch_minmax=False)
    mp0 = 0.5 * maps[0, 0] + 0.75 * maps[0, 1]
    exp0 = torch.sigmoid(8 * ((mp0 - mp0.min()) / (mp0.max() - mp0.min()) - 0.5))
    torch.testing.assert_close(m_ml.soft_mask(scores, maps, (2, 2))[0, 0], exp0)
    # a constant map does not divide by zero
    flat = m_i.soft_mask(scores, torch.ones_like(maps), (2, 2))
    torch.testing.assert_close(flat, torch.full_like(flat, 1 / (1 + math.exp(4))))


@pytest.mark.parametrize("detach", [True, False])
def test_detach_mask_blocks_gradient_to_localizer_head(detach: bool) -> None:
    m = _mme(detach_mask=detach)
    x = torch.randn(2, 1, 64, 64)
    out = m(x)
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    terms = m.loss_terms(out, y)
    (terms["positive"] + terms["negative"]).backward()
    g = m.localizer.to_modalities.weight.grad
    if detach:
        assert g is None or torch.all(g == 0)
    else:
        assert g is not None and g.abs().sum() > 0
    assert m.classifier.to_modalities.weight.grad.abs().sum() > 0
    assert next(m.encoder.parameters()).grad.abs().sum() > 0


def test_forward_shapes_and_logits_choice() -> None:
    m = _mme().eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        out = m(x)
    ex = out.extras
    assert out.maps.shape == (2, 2, 2, 2) and out.logits.shape == (2, 2)
    assert ex["mask"].shape == (2, 1, 64, 64)
    assert torch.all((ex["mask"] > 0) & (ex["mask"] < 1))
    torch.testing.assert_close(out.logits, ex["positive_logits"])
    # the classifier sees X+ = x * R+ at half size
    with torch.no_grad():
        torch.testing.assert_close(ex["positive_logits"], m.classify(x * ex["mask"]))
        torch.testing.assert_close(ex["negative_logits"], m.classify(x * (1 - ex["mask"])))
        scores, maps = m.localize(x)
    torch.testing.assert_close(ex["localizer_logits"], scores)
    torch.testing.assert_close(out.maps, maps)
    # WILDCAT with kmax=0.09 of 4 cells keeps one cell: the score is the map's max
    torch.testing.assert_close(scores, maps.amax(dim=(2, 3)))
    m2 = _mme(logits_from="localizer").eval()
    with torch.no_grad():
        out2 = m2(x)
    torch.testing.assert_close(out2.logits, out2.extras["localizer_logits"])
    assert torch.isfinite(m.loss(out, torch.tensor([[1.0, 0.0], [0.0, 0.0]])))


def test_wildcat_head_modalities_and_kmin_option() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 2, 4, 5)
    plain = WildcatPool(kmax=0.25, kmin=3, alpha=0.7)
    drop0 = DropoutWildcatPool(kmax=0.25, kmin=3, alpha=0.7, dropout=0.0)
    torch.testing.assert_close(drop0(x), plain(x))
    d = DropoutWildcatPool(kmax=0.25, dropout=0.5).eval()
    torch.testing.assert_close(d(x), WildcatPool(kmax=0.25)(x))  # no dropout in eval
    d.train()
    assert not torch.allclose(d(x), WildcatPool(kmax=0.25)(x))
    # the code discards the kmin term unless use_kmin
    assert _mme(alpha=0.6).localizer.pool.alpha == 0.0
    assert _mme(alpha=0.6, use_kmin=True).classifier.pool.alpha == 0.6
    # class-wise mean over modalities: channel k*M + m belongs to class k
    m = _mme(modalities=3)
    head = m.localizer
    c = head.to_modalities.in_channels
    with torch.no_grad():
        head.to_modalities.weight.zero_()
        head.to_modalities.bias.copy_(torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 30.0]))
    scores, maps = head(torch.randn(1, c, 2, 2))
    torch.testing.assert_close(maps[0, :, 0, 0], torch.tensor([2.0, 20.0]))
    torch.testing.assert_close(scores[0], torch.tensor([2.0, 20.0]))


def test_erasing_all_wrong_keeps_no_region() -> None:
    m = _mme(erase_times=3)
    x = torch.randn(2, 1, 64, 64)
    out = m(x)
    assert "input" in out.extras
    wrong = (torch.sigmoid(out.extras["localizer_logits"]) <= 0.5).float()  # every label wrong
    calls = []
    localize = m.localize
    m.localize = lambda t: calls.append(1) or localize(t)  # type: ignore[method-assign]
    loc, s_pos, s_neg = m._erase(out, wrong, None)
    assert calls == []  # round 0 reuses forward's localizer; history is empty after it
    torch.testing.assert_close(s_pos, m.classify(x * 0.0))
    torch.testing.assert_close(s_neg, m.classify(x))
    torch.testing.assert_close(loc, m.criterion(out.extras["localizer_logits"], wrong))


def test_erasing_one_round_scales_mask_by_trust() -> None:
    m = _mme(erase_times=1)
    x = torch.randn(2, 1, 64, 64)
    out = m(x)
    p = torch.sigmoid(out.extras["localizer_logits"].detach())
    right = (p > 0.5).float()  # every label right
    p_y = torch.where(p > 0.5, p, 1 - p).mean(1).view(2, 1, 1, 1)
    _, s_pos, s_neg = m._erase(out, right, None)
    acc = p_y * out.extras["mask"]
    torch.testing.assert_close(s_pos, m.classify(x * acc))
    torch.testing.assert_close(s_neg, m.classify(x * (1 - acc)))


@pytest.mark.parametrize("multilabel", [True, False])
def test_erasing_trains(multilabel: bool) -> None:
    m = _mme(erase_times=3, multilabel=multilabel)
    x = torch.randn(2, 1, 64, 64)
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = m(x)
    assert "positive_logits" not in out.extras  # built in loss() from the accumulated mask
    loss = m.loss(out, y)
    assert torch.isfinite(loss)
    assert out.extras["positive_logits"].requires_grad
    assert out.logits is out.extras["positive_logits"]
    loss.backward()
    assert m.classifier.to_modalities.weight.grad.abs().sum() > 0
    assert m.localizer.to_modalities.weight.grad is not None
    m.eval()  # no erasing in eval: the forward's X± are used
    with torch.no_grad():
        out = m(x)
    assert "input" not in out.extras and torch.isfinite(m.loss(out, y))


@pytest.mark.parametrize(
    "kw",
    [
        {"classifier_scale": 0.0},
        {"classifier_scale": 1.5},
        {"modalities": 0},
        {"w": 0.0},
        {"erase_times": -1},
        {"sigma_erase": 0.0},
        {"dropout": 1.0},
        {"logits_from": "both"},
    ],
)
def test_bad_knobs_refused(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        create_method("minmax_entropy", 2, backbone="test_resnet", **kw)


def test_input_channels_checked() -> None:
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        _mme(in_chans=3)(torch.randn(1, 1, 64, 64))


def test_max_entropy_gradient_pushes_negative_scores_to_half() -> None:
    m = _mme()
    s = torch.tensor([[2.0, -1.0]], requires_grad=True)
    m._max_entropy(s).backward()
    # d/ds BCE(s, 0.5) = sigmoid(s) - 0.5, averaged over the 2 entries
    torch.testing.assert_close(s.grad, (torch.sigmoid(s.detach()) - 0.5) / 2)
    assert F.binary_cross_entropy_with_logits(torch.zeros(1), torch.full((1,), 0.5)).item() == (
        pytest.approx(math.log(2))
    )


def _bn_state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.clone()
        for k, v in m.state_dict().items()
        if k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }


def test_erasing_step_updates_batchnorm_like_the_reference() -> None:
    """One training step with erasing (u = 1, every label right) runs, as the reference does
    (methods.md section 6.2), exactly these encoder passes in train mode: the localizer on x,
    then the classifier on X+ = x * M_acc and on X- = x * (1 - M_acc), with
    M_acc = trust * R+ and trust = p(y_hat) (round 0: exp(0) = 1, correct, loss <= itself).
    The BatchNorm running statistics, which the eval-time model uses, must equal the reference's;
    a classifier pass on the round-0 X± in forward would add two more updates."""
    m = _mme(erase_times=1).train()
    ref, probe = copy.deepcopy(m), copy.deepcopy(m)
    x = torch.randn(4, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = (torch.sigmoid(probe.localize(x)[0]) > 0.5).float()  # the labels it predicts
        # the reference, written from the documented algorithm
        scores, maps = ref.localize(x)
        r_pos = ref.soft_mask(scores, maps, (64, 64))
        p = torch.sigmoid(scores)
        trust = torch.where(p > 0.5, p, 1 - p).mean(1).view(-1, 1, 1, 1)
        ref.classify(x * (trust * r_pos))
        ref.classify(x * (1 - trust * r_pos))
    m.loss(m(x), y).backward()
    got, want = _bn_state(m), _bn_state(ref)
    assert got.keys() == want.keys() and len(got) > 0
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-7, msg=k)
    assert all(int(v) == 3 for k, v in got.items() if k.endswith("num_batches_tracked"))


@pytest.mark.parametrize("erase_times", [0, 3])
def test_one_training_step_runs_the_localizer_per_round_and_the_classifier_twice(
    erase_times: int,
) -> None:
    m = _mme(erase_times=erase_times).train()
    calls = {"localize": 0, "classify": 0}
    for name in calls:
        fn = getattr(m, name)

        def counted(t: torch.Tensor, fn=fn, name=name):  # type: ignore[no-untyped-def]
            calls[name] += 1
            return fn(t)

        setattr(m, name, counted)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        y = (torch.sigmoid(m.localizer(m.encoder(x)[-1])[0]) > 0.5).float()
    tracked = {k: int(v) for k, v in _bn_state(m).items() if k.endswith("num_batches_tracked")}
    m.loss(m(x), y)
    assert calls["classify"] == 2
    assert 1 <= calls["localize"] <= max(1, erase_times)
    for k, v in _bn_state(m).items():
        if k.endswith("num_batches_tracked"):  # one BN update per encoder pass, none thrown away
            assert int(v) - tracked[k] == calls["localize"] + calls["classify"], k


def test_feature_index_sets_the_map_stride() -> None:
    x = torch.randn(1, 1, 64, 64)
    assert _mme().eval()(x).maps.shape[-2:] == (2, 2)  # deepest stage, stride 32 (the reference)
    assert _mme(feature_index=-2).eval()(x).maps.shape[-2:] == (4, 4)  # stride 16
    with pytest.raises(ConfigError, match="stage index"):
        _mme(feature_index=9)
