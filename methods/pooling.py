"""Global poolings that turn a class logit map into image-level logits.

Every pooling is an ``nn.Module`` with ONE call signature::

    logits = pool(logit_map, features=None, classifier=None)

* ``logit_map``: float ``[B, K, h, w]``, the class logit map S (one map per class, the output of
  a 1x1 conv classifier on the feature map).
* ``features``: float ``[B, C, h, w]``, the feature map F that produced ``logit_map``. Only
  :class:`PCAMPool` reads it (``needs_features = True``); the others ignore it.
* ``classifier``: the 1x1 ``nn.Conv2d(C, K)`` that produced ``logit_map`` from ``features``.
  Only :class:`PCAMPool` reads it.
* returns float ``[B, K]`` image logits. Each class map is pooled on its own (no mixing across
  classes, no mixing across the batch).

Poolings (registered in :data:`POOLINGS`, built with :func:`create_pooling`):

* ``gap`` :class:`GlobalAvgPool`: spatial mean of S. Because the 1x1 conv is linear this equals
  classifying the spatial mean of the features (the original CAM head).
* ``gmp`` :class:`GlobalMaxPool`: spatial max of S.
* ``lse`` :class:`LSEPool`: log-sum-exp, the formula of Wang et al. 2017 (ChestX-ray14),
  ``x* + (1/r) log(mean_hw exp(r (x - x*)))`` with ``x* = max_hw x``; ``r -> inf`` gives GMP,
  ``r -> 0`` gives GAP.

Pooling order. Called as above, a pooling pools the class *logit map* S. The methods also offer
the other order (``pool_on="features"`` of :class:`~lesionsweep.methods.cam.CAM`, see
:func:`pool_logits`): pool each channel of the *feature map* F to ``z`` ``[B, C]`` (a pooling
reduces any ``[B, X, h, w]`` to ``[B, X]``), then apply the 1x1 classifier,
``y = W z + b``. That is the authors' order for LSE: Wang et al.'s network pools the features
(a transition layer, then LSE, then the prediction layer) and so does the PCAM repository's
``LSEPool`` (jfhealthcare/Chexpert, ``lse_gamma = 0.5``) and its ``MAX`` pooling. For GAP the two
orders are equal (the classifier is linear); for GMP, LSE and WILDCAT they are not. PCAM pools
the features by construction and has one order only.
* ``pcam`` :class:`PCAMPool`: probabilistic CAM pooling (Ye et al. 2020, methods.md section 2.1).
  Per class k, ``P = sigmoid(S_k)``, ``W = P / sum_hw P`` (no epsilon, not detached),
  ``z_k = sum_hw W * F`` (a probability-weighted feature average, ``[B, C]``), optional
  batch-norm and dropout on ``z_k``, then the SAME 1x1 classifier gives the image logit
  ``y_k = w_k . z_k + b_k``. With ``fc_bn=False`` and ``fc_drop=0`` this is exactly
  ``y_k = sum_hw W * S_k``.
* ``wildcat`` :class:`WildcatPool`: WILDCAT (Durand et al., CVPR 2017) spatial pooling: mean of
  the top ``kmax`` values + ``alpha`` * mean of the bottom ``kmin`` values of each map (the
  paper's formula). ``k < 1`` is a fraction of ``h*w`` (``round(k*h*w)``, at least 1 for kmax),
  ``k >= 1`` a count (clipped to ``h*w``). ``halve=True`` is the reference code's variant
  (durandtibo/wildcat.pytorch ``WildcatPool2dFunction``): when the kmin term is active the sum is
  divided by 2, ``(top mean + alpha * bottom mean) / 2``; the default ``halve=False`` is the
  paper's formula.
"""

from __future__ import annotations

import inspect
import math
from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from lesionsweep.errors import ConfigError
from torch import nn

from .registry import Registry

__all__ = [
    "Pooling",
    "GlobalAvgPool",
    "GlobalMaxPool",
    "LSEPool",
    "PCAMPool",
    "WildcatPool",
    "POOL_ON",
    "pool_logits",
    "POOLINGS",
    "PoolingName",
    "pooling_names",
    "pooling_params",
    "create_pooling",
]


def _check_map(logit_map: torch.Tensor) -> None:
    if logit_map.dim() != 4:
        raise ValueError(
            f"pooling expects a class logit map [B, K, h, w], got shape {tuple(logit_map.shape)}"
        )


class Pooling(nn.Module):
    """Base class: ``forward(logit_map [B,K,h,w], features=None, classifier=None) -> [B,K]``."""

    #: True when the pooling reads ``features`` and ``classifier`` (PCAM)
    needs_features: ClassVar[bool] = False

    def forward(
        self,
        logit_map: torch.Tensor,
        features: torch.Tensor | None = None,
        classifier: nn.Module | None = None,
    ) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class GlobalAvgPool(Pooling):
    """Spatial mean of each class map: ``[B, K, h, w] -> [B, K]``."""

    def forward(
        self,
        logit_map: torch.Tensor,
        features: torch.Tensor | None = None,
        classifier: nn.Module | None = None,
    ) -> torch.Tensor:
        _check_map(logit_map)
        return logit_map.mean(dim=(2, 3))


class GlobalMaxPool(Pooling):
    """Spatial max of each class map: ``[B, K, h, w] -> [B, K]``."""

    def forward(
        self,
        logit_map: torch.Tensor,
        features: torch.Tensor | None = None,
        classifier: nn.Module | None = None,
    ) -> torch.Tensor:
        _check_map(logit_map)
        return logit_map.flatten(2).amax(dim=2)


class LSEPool(Pooling):
    """Log-sum-exp pooling of each class map (Wang et al. 2017): ``[B, K, h, w] -> [B, K]``.

    ``x* + (1/r) log(mean_hw exp(r (x - x*)))``, computed as
    ``x* + log1p(mean(expm1(r (x - x*)))) / r`` so that it stays accurate for small ``r``
    (where it tends to the mean) and large ``r`` (where it tends to the max).

    Args:
        r: sharpness, > 0.
    """

    def __init__(self, r: float = 10.0) -> None:
        super().__init__()
        r = float(r)
        if not (r > 0 and math.isfinite(r)):
            raise ConfigError(f"LSE pooling r must be a finite number > 0, got {r!r}")
        self.r = r

    def forward(
        self,
        logit_map: torch.Tensor,
        features: torch.Tensor | None = None,
        classifier: nn.Module | None = None,
    ) -> torch.Tensor:
        _check_map(logit_map)
        x = logit_map.flatten(2)
        x_star = x.amax(dim=2, keepdim=True)
        inner = torch.expm1(self.r * (x - x_star)).mean(dim=2)
        return x_star.squeeze(2) + torch.log1p(inner) / self.r

    def extra_repr(self) -> str:
        return f"r={self.r}"


class PCAMPool(Pooling):
    """Probabilistic-CAM pooling (Ye et al. 2020): see the module docstring.

    Inputs: ``logit_map`` S ``[B, K, h, w]``, ``features`` F ``[B, C, h, w]`` and the 1x1
    ``classifier`` (``nn.Conv2d(C, K, 1)``) with ``S = classifier(F)``. Output ``[B, K]``.

    Args:
        fc_bn: batch-norm on each class's pooled feature vector ``z_k`` (PCAM's per-task
            ``BatchNorm2d(C)``; implemented as one ``BatchNorm1d(K*C)``, the same statistics).
        fc_drop: dropout probability on ``z_k`` (in [0, 1)).
        num_features: C, needed only when ``fc_bn`` is on.
        num_classes: K, needed only when ``fc_bn`` is on.
    """

    needs_features: ClassVar[bool] = True

    def __init__(
        self,
        fc_bn: bool = False,
        fc_drop: float = 0.0,
        num_features: int | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= float(fc_drop) < 1.0:
            raise ConfigError(f"PCAM pooling fc_drop must be in [0, 1), got {fc_drop!r}")
        self.fc_drop = float(fc_drop)
        self.bn: nn.BatchNorm1d | None = None
        if fc_bn:
            if not num_features or not num_classes:
                raise ConfigError(
                    "PCAM pooling with fc_bn=True needs num_features (C) and num_classes (K), "
                    f"got num_features={num_features!r}, num_classes={num_classes!r}"
                )
            self.bn = nn.BatchNorm1d(int(num_features) * int(num_classes))

    def forward(
        self,
        logit_map: torch.Tensor,
        features: torch.Tensor | None = None,
        classifier: nn.Module | None = None,
    ) -> torch.Tensor:
        _check_map(logit_map)
        if features is None or not isinstance(classifier, nn.Conv2d):
            raise ValueError(
                "PCAM pooling needs `features` [B, C, h, w] and the 1x1 nn.Conv2d `classifier` "
                "that produced the logit map"
            )
        b, k, h, w = logit_map.shape
        if features.shape[0] != b or features.shape[2:] != logit_map.shape[2:]:
            raise ValueError(
                f"PCAM pooling: features {tuple(features.shape)} and logit map "
                f"{tuple(logit_map.shape)} differ in batch or spatial size"
            )
        prob = torch.sigmoid(logit_map).flatten(2)  # [B, K, hw]
        weights = prob / prob.sum(dim=2, keepdim=True)  # no epsilon, not detached (as PCAM)
        z = torch.einsum("bkn,bcn->bkc", weights, features.flatten(2))  # [B, K, C]
        if self.bn is not None:
            z = self.bn(z.reshape(b, -1)).reshape(b, k, -1)
        if self.fc_drop > 0:
            z = F.dropout(z, p=self.fc_drop, training=self.training)
        weight = classifier.weight.reshape(classifier.out_channels, -1)  # [K, C]
        logits = torch.einsum("bkc,kc->bk", z, weight)
        if classifier.bias is not None:
            logits = logits + classifier.bias
        return logits

    def extra_repr(self) -> str:
        return f"fc_bn={self.bn is not None}, fc_drop={self.fc_drop}"


class WildcatPool(Pooling):
    """WILDCAT spatial pooling (Durand et al. 2017): ``[B, K, h, w] -> [B, K]``.

    ``s = mean(top-kmax values) + alpha * mean(bottom-kmin values)`` per class map.

    With ``halve=True`` (Durand's code) the sum is divided by 2 whenever the bottom term is active
    (``kmin`` selects at least one value and ``alpha != 0``); otherwise it is left as it is.

    Args:
        kmax: fraction of ``h*w`` if < 1 (``round(kmax*h*w)``, at least 1), else a count (> 0).
        kmin: same convention; 0 disables the bottom term.
        alpha: weight of the bottom term; 0 disables it.
        halve: divide by 2 when the bottom term is active (code) instead of the paper's sum.
    """

    def __init__(
        self, kmax: float = 0.1, kmin: float = 0.0, alpha: float = 0.0, halve: bool = False
    ) -> None:
        super().__init__()
        if not float(kmax) > 0:
            raise ConfigError(f"WILDCAT kmax must be > 0 (fraction < 1 or count >= 1), got {kmax}")
        if float(kmin) < 0:
            raise ConfigError(f"WILDCAT kmin must be >= 0 (fraction < 1 or count >= 1), got {kmin}")
        for nm, v in (("kmax", kmax), ("kmin", kmin)):
            if float(v) >= 1 and float(v) != int(v):
                raise ConfigError(f"WILDCAT {nm} >= 1 is a count and must be whole, got {v}")
        self.kmax = float(kmax)
        self.kmin = float(kmin)
        self.alpha = float(alpha)
        self.halve = bool(halve)

    @staticmethod
    def _count(k: float, n: int) -> int:
        if k <= 0:
            return 0
        if k < 1:
            return int(round(k * n))
        return min(int(k), n)

    def forward(
        self,
        logit_map: torch.Tensor,
        features: torch.Tensor | None = None,
        classifier: nn.Module | None = None,
    ) -> torch.Tensor:
        _check_map(logit_map)
        x = logit_map.flatten(2)
        n = x.shape[2]
        kmax = max(1, self._count(self.kmax, n))
        out = x.topk(kmax, dim=2, largest=True, sorted=False).values.mean(dim=2)
        kmin = self._count(self.kmin, n)
        if kmin > 0 and self.alpha != 0:
            low = x.topk(kmin, dim=2, largest=False, sorted=False).values.mean(dim=2)
            out = out + self.alpha * low
            if self.halve:
                out = out / 2
        return out

    def extra_repr(self) -> str:
        return f"kmax={self.kmax}, kmin={self.kmin}, alpha={self.alpha}, halve={self.halve}"


#: the pooling orders: ``"map"`` pools the class logit map S, ``"features"`` pools the feature
#: map F and then classifies (:func:`pool_logits`)
POOL_ON: tuple[str, ...] = ("map", "features")


def pool_logits(
    pool: Pooling,
    pool_on: str,
    features: torch.Tensor,
    logit_map: torch.Tensor,
    classifier: nn.Conv2d,
) -> torch.Tensor:
    """Image logits ``[B, K]`` of a 1x1-conv head in either pooling order.

    Args:
        pool: the pooling.
        pool_on: ``"map"``: ``pool(S)`` (``S = classifier(F)``, ``[B, K, h, w]``);
            ``"features"``: ``W pool(F) + b`` with ``pool(F)`` ``[B, C]`` and the classifier's
            weight ``W`` ``[K, C]`` and bias ``b`` ``[K]`` (not for PCAM, which reads both).
        features: F, float ``[B, C, h, w]``.
        logit_map: S, float ``[B, K, h, w]``.
        classifier: the 1x1 ``nn.Conv2d(C, K)`` with ``S = classifier(F)``.
    """
    if pool_on == "map":
        return pool(logit_map, features=features, classifier=classifier)
    if pool_on != "features" or pool.needs_features:
        raise ValueError(f"pool_on={pool_on!r} with {type(pool).__name__}")
    z = pool(features)  # [B, C]
    weight = classifier.weight.reshape(classifier.out_channels, -1)  # [K, C]
    out = z @ weight.t().to(z.dtype)
    if classifier.bias is not None:
        out = out + classifier.bias.to(z.dtype)
    return out


#: the pooling registry (see :class:`~lesionsweep.methods.registry.Registry` for its contract);
#: also the enumeration of a method's ``pooling`` argument (``Annotated[str, POOLINGS]``)
POOLINGS: Registry[Pooling] = Registry("pooling", base=Pooling)
POOLINGS.add("gap", GlobalAvgPool)
POOLINGS.add("gmp", GlobalMaxPool)
POOLINGS.add("lse", LSEPool)
POOLINGS.add("pcam", PCAMPool)
POOLINGS.add("wildcat", WildcatPool)

#: annotation of a method argument that names a pooling: the config layer accepts exactly the
#: registered names
PoolingName = Annotated[str, POOLINGS]


def pooling_names() -> list[str]:
    """Sorted pooling names."""
    return POOLINGS.names()


def pooling_params(name: str) -> dict[str, inspect.Parameter]:
    """Constructor parameters of a pooling; an unknown name raises :class:`ConfigError`."""
    return POOLINGS.params(name)


def create_pooling(name: str, **kwargs: Any) -> Pooling:
    """Build a pooling by name.

    Raises:
        ConfigError: unknown ``name`` (the message lists the allowed names) or a bad value.
        TypeError: unknown keyword argument (the message lists the allowed ones).
    """
    return POOLINGS.create(name, **kwargs)
