"""Render a report in headless Chromium: a screenshot, the script errors, the plotted figures.

Used by ``lesionsweep report --screenshot`` (writes ``report.png`` next to the report) and by the
tests that check a report is not blank and runs without script errors. Chromium is Debian's
``chromium`` package (``chromium`` or ``chromium-browser`` on ``PATH``); nothing is downloaded.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ...errors import ConfigError

__all__ = ["RenderCheck", "find_chromium", "render_in_chromium"]

_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio")


@dataclass
class RenderCheck:
    """What headless Chromium saw.

    Attributes:
        screenshot: the PNG written.
        script_errors: console lines with an uncaught error (empty when the scripts ran clean).
        plots: plotly figures drawn (``main-svg`` nodes in the DOM after scripts ran).
        dom_chars: size of the rendered DOM.
    """

    screenshot: Path
    script_errors: list[str]
    plots: int
    dom_chars: int


def find_chromium() -> str | None:
    """The Chromium executable on ``PATH``, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def render_in_chromium(
    html_file: str | Path,
    screenshot: str | Path,
    width: int = 1400,
    height: int = 4000,
    timeout_s: float = 180.0,
    budget_ms: int = 8000,
) -> RenderCheck:
    """Load ``html_file`` in headless Chromium, save a full-width screenshot, and report the
    uncaught script errors and the number of plotly figures in the rendered DOM.

    Raises:
        ConfigError: Chromium is not installed, or it failed to render.
    """
    exe = find_chromium()
    if exe is None:
        raise ConfigError("chromium not found on PATH (Debian: apt-get install chromium)")
    url = Path(html_file).resolve().as_uri()
    shot = Path(screenshot)
    common = [*_FLAGS, f"--virtual-time-budget={budget_ms}", "--enable-logging=stderr", "--v=0"]
    with tempfile.TemporaryDirectory(prefix="lesionsweep-chromium-") as profile:
        prof = f"--user-data-dir={profile}"
        dom = subprocess.run(
            [exe, *common, prof, "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        pic = subprocess.run(
            [exe, *common, prof, f"--window-size={width},{height}", f"--screenshot={shot}", url],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    if dom.returncode != 0 or pic.returncode != 0 or not shot.is_file():
        tail = (dom.stderr + pic.stderr).strip().splitlines()[-3:]
        raise ConfigError(f"chromium could not render {html_file}: {' | '.join(tail)}")
    errors = [
        line
        for line in (dom.stderr + pic.stderr).splitlines()
        if "CONSOLE" in line and re.search(r"Uncaught|Error:", line)
    ]
    return RenderCheck(shot, errors, dom.stdout.count('class="main-svg"'), len(dom.stdout))
