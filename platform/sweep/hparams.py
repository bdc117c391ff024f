"""TensorBoard HParams sessions for sweep trials (no TensorFlow, no Ray).

The trainer writes each trial's scalars and map overlays to ``<run_dir>/tensorboard``. This
module adds, in that same folder, one HParams *session*: a ``session_start_info`` with the
trial's parameters (plus ``space``, ``method`` and ``trial_id``) and, when the trial ends, a
``session_end_info`` with its status. No experiment summary is written, so TensorBoard's HParams
plugin infers the hyperparameters from all sessions (trials of different spaces may have
different parameters) and the metrics from the scalar tags of the session folders, showing each
metric's last value (the final epoch). ``tensorboard --logdir <sweep folder>`` then shows curves,
overlays and the HParams table / parallel coordinates side by side.

Values must be str, bool, int or float for the plugin; anything else (a list, None) is written as
its JSON string.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

__all__ = [
    "hparam_value",
    "write_session_start",
    "write_session_end",
    "HPARAMS_SUFFIX",
    "STATUS_TAG",
    "STATUS_CODES",
]

#: event files written here end with this suffix (the trainer's do not)
HPARAMS_SUFFIX = ".hparams"

#: HParams has four session statuses; a pruned or budget-stopped trial is not a success, so it
#: gets ``STATUS_UNKNOWN`` and the exact status is the scalar :data:`STATUS_TAG` (codes below)
_STATUS = {
    "completed": api_pb2.STATUS_SUCCESS,
    "pruned": api_pb2.STATUS_UNKNOWN,
    "stopped": api_pb2.STATUS_UNKNOWN,
    "failed": api_pb2.STATUS_FAILURE,
    "running": api_pb2.STATUS_RUNNING,
}
#: scalar written at a session's end: the trial's status as a number (a metric column in HParams)
STATUS_TAG = "trial/status"
STATUS_CODES = {"completed": 1.0, "pruned": 2.0, "stopped": 3.0, "failed": 4.0}


def hparam_value(v: Any) -> str | bool | int | float:
    """A value the HParams plugin accepts (str/bool/int/float; others as JSON)."""
    if isinstance(v, (str, bool, int, float)):
        return v
    return json.dumps(v, default=str)


def _summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> summary_pb2.Summary:
    meta = metadata.create_summary_metadata(data)
    return summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=tag, metadata=meta, tensor=metadata.NULL_TENSOR)]
    )


def _write(logdir: Path, *summaries: tuple[summary_pb2.Summary, int]) -> None:
    """Write events ``(summary, step)`` into a new event file of ``logdir``.

    Written directly with TensorBoard's record writer (no writer thread per call): the file is
    what ``EventFileWriter`` writes, a version event and then the summaries.
    """
    logdir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    name = (
        f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}."
        f"{uuid.uuid4().hex[:8]}{HPARAMS_SUFFIX}"
    )
    with open(logdir / name, "wb") as f:
        w = RecordWriter(f)
        w.write(event_pb2.Event(wall_time=now, file_version="brain.Event:2").SerializeToString())
        for summary, step in summaries:
            w.write(event_pb2.Event(wall_time=now, step=step, summary=summary).SerializeToString())
        w.flush()


def has_session(logdir: Path) -> bool:
    """Whether a session start was already written there (a resumed trial writes none)."""
    return any(Path(logdir).glob(f"events.out.tfevents.*{HPARAMS_SUFFIX}"))


def write_session_start(
    logdir: str | Path,
    hparams: Mapping[str, Any],
    group_name: str,
    start_time_s: float | None = None,
) -> None:
    """Write a trial's ``session_start_info`` (once per folder: a second call is a no-op).

    Args:
        logdir: the trial's TensorBoard folder (``<run_dir>/tensorboard``).
        hparams: parameter name → value (converted with :func:`hparam_value`).
        group_name: the session group (the trial id: one session per group).
        start_time_s: UNIX start time (default now).
    """
    logdir = Path(logdir)
    if has_session(logdir):
        return
    info = plugin_data_pb2.SessionStartInfo(
        group_name=group_name, start_time_secs=start_time_s or time.time()
    )
    for k in sorted(hparams):
        v = hparam_value(hparams[k])
        if isinstance(v, bool):
            info.hparams[k].bool_value = v
        elif isinstance(v, (int, float)):
            info.hparams[k].number_value = float(v)
        else:
            info.hparams[k].string_value = v
    data = plugin_data_pb2.HParamsPluginData(
        session_start_info=info, version=metadata.PLUGIN_DATA_VERSION
    )
    _write(logdir, (_summary(metadata.SESSION_START_INFO_TAG, data), 0))


def write_session_end(
    logdir: str | Path, status: str, end_time_s: float | None = None, step: int = 0
) -> None:
    """Write a trial's ``session_end_info`` and its :data:`STATUS_TAG` scalar.

    Args:
        logdir: the trial's TensorBoard folder.
        status: ``completed`` (STATUS_SUCCESS), ``failed`` (STATUS_FAILURE), ``pruned`` /
            ``stopped`` (STATUS_UNKNOWN); the scalar tells them apart (:data:`STATUS_CODES`).
        end_time_s: UNIX end time (default now).
        step: the step of the scalar (the trial's last epoch).
    """
    info = plugin_data_pb2.SessionEndInfo(
        status=_STATUS.get(status, api_pb2.STATUS_UNKNOWN), end_time_secs=end_time_s or time.time()
    )
    data = plugin_data_pb2.HParamsPluginData(
        session_end_info=info, version=metadata.PLUGIN_DATA_VERSION
    )
    events = [(_summary(metadata.SESSION_END_INFO_TAG, data), 0)]
    if status in STATUS_CODES:
        value = summary_pb2.Summary.Value(tag=STATUS_TAG, simple_value=STATUS_CODES[status])
        events.insert(0, (summary_pb2.Summary(value=[value]), step))
    _write(Path(logdir), *events)
