"""``lesionsweep report SWEEP``: one self-contained HTML file (plotly.js inlined, images as data
URIs) that opens offline in any browser.

Sections, in order: **Leaderboard**, **Optimization history**, **Parallel coordinates**,
**Parameter importance**, **Learning curves**, **Pareto front**, **Localization maps**, and
**Study** when ``lesionsweep study`` wrote ``study/final.md`` into the sweep folder. A section
that the sweep cannot support says why in one line instead of a plot.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from ...errors import ConfigError
from ...fileio import atomic_write_text
from ..leaderboard import build_leaderboard, fmt_cell
from . import plots
from .data import SweepData, build_study, load_sweep
from .maps import MapPanel, build_map_panel

__all__ = ["ReportResult", "write_report", "render_report", "SECTIONS", "REPORT_FILE"]

REPORT_FILE = "report.html"
SECTIONS = (
    "Leaderboard",
    "Optimization history",
    "Parallel coordinates",
    "Parameter importance",
    "Learning curves",
    "Pareto front",
    "Localization maps",
)
_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{margin-bottom:0}.sub{color:#666;margin-top:.2em}
table{border-collapse:collapse;font-size:13px;margin:.5em 0 1em}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f3f3f3}
td.l{text-align:left}.note{color:#a55;font-style:italic}
.maps td{text-align:center;vertical-align:top}.maps img{display:block}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto}
"""


@dataclass
class ReportResult:
    """Where the report went, its size in bytes and how long it took (seconds)."""

    path: Path
    size_bytes: int
    seconds: float


def _figure(fig: plots.Figure, div_id: str) -> str:
    if isinstance(fig, str):
        return f'<p class="note">{html.escape(fig)}</p>'
    assert isinstance(fig, go.Figure)
    return fig.to_html(
        full_html=False, include_plotlyjs=False, div_id=div_id, config={"responsive": True}
    )


def _leaderboard(data: SweepData, by: str | None, top: int | None) -> str:
    board = build_leaderboard(data, by=by, top=top)
    out = [
        f"<p>Ranked on the final <b>{html.escape(board.metric)}</b> ({board.mode}); "
        f"{board.total} trial(s); completed trials first"
        + (f"; grouped by <b>{html.escape(by)}</b>" if by else "")
        + ".</p>"
    ]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in board.columns)
    for label, rows in board.groups:
        if by:
            out.append(f"<h3>{html.escape(by)} = {html.escape(label)}</h3>")
        body = []
        for row in rows:
            cells = "".join(
                f'<td class="{"l" if isinstance(c, str) else ""}">{html.escape(fmt_cell(c))}</td>'
                for c in row
            )
            body.append(f"<tr>{cells}</tr>")
        out.append(f"<table><tr>{head}</tr>{''.join(body)}</table>")
    return "".join(out)


def _maps(panel: MapPanel) -> str:
    if panel.note:
        return f'<p class="note">{html.escape(panel.note)}</p>'
    head = "".join(f"<th>{html.escape(i)}</th>" for i in panel.image_ids)
    rows = []
    for r in panel.rows:
        if r.images:
            cells = "".join(
                f'<td><img src="{u}" alt="{html.escape(r.trial_id)}"></td>' for u in r.images
            )
        else:
            cells = f'<td colspan="{len(panel.image_ids)}" class="note">{html.escape(r.note)}</td>'
        rows.append(f'<tr><td class="l">{html.escape(r.label)}</td>{cells}</tr>')
    intro = (
        f"<p>Split <b>{html.escape(panel.split)}</b>: the same films for every trial; the map of "
        "the class of each film's first ground-truth box (JET), boxes in green.</p>"
    )
    return f'{intro}<table class="maps"><tr><th>trial</th>{head}</tr>{"".join(rows)}</table>'


def _markdown_tables(text: str) -> str:
    """``study/final.md`` as HTML: its pipe tables as tables, other lines as paragraphs."""
    out: list[str] = []
    table: list[list[str]] = []

    def flush() -> None:
        if table:
            head = "".join(f"<th>{html.escape(c)}</th>" for c in table[0])
            rows = "".join(
                "<tr>" + "".join(f'<td class="l">{html.escape(c)}</td>' for c in r) + "</tr>"
                for r in table[2:]
            )
            out.append(f"<table><tr>{head}</tr>{rows}</table>")
            table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        flush()
        if line.strip():
            body = html.escape(line.lstrip("# ")).replace("**", "")
            out.append(f"<p>{body}</p>")
    flush()
    return "".join(out)


def render_report(
    data: SweepData, by: str | None = None, top: int | None = None, n_images: int = 4
) -> str:
    """The report's HTML text (see the module docstring).

    Args:
        data: the sweep.
        by: group the leaderboard by this parameter.
        top: leaderboard rows per group (default 20) and, when given, the number of trials in
            the maps panel (default: the best trial of each method).
        n_images: validation films in the maps panel.
    """
    study = build_study(data)
    sections = {
        "Leaderboard": _leaderboard(data, by, top or 20),
        "Optimization history": _figure(plots.history_figure(study, data), "history")
        + _figure(plots.efficiency_figure(data), "efficiency"),
        "Parallel coordinates": _figure(plots.parallel_figure(study, data), "parallel"),
        "Parameter importance": _figure(plots.importance_figure(study, data), "importance"),
        "Learning curves": '<p>Pruned or time-stopped trials are dotted and named "(pruned)".</p>'
        + _figure(plots.curves_figure(study, data), "curves"),
        "Pareto front": _figure(plots.pareto_figure(study, data), "pareto"),
        "Localization maps": _maps(build_map_panel(data, top=top, n_images=n_images)),
    }
    local = data.location.local_path
    final_md = local / "study" / "final.md" if local is not None else None
    if final_md is not None and final_md.is_file():
        sections["Study"] = _markdown_tables(final_md.read_text())
    counts: dict[str, int] = {}
    for r in data.trials:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    objective = ", ".join(f"{m} ({d})" for m, d in zip(data.metrics, data.modes, strict=True))
    nav = " · ".join(f'<a href="#s{i}">{html.escape(t)}</a>' for i, t in enumerate(sections))
    body = "".join(
        f'<section id="s{i}"><h2>{html.escape(t)}</h2>{content}</section>'
        for i, (t, content) in enumerate(sections.items())
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>lesionsweep report: {html.escape(data.name)}</title><style>{_CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
        f"<h1>Sweep {html.escape(data.name)}</h1>"
        f'<p class="sub">{html.escape(data.location.root)} · {len(data.trials)} trial(s): '
        f"{html.escape(status)} · objective {html.escape(objective)} · generated "
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}</p><nav>{nav}</nav>{body}"
        "</body></html>\n"
    )


def write_report(
    sweep: str | Path,
    out: str | Path | None = None,
    by: str | None = None,
    top: int | None = None,
    n_images: int = 4,
) -> ReportResult:
    """Write the report (default ``<sweep>/report.html``, atomically).

    Raises:
        ConfigError: not a sweep folder, a bad ``--by``/``--top``, or an object-store sweep
            without ``out``.
    """
    t0 = time.monotonic()
    data = load_sweep(sweep)
    if out is None:
        local = data.location.local_path
        if local is None:
            raise ConfigError(f"{data.location.root} is not a local folder: give --out")
        path = local / REPORT_FILE
    else:
        path = Path(out)
    text = render_report(data, by=by, top=top, n_images=n_images)
    atomic_write_text(path, text)
    path.chmod(0o644)  # a report is meant to be shared (the temp file was 0600)
    return ReportResult(path, len(text.encode()), time.monotonic() - t0)
