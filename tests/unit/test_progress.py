"""Live progress (ETA, running-trials view), HParams statuses and the sweep's exit status."""

from __future__ import annotations

import io
from pathlib import Path

from lesionsweep.sweep.commands import _exit_code
from lesionsweep.sweep.hparams import STATUS_TAG, write_session_end, write_session_start
from lesionsweep.sweep.results import TrialRecord
from lesionsweep.sweep.summary import ProgressPrinter, summarize


def _rec(
    tid: str, status: str, epochs: int = 1, obj: float | None = 0.5, error: str = ""
) -> TrialRecord:
    return TrialRecord(
        trial_id=tid, status=status, space="s", method="cam", epochs_run=epochs,
        final={} if obj is None else {"val/auroc_macro": obj}, error=error or None,
    )  # fmt: skip


def test_progress_lines_carry_an_eta_and_a_running_view() -> None:
    out = io.StringIO()
    p = ProgressPrinter(4, "val/auroc_macro", "max", stream=out, view_every_s=0.0)
    a, b = _rec("a", "running", 0), _rec("b", "running", 0)
    p.started(a, {"running": 1})
    p.started(b, {"running": 2})
    assert "eta -]" in out.getvalue()  # nothing finished yet: no estimate
    a.epochs_run, a.final = 2, {"val/auroc_macro": 0.71}
    p.epoch(a, 3, {"running": 2})
    assert "running: a e2/3 0.7100 | b e0/? -" in out.getvalue()
    a.status = "completed"
    p.finished(a, {"completed": 1, "running": 1})
    last = out.getvalue().splitlines()[-1]
    assert "1/4 done" in last and "eta 00:" in last and "best val/auroc_macro 0.7100 (a)" in last
    assert p.eta_s(1) is not None and p.eta_s(4) == 0.0
    assert "a " not in p.view()  # finished trials leave the running view


def test_hparams_sessions_carry_the_trial_status(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import api_pb2, metadata
    from tensorboard.util import tensor_util

    got = {}
    for status in ("completed", "pruned", "failed", "stopped"):
        d = tmp_path / status
        write_session_start(d, {"optim.lr": 0.1}, group_name=status)
        write_session_end(d, status, step=3)
        for f in sorted(d.glob("events.out.tfevents.*")):
            for ev in EventFileLoader(str(f)).Load():
                for v in ev.summary.value:
                    if v.tag == metadata.SESSION_END_INFO_TAG:
                        end = metadata.parse_session_end_info_plugin_data(
                            v.metadata.plugin_data.content
                        )
                        got.setdefault(status, {})["end"] = end.status
                    elif v.tag == STATUS_TAG:
                        got.setdefault(status, {})["code"] = float(
                            tensor_util.make_ndarray(v.tensor)
                        )
                        assert ev.step == 3
    assert got["completed"] == {"end": api_pb2.STATUS_SUCCESS, "code": 1.0}
    assert got["pruned"] == {"end": api_pb2.STATUS_UNKNOWN, "code": 2.0}
    assert got["stopped"] == {"end": api_pb2.STATUS_UNKNOWN, "code": 3.0}
    assert got["failed"] == {"end": api_pb2.STATUS_FAILURE, "code": 4.0}


def test_a_sweep_without_a_completed_trial_exits_non_zero_with_the_reasons() -> None:
    recs = [
        _rec("a", "failed", obj=None, error="TrainingError: non-finite loss at epoch 1"),
        _rec("b", "failed", obj=None, error="TrainingError: non-finite loss at epoch 1"),
        _rec("c", "failed", obj=None, error="DataError: the train split is empty"),
        _rec("d", "pruned"),
    ]
    s = summarize("sw", "/x/sw", recs, ["val/auroc_macro"], ["max"])
    assert s.none_completed and _exit_code(s) == 1
    text = s.format()
    assert "failed trials by reason (2 distinct)" in text
    assert "2 x TrainingError: non-finite loss at epoch 1" in text and "DataError" in text
    ok = summarize("sw", "/x/sw", [*recs, _rec("e", "completed")], ["val/auroc_macro"], ["max"])
    assert _exit_code(ok) == 0
