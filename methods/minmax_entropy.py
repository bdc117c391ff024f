"""Min-max entropy (Belharbi et al., arXiv 1907.12934; code
``sbelharbi/wsol-min-max-entropy-interpretability``, methods.md section 6).

One timm encoder is shared by two WILDCAT heads (as in the code; the paper's figure draws two
networks):

* **localizer** M: ``maps_s = mean over M modalities of Conv1x1(C → K·M)(enc(x))`` ``[B, K, h, w]``
  (channel ``k·M + m`` is modality m of class k) and ``score_s = WILDCAT(maps_s)`` ``[B, K]``:
  the mean of the top ``kmax`` activations of each map (a fraction of ``h·w`` when < 1, at least
  one), with dropout on the selected activations in training.
* **soft mask**: ``M+ = Σ_k p_k · maps_s[k]`` upsampled (bilinear, ``align_corners=True``) to the
  input size, min-max normalised, ``R+ = sigmoid(w · (norm(M+) − σ))`` ``[B, 1, H, W]`` in (0, 1).
* **classifier** C (head ``cl32``, same encoder): applied separately to ``X+ = x ⊙ R+`` and
  ``X− = x ⊙ (1 − R+)``, each first resized by ``classifier_scale`` (bilinear,
  ``align_corners=True``).

Loss (weights 1:1:1, as the code): fit the labels on ``X+`` (min entropy) + be maximally uncertain
on ``X−`` (max entropy) + the localizer's own classification loss.

Multi-label adaptation (our data; the paper is single-label, softmax). ``multilabel=True``
(default):

* ``p_k = sigmoid(score_s)_k`` weights the class maps in ``M+`` (an image with no finding gets a
  weak ``M+``, hence a small ``R+`` under the batch-global normalisation);
* the positive and localizer terms are ``self.criterion`` (the injected loss, BCE by default) on
  the X+ classifier scores and on ``score_s``, honouring ``target_mask``;
* the max-entropy term is per-class binary entropy maximisation: the mean over all B·K entries of
  ``BCE(score_c(X−), 0.5)`` (its minimum ``ln 2`` is reached at p = 0.5; every class is pushed,
  whatever its label, and unknown labels too: the term does not read labels).

``multilabel=False`` is the code's single-label version: ``p = softmax(score_s)``,
``CE(score_c(X+), y) − mean_k log softmax(score_c(X−))_k + CE(score_s, y)`` with ``y`` the index of
the single positive of each one-hot target row (other rows are refused); ``self.criterion`` is not
used there.

The code's quirks are the defaults; the paper's reading is an option:

* ``detach_mask=True``: ``M+`` is detached, so the X± terms reach the localizer head only through
  the shared encoder (False: gradients flow through ``R+`` into the localizer).
* ``batch_minmax=True``: normalise ``M+`` with the min and max of the whole batch tensor (False:
  per image). A constant map normalises to 0 (the code would divide by zero).
* ``use_kmin=False``: the code computes WILDCAT's ``alpha``·bottom-``kmin`` term and discards it
  (``scores.add(...)`` is not in place). True adds it (paper formula, as
  :class:`~lesionsweep.methods.pooling.WildcatPool`: ``top mean + alpha · bottom mean``).

Image logits (``MethodOutput.logits``): with ``logits_from="positive"`` (default) the classifier's
scores on ``X+``, which is what the code predicts with and selects models by (classification error
of ``out_pos``); ``"localizer"`` gives ``score_s``. ``maps`` are the localizer's class maps
``maps_s`` ``[B, K, H/r, W/r]`` (r = 32, or the stride of the ``feature_index`` stage;
``map_kind="logits"``, the maps ``score_s`` pools); the paper evaluates the class-agnostic ``R+``,
which is in ``extras["mask"]``. Forward always builds X± (in eval too, so the loss can be
evaluated): one full-size and two ``classifier_scale``-size encoder passes (1.5× a plain forward
at scale 0.5); in training with erasing see below.

Recursive erasing (``erase_times`` = u > 0, training only, methods.md section 6.2): the trust rule
needs the labels, so it runs in :meth:`loss` (``extras["input"]`` carries the image). Forward then
runs no classifier pass (as the reference: a discarded pass would still update the BatchNorm
running statistics in train mode): its ``logits`` are the localizer's ``score_s`` and
``positive_logits`` / ``negative_logits`` are absent until :meth:`loss` builds X± and writes the
classifier's scores into ``output.extras`` (and ``output.logits`` with
``logits_from="positive"``). Round 0 reuses forward's localizer output; up to
u rounds run the localizer on the progressively erased image, each contributing its localizer loss
(the rounds' losses are summed, as the code back-propagates each round), with per-sample trust
``exp(−r/sigma_erase) · 1[correct] · 1[loss_r ≤ loss_0] · p(ŷ)`` (a sample once wrong stays off),
``M_acc = max(M_acc, trust · R+_r)`` and ``image ← image · (1 − M_acc)`` where trust > 0. X± are
then built from ``M_acc`` on the original image. Multi-label reading: "correct" means every known
label is predicted right at probability 0.5, ``p(ŷ)`` is the mean over known classes of the
probability of the predicted value, the per-sample loss is the mean BCE over known classes.

Backbone: the code's CSAIL deep-stem ResNet has no exact timm twin; ``resnet50d`` (deep stem,
avg-down) is the closest default (methods.md section 8.1). WILDCAT defaults follow the GlaS
config (5 modalities, kmax = kmin = 0.09, dropout 0.75, σ = 0.5, w = 8, scale 0.5).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from lesionsweep.errors import ConfigError
from torch import nn

from .base import Method, MethodOutput, register_method
from .cam import build_backbone
from .pooling import WildcatPool

__all__ = ["MinMaxEntropy", "WildcatHead", "DropoutWildcatPool"]


class DropoutWildcatPool(WildcatPool):
    """:class:`WildcatPool` with dropout on the selected activations (min-max entropy code).

    The code sorts each map, applies ``nn.Dropout`` to the sorted activations, then averages the
    top ``kmax`` (and bottom ``kmin``) of them; dropping before or after the selection is the same
    in distribution, so dropout is applied to the selected values. ``[B, K, h, w] -> [B, K]``.

    Args:
        kmax, kmin, alpha: as :class:`WildcatPool` (kmax is at least one activation).
        dropout: probability in [0, 1), active in training only.
    """

    def __init__(
        self, kmax: float = 0.1, kmin: float = 0.0, alpha: float = 0.0, dropout: float = 0.0
    ) -> None:
        super().__init__(kmax, kmin, alpha)
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"WILDCAT dropout must be in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)

    def forward(
        self,
        logit_map: torch.Tensor,
        features: torch.Tensor | None = None,
        classifier: nn.Module | None = None,
    ) -> torch.Tensor:
        if logit_map.dim() != 4:
            raise ValueError(f"WILDCAT expects [B, K, h, w], got shape {tuple(logit_map.shape)}")
        x = logit_map.flatten(2)
        n = x.shape[2]
        kmax = max(1, self._count(self.kmax, n))
        top = x.topk(kmax, dim=2, largest=True, sorted=False).values
        out = F.dropout(top, self.dropout, self.training).mean(dim=2)
        kmin = self._count(self.kmin, n)
        if kmin > 0 and self.alpha != 0:
            low = x.topk(kmin, dim=2, largest=False, sorted=False).values
            out = out + self.alpha * F.dropout(low, self.dropout, self.training).mean(dim=2)
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dropout={self.dropout}"


class WildcatHead(nn.Module):
    """WILDCAT head: 1×1 conv to ``K·M`` modality maps, class-wise mean, WILDCAT pooling.

    ``forward(features [B, C, h, w]) -> (scores [B, K], maps [B, K, h, w])``, both float32.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        modalities: int,
        pool: WildcatPool,
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.modalities = int(modalities)
        self.to_modalities = nn.Conv2d(
            in_channels, self.num_classes * self.modalities, kernel_size=1, bias=True
        )
        self.pool = pool

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = features.shape
        mods = self.to_modalities(features).float()
        maps = mods.view(b, self.num_classes, self.modalities, h, w).mean(dim=2)
        return self.pool(maps), maps


@register_method("minmax_entropy")
class MinMaxEntropy(Method):
    """Min-max entropy WSOL (see the module docstring).

    Args:
        num_classes: K.
        criterion: classification loss for the positive and localizer terms (multilabel mode).
        backbone: timm CNN; one of its feature stages feeds both heads.
        feature_index: that stage (timm ``out_indices`` numbering; -1 = the deepest, stride 32,
            as the reference; -2 = stride 16, a finer map for small images).
        pretrained: ImageNet weights from the local cache (``True``) or a weights file path.
        in_chans: image channels.
        modalities: WILDCAT modalities M per class.
        kmax, kmin: WILDCAT top/bottom counts (fractions of ``h·w`` when < 1).
        alpha: weight of the bottom-``kmin`` term (only with ``use_kmin=True``; 0.6 is the code's
            constructor default, the GlaS config sets 0.0, both discarded by the code).
        dropout: dropout on the selected WILDCAT activations, in [0, 1).
        use_kmin: add the kmin term (paper) instead of discarding it (code).
        sigma, w: soft-mask offset σ and sharpness w in ``R+ = sigmoid(w (norm(M+) − σ))``.
        classifier_scale: resize factor of X± before the classifier, in (0, 1].
        multilabel: sigmoid/BCE analogue (True) or the code's softmax version (False).
        detach_mask: detach ``M+`` (code) or let gradients reach the localizer through ``R+``.
        batch_minmax: normalise ``M+`` over the batch (code) or per image.
        erase_times: recursive-erasing rounds u in training (0 = off).
        sigma_erase: trust decay ``exp(−round / sigma_erase)``.
        logits_from: ``"positive"`` (classifier on X+) or ``"localizer"`` (``score_s``).

    ``forward(x [B, in_chans, H, W])`` returns logits ``[B, K]``, maps ``[B, K, h, w]`` (localizer
    class maps at the encoder's stride, float32) and extras ``localizer_logits``,
    ``positive_logits``, ``negative_logits`` (``[B, K]``) and ``mask`` (``R+``, ``[B, 1, H, W]``).
    Training with erasing: ``input`` (the image) instead of the two classifier scores, which
    :meth:`loss` adds (see the module docstring).
    """

    map_kind: ClassVar[str] = "logits"
    #: resnet50d is too slow for a short CPU run; at 96-256 px the stride-32 map has 3x3-8x8
    #: cells (the reference's 480 px crops give 15x15) and kmax = 0.09 keeps a single one, so
    #: the localizer is a max pooling over border-dominated cells: use the stride-16 stage
    #: (8x8 cells at 128 px, kmax keeps 6) and no dropout on the few selected values
    small_scale_kwargs: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {"backbone": "resnet18", "feature_index": -2, "dropout": 0.0}
    )

    def __init__(
        self,
        num_classes: int,
        criterion: nn.Module | None = None,
        backbone: str = "resnet50d",
        pretrained: bool | str = False,
        in_chans: int = 1,
        feature_index: int = -1,
        modalities: int = 5,
        kmax: float = 0.09,
        kmin: float = 0.09,
        alpha: float = 0.6,
        dropout: float = 0.75,
        use_kmin: bool = False,
        sigma: float = 0.5,
        w: float = 8.0,
        classifier_scale: float = 0.5,
        multilabel: bool = True,
        detach_mask: bool = True,
        batch_minmax: bool = True,
        erase_times: int = 0,
        sigma_erase: float = 10.0,
        logits_from: str = "positive",
    ) -> None:
        super().__init__(num_classes, criterion)
        if int(modalities) < 1 or int(modalities) != modalities:
            raise ConfigError(
                f"minmax_entropy modalities must be an integer >= 1, got {modalities}"
            )
        if not (math.isfinite(float(w)) and float(w) > 0):
            raise ConfigError(f"minmax_entropy w must be a finite number > 0, got {w}")
        if not math.isfinite(float(sigma)):
            raise ConfigError(f"minmax_entropy sigma must be finite, got {sigma}")
        if not 0.0 < float(classifier_scale) <= 1.0:
            raise ConfigError(
                f"minmax_entropy classifier_scale must be in (0, 1], got {classifier_scale}"
            )
        if int(erase_times) < 0 or int(erase_times) != erase_times:
            raise ConfigError(
                f"minmax_entropy erase_times must be an integer >= 0, got {erase_times}"
            )
        if not float(sigma_erase) > 0:
            raise ConfigError(f"minmax_entropy sigma_erase must be > 0, got {sigma_erase}")
        if logits_from not in ("positive", "localizer"):
            raise ConfigError(
                f"minmax_entropy logits_from must be 'positive' or 'localizer', got {logits_from!r}"
            )
        self.in_chans = int(in_chans)
        self.modalities = int(modalities)
        self.sigma = float(sigma)
        self.w = float(w)
        self.classifier_scale = float(classifier_scale)
        self.multilabel = bool(multilabel)
        self.detach_mask = bool(detach_mask)
        self.batch_minmax = bool(batch_minmax)
        self.erase_times = int(erase_times)
        self.sigma_erase = float(sigma_erase)
        self.logits_from = logits_from

        self.encoder = build_backbone(
            backbone, self.in_chans, pretrained, (int(feature_index),), None, "minmax_entropy"
        )
        channels = self.encoder.channels[-1]

        def head() -> WildcatHead:
            pool = DropoutWildcatPool(
                kmax=kmax, kmin=kmin, alpha=alpha if use_kmin else 0.0, dropout=dropout
            )
            return WildcatHead(channels, self.num_classes, self.modalities, pool)

        self.localizer = head()  # the code's `headseg`
        self.classifier = head()  # the code's `cl32`

    # ----------------------------------------------------------------------------- forward parts
    def localize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Localizer: images ``[B, C, H, W]`` -> (score_s ``[B, K]``, maps_s ``[B, K, h, w]``)."""
        return self.localizer(self.encoder(x)[-1])

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Classifier scores ``[B, K]`` of images ``[B, C, H, W]`` (resized by classifier_scale)."""
        h, w = x.shape[-2:]
        size = (int(h * self.classifier_scale), int(w * self.classifier_scale))
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.classifier(self.encoder(x)[-1])[0]

    def soft_mask(
        self, scores: torch.Tensor, maps: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        """``R+`` ``[B, 1, H, W]`` from localizer scores ``[B, K]`` and maps ``[B, K, h, w]``.

        ``M+ = Σ_k p_k maps[k]`` (p = sigmoid or softmax of the scores), upsampled bilinearly
        (``align_corners=True``) to ``size`` = (H, W), detached if ``detach_mask``, min-max
        normalised over the batch or per image, then ``sigmoid(w (norm − σ))``.
        """
        scores, maps = scores.float(), maps.float()
        p = torch.sigmoid(scores) if self.multilabel else torch.softmax(scores, dim=1)
        m = torch.einsum("bk,bkhw->bhw", p, maps).unsqueeze(1)
        m = F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=True)
        if self.detach_mask:
            m = m.detach()
        if self.batch_minmax:
            lo, hi = m.amin(), m.amax()
        else:
            lo = m.amin(dim=(1, 2, 3), keepdim=True)
            hi = m.amax(dim=(1, 2, 3), keepdim=True)
        norm = (m - lo) / (hi - lo).clamp_min(1e-12)
        return torch.sigmoid(self.w * (norm - self.sigma))

    def forward(self, x: torch.Tensor) -> MethodOutput:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"minmax_entropy: expected images [B, {self.in_chans}, H, W] "
                f"(in_chans={self.in_chans}), got shape {tuple(x.shape)}"
            )
        scores_s, maps_s = self.localize(x)
        r_pos = self.soft_mask(scores_s, maps_s, x.shape[-2:])
        extras: dict[str, torch.Tensor] = {"localizer_logits": scores_s, "mask": r_pos}
        if self.training and self.erase_times > 0:
            # X± come from the accumulated mask, built in loss() (it needs the labels). As in the
            # reference, the classifier runs only there: a pass here would be thrown away but,
            # in train mode, would still update the encoder's BatchNorm running statistics.
            extras["input"] = x
            return MethodOutput(logits=scores_s, maps=maps_s, extras=extras)
        s_pos = self.classify(x * r_pos)
        s_neg = self.classify(x * (1.0 - r_pos))
        extras.update(positive_logits=s_pos, negative_logits=s_neg)
        logits = s_pos if self.logits_from == "positive" else scores_s
        return MethodOutput(logits=logits, maps=maps_s, extras=extras)

    # ---------------------------------------------------------------------------------- loss
    def _labels(self, targets: torch.Tensor, target_mask: torch.Tensor | None) -> torch.Tensor:
        t = targets.float()
        if target_mask is not None and bool((target_mask == 0).any()):
            rows = (target_mask == 0).any(1).nonzero().flatten().tolist()
            raise ValueError(
                "minmax_entropy with multilabel=False needs every label known; target_mask has "
                f"unknown entries in row(s) {rows}"
            )
        onehot = ((t == 0) | (t == 1)).all(1) & (t.sum(1) == 1)
        if not bool(onehot.all()):
            bad = (~onehot).nonzero().flatten().tolist()
            raise ValueError(
                "minmax_entropy with multilabel=False needs one-hot targets (exactly one positive "
                f"per image); row(s) {bad} are not (use multilabel=True for multi-label data)"
            )
        return t.argmax(1)

    def _per_sample(
        self, scores: torch.Tensor, targets: torch.Tensor, target_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Detached per-sample (loss, correct, p(ŷ)) for the erasing trust rule, each ``[B]``."""
        s = scores.detach().float()
        if not self.multilabel:
            y = self._labels(targets, target_mask)
            p_y, pred = torch.softmax(s, dim=1).max(dim=1)
            return F.cross_entropy(s, y, reduction="none"), (pred == y).float(), p_y
        t = targets.float()
        m = torch.ones_like(t) if target_mask is None else target_mask.float()
        p = torch.sigmoid(s)
        pred = p > 0.5
        ok = ((pred == (t > 0.5)) | (m == 0)).all(dim=1).float()
        p_hat = torch.where(pred, p, 1 - p)
        n = m.sum(1).clamp_min(1.0)
        p_y = (p_hat * m).sum(1) / n
        loss = (F.binary_cross_entropy_with_logits(s, t, reduction="none") * m).sum(1) / n
        return loss, ok, p_y

    def _class_loss(
        self, scores: torch.Tensor, targets: torch.Tensor, target_mask: torch.Tensor | None
    ) -> torch.Tensor:
        if self.multilabel:
            return self.criterion(scores.float(), targets, target_mask)
        return F.cross_entropy(scores.float(), self._labels(targets, target_mask))

    def _max_entropy(self, scores: torch.Tensor) -> torch.Tensor:
        s = scores.float()
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(s, torch.full_like(s, 0.5))
        return -torch.log_softmax(s, dim=1).mean(dim=1).mean()

    def _erase(
        self,
        output: MethodOutput,
        targets: torch.Tensor,
        target_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Recursive erasing: (summed localizer loss, X+ scores, X− scores)."""
        x = output.extras["input"]
        scores = output.extras["localizer_logits"]
        r_pos = output.extras["mask"]
        b = x.shape[0]
        data = x
        history = torch.ones(b, device=x.device)
        m_acc = torch.zeros_like(r_pos)
        loc_loss = x.new_zeros((), dtype=torch.float32)
        first: torch.Tensor | None = None
        rnd = 0
        while True:
            loc_loss = loc_loss + self._class_loss(scores, targets, target_mask)
            loss_i, ok, p_y = self._per_sample(scores, targets, target_mask)
            if first is None:
                first = loss_i
            trust = math.exp(-rnd / self.sigma_erase) * ok * (loss_i <= first).float() * p_y
            history = torch.minimum(ok, history)
            trust = (trust * history).view(b, 1, 1, 1)
            m_acc = torch.maximum(m_acc, trust * r_pos)
            data = torch.where(trust != 0, data * (1.0 - m_acc), data)
            rnd += 1
            if rnd >= self.erase_times or not bool(history.any()):
                break
            scores, maps = self.localize(data)
            r_pos = self.soft_mask(scores, maps, x.shape[-2:])
        s_pos = self.classify(x * m_acc)
        s_neg = self.classify(x * (1.0 - m_acc))
        return loc_loss, s_pos, s_neg

    def loss_terms(
        self,
        output: MethodOutput,
        targets: torch.Tensor,
        target_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The three scalar terms: ``positive`` (fit labels on X+), ``negative`` (max entropy on
        X−) and ``localizer`` (classification loss of ``score_s``; summed over the rounds when
        erasing). Targets float ``[B, K]`` (one-hot when ``multilabel=False``), mask ``[B, K]``.
        """
        ex = output.extras
        if self.training and self.erase_times > 0 and "input" in ex:
            loc, s_pos, s_neg = self._erase(output, targets, target_mask)
            ex.update(positive_logits=s_pos, negative_logits=s_neg)
            if self.logits_from == "positive":
                output.logits = s_pos
        else:
            loc = self._class_loss(ex["localizer_logits"], targets, target_mask)
            s_pos, s_neg = ex["positive_logits"], ex["negative_logits"]
        return {
            "positive": self._class_loss(s_pos, targets, target_mask),
            "negative": self._max_entropy(s_neg),
            "localizer": loc,
        }

    def loss(
        self,
        output: MethodOutput,
        targets: torch.Tensor,
        target_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``positive + negative + localizer`` (weights 1:1:1, see :meth:`loss_terms`)."""
        terms = self.loss_terms(output, targets, target_mask)
        return terms["positive"] + terms["negative"] + terms["localizer"]
