"""Class maps of a GAP classifier: plain CAM, Grad-CAM and Grad-CAM++ (as Viniavskyi et al.).

All functions work on the classifier's last feature map ``A`` (float ``[B, C, h, w]``, the input of
global average pooling) and a linear head. Rows and columns are feature-map pixels; a map is
upsampled to the image with ``align_corners=False`` bilinear interpolation by the caller.

* **CAM**: ``M_k = sum_c W[k, c] * A_c`` (bias left out, as ``ucuapps/WSMIS`` ``cam.py``).
* **Grad-CAM**: ``w_c = mean_hw(g_c)`` with ``g = d logit_k / dA``; ``M_k = sum_c w_c A_c``.
* **Grad-CAM++** as the authors' ``CamGradPlusPlus`` computes it (methods.md section 4.1): the
  target is ``exp(logit_k)``, ``g = d exp(logit_k) / dA``,
  ``alpha = g**2 / (2 g**2 + sum_hw(g**3 * A) + 1e-8)`` (the spatial sum runs over the elementwise
  product ``g**3 * A``, per channel), ``w_c = sum_hw(alpha * relu(g))`` and
  ``M_k = sum_c w_c A_c``. ``g`` is formed as ``exp(logit_k) * d logit_k / dA`` in float64 so a
  large logit does not overflow float32.

:func:`normalize_maps` then applies ReLU and divides each map by its spatial maximum (IRNet's
``make_cam.py`` adds 1e-5 to the maximum; we do not, so the result does not depend on the map's
scale), giving scores in ``[0, 1]`` that the thresholds
(``cam_threshold``, ``conf_fg``, ``conf_bg``) are read against. The authors' ``cam.py`` uses a
min-max normalisation instead; after ReLU the minimum of a map is almost always 0, so the two agree
except for maps that are positive everywhere.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "CAM_KINDS",
    "plain_cam",
    "grad_cam_weights",
    "grad_cam_pp_weights",
    "weighted_maps",
    "normalize_maps",
    "class_maps",
]

CAM_KINDS = ("cam", "gradcam", "gradcam++")


def plain_cam(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Plain CAM.

    Args:
        features: float ``[B, C, h, w]`` feature map ``A``.
        weight: float ``[K, C]`` linear head weights.

    Returns:
        float ``[B, K, h, w]`` maps ``sum_c W[k, c] A_c`` (not normalised).
    """
    return torch.einsum("bchw,kc->bkhw", features, weight.to(features.dtype))


def grad_cam_weights(grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM channel weights ``mean_hw(g)``: ``[B, C, h, w]`` -> ``[B, C]``."""
    return grads.mean(dim=(2, 3))


def grad_cam_pp_weights(
    features: torch.Tensor, grads: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Grad-CAM++ channel weights exactly as the authors compute them.

    Args:
        features: ``A``, float ``[B, C, h, w]``.
        grads: ``g = d exp(logit) / dA``, float ``[B, C, h, w]``.
        eps: the authors' ``gamma`` in the denominator.

    Returns:
        ``[B, C]``: ``sum_hw(alpha * relu(g))`` with
        ``alpha = g**2 / (2 g**2 + sum_hw(g**3 * A) + eps)``.
    """
    g2 = grads * grads
    g3 = g2 * grads
    denom = 2.0 * g2 + (g3 * features).sum(dim=(2, 3), keepdim=True) + eps
    alpha = g2 / denom
    return (alpha * torch.relu(grads)).sum(dim=(2, 3))


def weighted_maps(features: torch.Tensor, channel_weights: torch.Tensor) -> torch.Tensor:
    """``sum_c w[b, c] A[b, c]``: features ``[B, C, h, w]``, weights ``[B, C]`` -> ``[B, h, w]``."""
    return torch.einsum("bchw,bc->bhw", features, channel_weights.to(features.dtype))


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """ReLU, then divide every ``[h, w]`` map by its maximum; any ``[..., h, w]`` shape.

    Scale-free (no additive epsilon, so Grad-CAM's and CAM's maps, which differ by a constant
    factor for a GAP head, normalise identically); a map with no positive value becomes all 0.
    """
    m = torch.relu(maps)
    return m / m.amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(m.dtype).tiny)


def class_maps(
    features: torch.Tensor, logits: torch.Tensor, weight: torch.Tensor, kind: str
) -> torch.Tensor:
    """Class maps for every class of a GAP + linear classifier.

    Args:
        features: ``A``, float ``[B, C, h, w]``; for ``gradcam``/``gradcam++`` it must be part of
            the autograd graph of ``logits`` (computed under ``torch.enable_grad()``).
        logits: float ``[B, K]`` image logits computed from ``features``.
        weight: float ``[K, C]`` head weights (used by ``cam``).
        kind: ``cam``, ``gradcam`` or ``gradcam++``.

    Returns:
        float32 ``[B, K, h, w]`` raw maps (before :func:`normalize_maps`), detached.
    """
    if kind == "cam":
        return plain_cam(features.detach(), weight.detach()).float()
    if kind not in CAM_KINDS:
        raise ValueError(f"unknown cam_kind {kind!r}; allowed: {', '.join(CAM_KINDS)}")
    if not features.requires_grad:
        raise ValueError(f"cam_kind {kind!r} needs features inside the autograd graph of logits")
    out = []
    a64 = features.detach().double()
    for k in range(logits.shape[1]):
        # each image's logit depends only on its own features: one backward for the batch
        (d_logit,) = torch.autograd.grad(logits[:, k].sum(), features, retain_graph=True)
        d_logit = d_logit.double()
        if kind == "gradcam":
            w = grad_cam_weights(d_logit)
        else:
            scale = torch.exp(logits[:, k].detach().double())[:, None, None, None]
            w = grad_cam_pp_weights(a64, scale * d_logit)
        out.append(weighted_maps(a64, w).float())
    return torch.stack(out, dim=1)


def head_weight(head: nn.Module) -> torch.Tensor:
    """``[K, C]`` weight of a ``nn.Linear`` or 1x1 ``nn.Conv2d`` head."""
    w: torch.Tensor = head.weight  # type: ignore[assignment]  # nn.Module.__getattr__ is untyped
    return w.reshape(w.shape[0], -1)
