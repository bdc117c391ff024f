"""Leaderboard, the in-memory Optuna study, and the HTML report on sweep folders written like
the driver writes them (no Ray): ranking rules, grouping, offline HTML with every section,
rendering in headless Chromium, and localization maps from real checkpoints on an NIH-format
folder (the real NIH metadata with stand-in films)."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import optuna
import pytest
from lesionsweep.cli import main
from lesionsweep.config import config_from_dict
from lesionsweep.data.standin import write_lines_subset, write_standin_images
from lesionsweep.errors import ConfigError
from lesionsweep.sweep.leaderboard import build_leaderboard, format_table
from lesionsweep.sweep.report.data import best_so_far, build_study, load_sweep
from lesionsweep.sweep.report.html import SECTIONS, write_report
from lesionsweep.sweep.report.render import find_chromium, render_in_chromium

from .sweep_folder import real_trial, trial, write_spec, write_tables

M = "val/auroc_macro"


def _curve(*vals: float, pxap: float = 10.0) -> list[dict[str, float]]:
    return [{M: v, "val/pxap": pxap + i, "val/iobb@0.5": v / 2} for i, v in enumerate(vals)]


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = write_spec(tmp_path, "s", [M], ["max"])
    write_tables(
        root,
        [
            trial("t1", "completed", {"method.pooling": "gap", "optim.lr": 1e-3}, _curve(0.5, 0.7)),
            trial("t2", "completed", {"method.pooling": "lse", "optim.lr": 1e-2}, _curve(0.6, 0.9)),
            trial("t3", "pruned", {"method.pooling": "lse", "optim.lr": 3e-2}, _curve(0.95)),
            trial("t4", "failed", {"method.pooling": "pcam", "optim.lr": 5e-2}, []),
            trial(
                "t5", "completed", {"method.pooling": "pcam", "optim.lr": 2e-3}, _curve(0.4, 0.8)
            ),
            trial("t6", "completed", {"method.pooling": "gap", "optim.lr": 2e-4}, _curve(0.5, 0.6)),
        ],
    )
    return root


def test_leaderboard_ranks_completed_first_on_the_objective(sweep: Path) -> None:
    board = build_leaderboard(load_sweep(sweep), top=None)
    ((_, rows),) = board.groups
    assert [r[1] for r in rows] == ["t2", "t5", "t1", "t6", "t3", "t4"]
    assert [r[3] for r in rows][-2:] == ["pruned", "failed"]
    col = board.columns.index(M)
    assert rows[0][col] == pytest.approx(0.9) and rows[-1][col] is None
    assert "val/pxap" in board.columns and "method.pooling" in board.columns


def test_leaderboard_groups_by_a_parameter_and_rejects_unknown_keys(
    sweep: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    board = build_leaderboard(load_sweep(sweep), by="method.pooling", top=1)
    assert [(g, [r[1] for r in rows]) for g, rows in board.groups] == [
        ("lse", ["t2"]),
        ("pcam", ["t5"]),
        ("gap", ["t1"]),
    ]
    assert "method.pooling" not in board.columns
    assert "method.pooling = lse" in format_table(board)
    with pytest.raises(ConfigError, match="allowed: method, space, method.pooling, optim.lr"):
        build_leaderboard(load_sweep(sweep), by="method.poolng")
    assert main(["leaderboard", str(sweep), "--by", "nope"]) == 2
    assert "--by 'nope'" in capsys.readouterr().err
    assert main(["leaderboard", str(sweep), "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert out.index("t2") < out.index("t5") and "t1" not in out


def test_study_rebuilt_from_the_tables(sweep: Path) -> None:
    data = load_sweep(sweep)
    study = build_study(data)
    states = [t.state for t in study.trials]
    ts = optuna.trial.TrialState
    assert states.count(ts.COMPLETE) == 4 and states.count(ts.PRUNED) == 1
    assert states.count(ts.FAIL) == 1
    assert study.best_trial.user_attrs["trial_id"] == "t2" and study.best_value == 0.9
    lr = study.best_trial.distributions["optim.lr"]
    assert isinstance(lr, optuna.distributions.FloatDistribution) and lr.log
    assert lr.low == 1e-4 and lr.high == 1e-1
    assert study.best_trial.intermediate_values == {1: 0.6, 2: 0.9}
    # search-efficiency curve: epochs in report order, steps at completed trials' last epochs
    xs, ys = best_so_far(data)
    assert ys == sorted(ys) and ys[-1] == 0.9 and len(xs) == len(ys)


def _nonblank(png: Path) -> float:
    img = cv2.imread(str(png))
    assert img is not None
    return float((img.min(axis=2) < 200).mean())


def test_report_is_offline_has_every_section_and_renders(sweep: Path) -> None:
    res = write_report(sweep, by="method.pooling")
    text = res.path.read_text()
    assert res.path == sweep / "report.html"
    titles = re.findall(r"<h2>([^<]+)</h2>", text)
    assert titles == list(SECTIONS)
    assert not re.search(r"<script[^>]*\ssrc=", text)  # plotly.js inlined: opens offline
    assert len(re.findall(r"<script", text)) >= 6
    assert "single-objective sweep" in text  # the Pareto section says why it is empty
    assert "run folder not found" in text  # no checkpoints kept: a note, not a crash
    if find_chromium() is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)")
    check = render_in_chromium(res.path, sweep / "report.png")
    assert check.script_errors == []
    assert check.plots >= 5  # history, efficiency, parallel, importance, learning curves
    assert _nonblank(sweep / "report.png") > 0.05


def test_report_draws_the_pareto_front_of_a_two_objective_sweep(tmp_path: Path) -> None:
    root = write_spec(tmp_path, "mo", [M, "val/pxap"], ["max", "max"])
    write_tables(
        root,
        [
            trial(
                f"t{i}",
                "completed",
                {"method.pooling": "gap", "optim.lr": 1e-3 * (i + 1)},
                _curve(0.5 + i / 10, pxap=20.0 - i),
            )
            for i in range(4)
        ],
    )
    text = write_report(root).path.read_text()
    assert 'id="pareto"' in text and "no Pareto front" not in text


@pytest.fixture(scope="module")
def nih_root(tmp_path_factory: pytest.TempPathFactory, txv_data_dir: Path) -> Path:
    """The real NIH metadata rows of 60 box images and 140 others, 32-px stand-in films."""
    from lesionsweep.data.nih import read_nih_boxes, read_nih_entries

    root = tmp_path_factory.mktemp("nih")
    entries = read_nih_entries(txv_data_dir / "Data_Entry_2017_v2020.csv.gz")
    boxes = read_nih_boxes(txv_data_dir / "BBox_List_2017.csv.gz")
    box_ids = sorted(set(boxes.ids.tolist()))[:60]
    others = [n for n in entries.ids[:600].tolist() if n not in set(boxes.ids.tolist())][:140]
    keep = set(box_ids) | set(others)
    write_lines_subset(
        txv_data_dir / "Data_Entry_2017_v2020.csv.gz",
        root / "Data_Entry_2017_v2020.csv",
        lambda ln: ln.split(",", 1)[0] in keep,
    )
    write_lines_subset(
        txv_data_dir / "BBox_List_2017.csv.gz",
        root / "BBox_List_2017.csv",
        lambda ln: ln.split(",", 1)[0] in keep,
        header_lines=1,
    )
    (root / "test_list.txt").write_text("\n".join(box_ids) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(others) + "\n")
    write_standin_images(root / "images_001" / "images", sorted(keep), 32)
    return root


def test_report_and_leaderboard_on_an_nih_folder_with_real_checkpoints(
    nih_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_spec(tmp_path, "nih", [M], ["max"])
    cfg = config_from_dict(
        {
            "method": {"name": "cam", "backbone": "test_resnet", "pooling": "lse"},
            "data": {
                "dataset": "nih",
                "root": str(nih_root),
                "image_size": 64,
                "options": {"val_fraction": 0.25, "val_loc_per_class": 2},
            },
            "train": {"epochs": 1, "batch_size": 16, "log_images": 0},
            "eval": {"batch_size": 16},
        }
    )
    real = real_trial(root, "r1", cfg, {"method.pooling": "lse", "optim.lr": 1e-3})
    gone = trial(
        "r2",
        "completed",
        {"method.pooling": "gap", "optim.lr": 1e-2},
        _curve(0.1),
        method="pylon",
        config=cfg,
        run_dir=str(tmp_path / "elsewhere"),
    )
    write_tables(root, [real, gone])
    assert any(k.startswith("val-loc/") for k in real[0].final)

    text = write_report(root, n_images=3).path.read_text()
    maps = text[text.index("<h2>Localization maps</h2>") :]
    assert "<b>val-loc</b>" in maps
    assert maps.count('src="data:image/png;base64,') == 3  # r1 on 3 films; r2 has no run folder
    assert "run folder not found" in maps
    assert main(["leaderboard", str(root)]) == 0
    out = capsys.readouterr().out
    assert "r1" in out and "val-loc/" in out
