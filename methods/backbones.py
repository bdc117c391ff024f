"""timm backbones through the feature API: any timm model name works, no per-method classes.

``pretrained`` never downloads: ``True`` loads ImageNet weights from an existing local cache
(Hugging Face / torch hub cache; the hub is put in offline mode), a string is a path to a local
weights file (``.pth``/``.safetensors``/``.bin``). Anything missing is a clear error.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lesionsweep.errors import ConfigError
from torch import nn


def _timm() -> Any:
    """The ``timm`` module, imported on first use.

    timm imports torchvision: ~190 MB of resident memory. The sweep driver loads method classes
    to validate configs but never builds a model, so it must not pay for them (the driver
    benchmark's peak RSS target is 1 GB at 10,000 trials).
    """
    import timm  # heavy: see the docstring

    return timm


def stage_count(name: str) -> int:
    """Number of feature stages timm's ``features_only`` model ``name`` has."""
    return len(_timm().create_model(name, features_only=True, pretrained=False).feature_info)


@contextmanager
def _offline() -> Any:
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    for k in keys:
        os.environ[k] = "1"
    hf_constants: Any = None
    old_const: Any = None
    try:  # huggingface_hub reads the env var at import time: flip its constant too
        import huggingface_hub.constants as hf_constants

        old_const = hf_constants.HF_HUB_OFFLINE
        hf_constants.HF_HUB_OFFLINE = True
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        pass
    try:
        yield
    finally:
        if hf_constants is not None:
            hf_constants.HF_HUB_OFFLINE = old_const
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _pretrained_kwargs(pretrained: bool | str | None) -> dict[str, Any]:
    if not pretrained:
        return {"pretrained": False}
    if isinstance(pretrained, str):
        p = Path(pretrained).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"pretrained weights file not found: {p}")
        return {"pretrained": True, "pretrained_cfg_overlay": {"file": str(p)}}
    return {"pretrained": True}


class Backbone(nn.Module):
    """A timm model with ``features_only=True``.

    ``forward(x)`` returns the list of feature maps at ``out_indices`` (shallow to deep), each
    ``[B, C_i, H / r_i, W / r_i]`` with ``channels[i] = C_i`` and ``reductions[i] = r_i``.
    """

    body: Any  # the timm features_only model (nn.Module attribute access is untyped)

    def __init__(
        self,
        name: str,
        in_chans: int = 1,
        pretrained: bool | str | None = False,
        out_indices: Sequence[int] | None = None,
        output_stride: int | None = None,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        kwargs: dict[str, Any] = dict(features_only=True, in_chans=in_chans, **timm_kwargs)
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        if output_stride is not None:
            kwargs["output_stride"] = output_stride
        kwargs.update(_pretrained_kwargs(pretrained))
        timm = _timm()
        try:
            with _offline():
                self.body = timm.create_model(name, **kwargs)
        except RuntimeError:
            if name not in timm.list_models():
                raise ConfigError(f"unknown timm backbone {name!r}") from None
            raise
        except Exception as e:  # noqa: BLE001 - offline hub errors come in many types
            if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
                raise ConfigError(
                    f"unknown timm backbone {name!r}; see timm.list_models() for valid names"
                ) from None
            if pretrained:
                raise FileNotFoundError(
                    f"pretrained weights for {name!r} are not in the local cache and lesionsweep "
                    f"never downloads them; pass a local weights file path as `pretrained` "
                    f"({type(e).__name__}: {e})"
                ) from None
            raise
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.reductions: list[int] = list(self.body.feature_info.reduction())
        self.name = name

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x))


def create_backbone(
    name: str,
    in_chans: int = 1,
    pretrained: bool | str | None = False,
    out_indices: Sequence[int] | None = None,
    output_stride: int | None = None,
    **timm_kwargs: Any,
) -> Backbone:
    """Build a :class:`Backbone` (see class docstring)."""
    return Backbone(name, in_chans, pretrained, out_indices, output_stride, **timm_kwargs)
