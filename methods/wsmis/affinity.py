"""Inter-pixel relations for IRNet (Ahn et al. 2019) as used by Viniavskyi et al.

Everything here works on a *grid*: the IRNet resolution, 1/4 of the input image. A grid pixel
``p = (row, col)`` has the flat index ``row * w + col``; offsets are ``(dy, dx)`` in grid pixels
(``dy`` down, ``dx`` right).

Pairs (:class:`PairIndex`, the role of IRNet's ``PathIndex``)
    A pixel is paired with every pixel at an offset ``o`` with ``0 < |o|^2 < radius^2``. The
    training set of offsets is a half disk (``dy > 0``, or ``dy == 0`` and ``dx > 0``) so each
    unordered pair appears once; the random walk uses the full disk. The *path* of an offset is
    the set of grid pixels ``q`` inside the bounding box of the segment ``0 -> o`` whose distance
    to the line through ``0`` and ``o`` is below 1 (a 2-3 pixel wide band, so a one-pixel
    diagonal boundary cannot be slipped through). The path of ``-o`` is the path of ``o``
    shifted by ``-o``, which makes affinities exactly symmetric. Instead of IRNet's cropped index
    lists, every lookup goes through ``F.unfold`` over a map padded by ``reach = radius - 1``, so
    pairs leaving the grid are simply marked invalid (training) or get affinity 0 (random walk);
    no crop of the border is needed, which matters on small images.

Affinity, losses (methods.md section 4.1)
    ``aff(p, p+o) = 1 - max_{q in path(o)} B(p + q)`` with ``B`` the class-boundary probability
    (outside the grid ``B = 1``).
    ``L_pos = mean_bg(-log(aff + 1e-5)) / 2 + mean_fg(-log(aff + 1e-5)) / 2``,
    ``L_neg = mean_neg(-log(1 + 1e-5 - aff))``,
    ``L_dp_fg = sum_fg |D(p) - D(p+o) - o|_1 / (2 n_fg)``, ``L_dp_bg = sum_bg |D(p) - D(p+o)|_1
    / (2 n_bg)`` and ``L = (L_pos + L_neg) / 2 + (L_dp_fg + L_dp_bg) / 2``; every mean divides by
    ``count + 1e-5`` as the reference code. ``D`` is the displacement field ``[B, 2, h, w]``
    (channel 0 = rows, 1 = columns); the loss makes ``p + D(p)`` the centroid of ``p``'s region.

Pair labels
    From a label map (0 = background, ``k + 1`` = class ``k``, 255 = ignore): a pair is valid when
    both ends are inside the grid and neither is 255; positive-background when both are 0,
    positive-foreground when both carry the same class, negative when they differ.

Random walk (:func:`random_walk`)
    ``A_ij = aff(i, j)^beta`` for pixels within the radius, ``A_ii = 1``; ``T = A`` divided by its
    column sums; ``rw = (s * (1 - B)) T^(2^exp_times)`` for every class score map ``s`` (row
    vector over grid pixels). ``method="dense"`` builds ``T`` and squares it ``exp_times`` times
    (IRNet's ``propagate_to_edge``); ``method="sparse"`` applies the same ``T`` ``2^exp_times``
    times as a sparse (CSR, block-diagonal over the batch) matrix-vector product, never forming
    the ``N x N`` matrix (identical up to float rounding: ``x T^(2^t)`` either way, and far
    cheaper for grids above a few hundred pixels); ``"auto"`` picks the one with fewer
    multiply-adds.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "IGNORE",
    "PairIndex",
    "path_affinity",
    "pair_labels",
    "affinity_loss",
    "AffinityLossTerms",
    "random_walk",
    "ir_labels_from_cams",
    "masks_from_random_walk",
]

IGNORE = 255


def _half_disk(radius: int) -> list[tuple[int, int]]:
    out = []
    for dy in range(0, radius):
        for dx in range(-radius + 1, radius):
            if (dy > 0 or dx > 0) and dy * dy + dx * dx < radius * radius:
                out.append((dy, dx))
    return out


def _path(dy: int, dx: int) -> list[tuple[int, int]]:
    """Grid pixels of the band of width 2 around the segment (0, 0) -> (dy, dx)."""
    ys = np.arange(min(0, dy), max(0, dy) + 1)
    xs = np.arange(min(0, dx), max(0, dx) + 1)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    dist_sq = (dy * xx - dx * yy) ** 2 / float(dy * dy + dx * dx)
    keep = dist_sq < 1.0
    return [(int(y), int(x)) for y, x in zip(yy[keep], xx[keep], strict=True)]


@dataclass(frozen=True)
class PairIndex:
    """Offsets and paths for pairs within ``radius`` grid pixels.

    Attributes:
        radius: pairs satisfy ``0 < dy^2 + dx^2 < radius^2`` (``radius >= 2``).
        full: full disk (random walk) instead of the half disk (training pairs).
        offsets: int64 ``[O, 2]`` ``(dy, dx)`` per offset.
        channels: int64 ``[O]`` unfold channel of each offset's end pixel.
        paths: int64 ``[O, L]`` unfold channels of each offset's path, padded by repeating
            the start pixel (channel of offset ``(0, 0)``).
        reach: padding used by the unfold lookups (``radius - 1``).
    """

    radius: int
    full: bool
    offsets: torch.Tensor
    channels: torch.Tensor
    paths: torch.Tensor
    reach: int

    @classmethod
    def build(cls, radius: int, full: bool = False) -> PairIndex:
        radius = int(radius)
        if radius < 2:
            raise ValueError(f"pair radius must be >= 2 grid pixels, got {radius}")
        reach = radius - 1
        k = 2 * reach + 1
        half = _half_disk(radius)
        offs: list[tuple[int, int]] = []
        paths: list[list[tuple[int, int]]] = []
        for dy, dx in half:
            offs.append((dy, dx))
            paths.append(_path(dy, dx))
        if full:
            for dy, dx in half:
                offs.append((-dy, -dx))
                paths.append([(qy - dy, qx - dx) for qy, qx in _path(dy, dx)])

        def ch(q: tuple[int, int]) -> int:
            return (q[0] + reach) * k + (q[1] + reach)

        length = max(len(p) for p in paths)
        start = ch((0, 0))
        path_ch = [[ch(q) for q in p] + [start] * (length - len(p)) for p in paths]
        return cls(
            radius=radius,
            full=full,
            offsets=torch.tensor(offs, dtype=torch.long),
            channels=torch.tensor([ch(o) for o in offs], dtype=torch.long),
            paths=torch.tensor(path_ch, dtype=torch.long),
            reach=reach,
        )

    @property
    def num_offsets(self) -> int:
        return int(self.offsets.shape[0])

    def unfold(self, x: torch.Tensor, pad_value: float) -> torch.Tensor:
        """Neighbourhoods of ``x`` ``[B, C, h, w]`` -> ``[B, C, (2 reach + 1)^2, h * w]``."""
        b, c, h, w = x.shape
        r = self.reach
        xp = F.pad(x, (r, r, r, r), value=pad_value)
        return F.unfold(xp, kernel_size=2 * r + 1).view(b, c, (2 * r + 1) ** 2, h * w)

    def valid(self, h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
        """bool ``[O, h * w]``: the pair's end pixel lies inside an ``h x w`` grid."""
        ones = torch.ones(1, 1, h, w, device=device)
        return self.unfold(ones, 0.0)[0, 0, self.channels.to(ones.device)] > 0.5


def path_affinity(boundary: torch.Tensor, index: PairIndex) -> torch.Tensor:
    """``aff(p, p+o) = 1 - max_{q in path(o)} B(p+q)`` for every grid pixel and offset.

    Args:
        boundary: boundary probabilities in ``[0, 1]``, float ``[B, h, w]`` or ``[B, 1, h, w]``.
        index: the offsets (half disk for training, full disk for the random walk).

    Returns:
        float ``[B, O, h, w]``; pairs whose end leaves the grid get 0 (outside counts as boundary).
    """
    if boundary.dim() == 3:
        boundary = boundary[:, None]
    b, _, h, w = boundary.shape
    u = index.unfold(boundary, pad_value=1.0)[:, 0]  # [B, K2, N]
    paths = index.paths.to(boundary.device)
    m = u[:, paths[:, 0]]
    for col in range(1, paths.shape[1]):
        m = torch.maximum(m, u[:, paths[:, col]])
    return (1.0 - m).view(b, index.num_offsets, h, w)


def pair_labels(
    labels: torch.Tensor, index: PairIndex
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Affinity labels of every pair.

    Args:
        labels: int ``[B, h, w]`` grid labels: 0 background, ``k + 1`` class ``k``, 255 ignore.
        index: training offsets.

    Returns:
        ``(bg_pos, fg_pos, neg)``, each float32 0/1 ``[B, O, h, w]`` (pair starts at ``p``).
    """
    b, h, w = labels.shape
    lab = labels.float()[:, None]
    dst = index.unfold(lab, pad_value=float(IGNORE))[:, 0][:, index.channels.to(labels.device)]
    src = lab.view(b, 1, h * w)
    valid = (src != IGNORE) & (dst != IGNORE)
    same = src == dst
    bg = (valid & same & (src == 0)).float().view(b, -1, h, w)
    fg = (valid & same & (src > 0)).float().view(b, -1, h, w)
    neg = (valid & ~same).float().view(b, -1, h, w)
    return bg, fg, neg


def displacement_differences(disp: torch.Tensor, index: PairIndex) -> torch.Tensor:
    """``D(p) - D(p+o)`` for a displacement field ``[B, 2, h, w]`` -> ``[B, 2, O, h, w]``."""
    b, c, h, w = disp.shape
    dst = index.unfold(disp, pad_value=0.0)[:, :, index.channels.to(disp.device)]
    return (disp.view(b, c, 1, h * w) - dst).view(b, c, index.num_offsets, h, w)


@dataclass
class AffinityLossTerms:
    """The four IRNet loss terms and their total (scalars)."""

    pos: torch.Tensor
    neg: torch.Tensor
    dp_fg: torch.Tensor
    dp_bg: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return (self.pos + self.neg) / 2 + (self.dp_fg + self.dp_bg) / 2


def affinity_loss(
    boundary: torch.Tensor,
    disp: torch.Tensor | None,
    labels: torch.Tensor,
    index: PairIndex,
) -> AffinityLossTerms:
    """IRNet's affinity and displacement losses (module docstring).

    Args:
        boundary: boundary probabilities (after the sigmoid), float ``[B, h, w]``.
        disp: displacement field float ``[B, 2, h, w]`` or ``None`` (terms become 0).
        labels: int ``[B, h, w]`` grid labels (0 / ``k+1`` / 255).
        index: training offsets (half disk).
    """
    aff = path_affinity(boundary, index)
    bg, fg, neg = pair_labels(labels, index)
    eps = 1e-5
    pos_bg = (-bg * torch.log(aff + eps)).sum() / (bg.sum() + eps)
    pos_fg = (-fg * torch.log(aff + eps)).sum() / (fg.sum() + eps)
    neg_l = (-neg * torch.log(1.0 + eps - aff)).sum() / (neg.sum() + eps)
    if disp is None:
        zero = aff.new_zeros(())
        return AffinityLossTerms(pos_bg / 2 + pos_fg / 2, neg_l, zero, zero)
    dd = displacement_differences(disp, index)  # [B, 2, O, h, w]
    target = index.offsets.to(disp.device, disp.dtype).t()[None, :, :, None, None]
    dp_fg = ((dd - target).abs() * fg[:, None]).sum() / (2 * fg.sum() + eps)
    dp_bg = (dd.abs() * bg[:, None]).sum() / (2 * bg.sum() + eps)
    return AffinityLossTerms(pos_bg / 2 + pos_fg / 2, neg_l, dp_fg, dp_bg)


def _neighbour_weights(boundary: torch.Tensor, index: PairIndex, beta: float) -> torch.Tensor:
    """Column-normalised transition weights over the full disk plus the pixel itself.

    Returns ``[B, O + 1, N]``: ``[:, o, j]`` is ``T[j+o, j]`` (the last row is ``T[j, j]``);
    neighbours outside the grid have weight 0.
    """
    b, h, w = boundary.shape
    aff = path_affinity(boundary, index).clamp_min(0.0).pow(beta).view(b, index.num_offsets, h * w)
    self_w = torch.ones(b, 1, h * w, device=aff.device, dtype=aff.dtype)
    a = torch.cat([aff, self_w], dim=1)
    return a / a.sum(dim=1, keepdim=True)


def random_walk(
    scores: torch.Tensor,
    boundary: torch.Tensor,
    beta: float = 10.0,
    exp_times: int = 8,
    radius: int = 5,
    method: str = "auto",
) -> torch.Tensor:
    """Propagate class scores with the boundary-aware transition matrix (module docstring).

    Args:
        scores: float ``[B, K, h, w]`` class score maps on the grid (normalised CAMs).
        boundary: float ``[B, h, w]`` boundary probabilities in ``[0, 1]``.
        beta: affinity exponent.
        exp_times: ``T`` is applied ``2 ** exp_times`` times.
        radius: pair radius of the transition matrix (grid pixels, >= 2).
        method: ``dense``, ``sparse`` or ``auto``.

    Returns:
        float32 ``[B, K, h, w]`` propagated scores (not normalised).
    """
    if method not in ("dense", "sparse", "auto"):
        raise ValueError(f"random_walk method must be dense, sparse or auto, got {method!r}")
    if exp_times < 0:
        raise ValueError(f"exp_times must be >= 0, got {exp_times}")
    scores = scores.float()
    boundary = boundary.float()
    if boundary.dim() == 4:
        boundary = boundary[:, 0]
    b, k, h, w = scores.shape
    n = h * w
    index = PairIndex.build(radius, full=True)
    x = (scores * (1.0 - boundary)[:, None]).reshape(b, k, n)
    weights = _neighbour_weights(boundary, index, beta)  # [B, O+1, N]
    if method == "auto":
        dense_cost = exp_times * float(n) ** 3
        sparse_cost = float(2**exp_times) * n * weights.shape[1] * k
        method = "dense" if dense_cost < sparse_cost else "sparse"
    if method == "dense":
        t = _dense_transition(weights, index, h, w)
        for _ in range(exp_times):
            t = torch.bmm(t, t)
        return torch.bmm(x, t).view(b, k, h, w)
    m = _sparse_step_matrix(weights, index, h, w)
    y = x.permute(0, 2, 1).reshape(b * n, k)
    for _ in range(2**exp_times):
        y = m @ y
    return y.view(b, n, k).permute(0, 2, 1).reshape(b, k, h, w)


def _neighbours(index: PairIndex, h: int, w: int, device: torch.device) -> tuple[Any, Any]:
    """Flat index of ``p + o`` ``[O+1, N]`` (offsets then the pixel itself) and its validity."""
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    offs = torch.cat([index.offsets, torch.zeros(1, 2, dtype=torch.long)]).to(device)
    ti = rows[None] + offs[:, :1]
    tj = cols[None] + offs[:, 1:]
    inside = (ti >= 0) & (ti < h) & (tj >= 0) & (tj < w)
    return (ti * w + tj).clamp(0, h * w - 1), inside


def _sparse_step_matrix(weights: torch.Tensor, index: PairIndex, h: int, w: int) -> torch.Tensor:
    """Block-diagonal CSR ``M`` ``[B*N, B*N]``, ``M[j, i] = T[i, j]`` (one step: ``y = M x``)."""
    b, o1, n = weights.shape
    dev = weights.device
    src, inside = _neighbours(index, h, w, dev)  # [O+1, N]
    # row j (destination) lists its neighbours i = j + o
    valid = inside.t()[None].expand(b, n, o1)  # [B, N, O+1]
    cols = (src.t()[None] + (torch.arange(b, device=dev) * n)[:, None, None])[valid]
    vals = weights.permute(0, 2, 1)[valid]
    counts = valid.reshape(b * n, o1).sum(1)
    crow = torch.zeros(b * n + 1, dtype=torch.long, device=dev)
    crow[1:] = torch.cumsum(counts, 0)
    with warnings.catch_warnings():  # "CSR support is in beta" / invariant-check notices
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            crow, cols, vals, size=(b * n, b * n), check_invariants=False
        )


def _dense_transition(weights: torch.Tensor, index: PairIndex, h: int, w: int) -> torch.Tensor:
    """Dense ``T`` ``[B, N, N]`` (``T[i, j]``, columns sum to 1) from neighbour weights."""
    b, o1, n = weights.shape
    dev = weights.device
    src, inside = _neighbours(index, h, w, dev)  # [O+1, N]
    dst = torch.arange(n, device=dev)[None].expand(o1, n)
    flat = (src * n + dst)[inside]  # T[src, dst]
    t = torch.zeros(b, n * n, device=dev, dtype=weights.dtype)
    t.index_put_((torch.arange(b, device=dev)[:, None], flat[None]), weights[:, inside], True)
    return t.view(b, n, n)


def ir_labels_from_cams(
    cams: torch.Tensor,
    labels: torch.Tensor,
    mode: str,
    conf_fg: float = 0.30,
    conf_bg: float = 0.05,
    cam_threshold: float = 0.20,
) -> torch.Tensor:
    """IRNet training labels on the grid from normalised CAMs.

    Args:
        cams: float ``[B, K, h, w]`` CAMs in ``[0, 1]`` (after ``normalize_maps``).
        labels: float/bool ``[B, K]`` image labels; absent classes are ignored.
        mode: ``confident``: class ``argmax + 1`` where the largest present-class score is
            ``> conf_fg``, background where it is ``<= conf_bg``, 255 (ignore) in between (the
            IRNet paper, without the dense CRF). ``raw``: class where the score is
            ``> cam_threshold``, background elsewhere, no ignore band (the authors' pneumothorax
            code trains IRNet on these masks).

    Returns:
        int64 ``[B, h, w]`` with 0 = background, ``k + 1`` = class ``k``, 255 = ignore.
    """
    present = (labels > 0.5).to(cams.dtype)[:, :, None, None]
    mx, arg = (cams * present).max(dim=1)
    fg = arg + 1
    if mode == "confident":
        if not conf_bg < conf_fg:
            raise ValueError(f"conf_bg ({conf_bg}) must be below conf_fg ({conf_fg})")
        out = torch.full_like(arg, IGNORE)
        out = torch.where(mx > conf_fg, fg, out)
        return torch.where(mx <= conf_bg, torch.zeros_like(arg), out)
    if mode == "raw":
        return torch.where(mx > cam_threshold, fg, torch.zeros_like(arg))
    raise ValueError(f"ir_labels must be 'confident' or 'raw', got {mode!r}")


def masks_from_random_walk(
    rw: torch.Tensor, labels: torch.Tensor, bg_threshold: float, size: tuple[int, int]
) -> torch.Tensor:
    """Pseudo masks from random-walk scores (IRNet's ``make_sem_seg_labels``).

    The grid scores are upsampled bilinearly to ``size``, absent classes are zeroed, each image is
    divided by its maximum over present classes and pixels, and a pixel takes the class with the
    largest score if it beats ``bg_threshold`` (background otherwise).

    Args:
        rw: float ``[B, K, h, w]`` propagated scores.
        labels: ``[B, K]`` image labels.
        bg_threshold: background score (``sem_seg_bg_thres``).
        size: ``(H, W)`` of the output masks.

    Returns:
        bool ``[B, K, H, W]``; images without a present class get empty masks.
    """
    up = F.interpolate(rw.float(), size=size, mode="bilinear", align_corners=False)
    present = (labels > 0.5).to(up.dtype)[:, :, None, None]
    up = up.clamp_min(0.0) * present
    mx = up.amax(dim=(1, 2, 3), keepdim=True)
    up = up / mx.clamp_min(1e-12)
    best, arg = up.max(dim=1)
    fg = (best > bg_threshold) & (mx[:, 0] > 0)
    k = rw.shape[1]
    onehot = F.one_hot(arg, k).permute(0, 3, 1, 2).bool()
    return onehot & fg[:, None]
