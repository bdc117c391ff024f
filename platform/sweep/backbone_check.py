"""Backbone names a sweep can reach, checked against timm's registry before any trial starts.

The sweep driver never imports timm (it pulls in torchvision: ~190 MB resident, see
``methods/backbones.py``), so the check runs in a short-lived Python process started as soon as
the spec is loaded; its answer is read once Ray is up (starting Ray takes longer), before
anything is written. A name timm does not know is a :class:`ConfigError` naming the space file,
the key and the value.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping

from ..errors import ConfigError
from .spaces import reachable_backbones
from .spec import SweepSpec

__all__ = ["BackboneCheck"]

_PROGRAM = (
    "import json, sys, timm\n"
    "names = json.loads(sys.stdin.read())\n"
    "print(json.dumps([n for n in names if not timm.is_model(n)]))\n"
)


class BackboneCheck:
    """The check of one sweep's backbone names, running in its own process.

    Args:
        names: ``{backbone name: where it comes from}``.
    """

    def __init__(self, names: Mapping[str, str]) -> None:
        self.names = dict(names)
        self._proc: subprocess.Popen[str] | None = None
        if self.names:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _PROGRAM],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )

    @classmethod
    def start(cls, spec: SweepSpec) -> BackboneCheck:
        """Start checking every backbone the spec's spaces can reach."""
        names: dict[str, str] = {}
        context, pins = spec.context(), spec.spaces.pins
        for space in spec.spaces.spaces:
            for name, where in reachable_backbones(space, context, pins, spec.source).items():
                names.setdefault(name, where)
        return cls(names)

    def close(self) -> None:
        """End the check's process if nobody waited for its answer (a launch that failed
        earlier)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.communicate()
            self._proc = None

    def result(self) -> None:
        """Wait for the answer.

        Raises:
            ConfigError: a name timm does not know (or the check could not run).
        """
        if self._proc is None:
            return
        out, err = self._proc.communicate(json.dumps(sorted(self.names)), timeout=300)
        self._proc = None
        if not out.strip():
            raise ConfigError(
                f"could not check the sweep's backbone names {sorted(self.names)} against timm "
                f"({err.strip().splitlines()[-1] if err.strip() else 'no answer'})"
            )
        unknown = json.loads(out.strip().splitlines()[-1])
        if unknown:
            name = unknown[0]
            raise ConfigError(
                f"{self.names[name]}: method.backbone = {name!r} is not a timm model; give a "
                f"name from timm.list_models() (e.g. resnet18, resnet50, densenet121)"
            )
