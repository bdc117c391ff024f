"""The trial: a Tune function trainable that runs :func:`run_training` once.

* One worker: :func:`run_training` runs right in the trial process. Several workers: the trial
  drives a Ray Train V2 ``TorchTrainer`` whose rank-0 metrics reach Tune via
  ``TuneReportCallback``.
* Tune gets only what it needs each epoch: the objective metric(s), the early-stopping metric,
  ``epoch`` and ``epochs_total``. Every metric (incl. per-class) goes to the trial's own epoch
  fragment ``<sweep>/results/epochs/<trial_id>.parquet`` (rewritten atomically after every
  epoch by rank 0), and to TensorBoard (the trainer).
* Deterministic failures (:class:`~lesionsweep.errors.LesionSweepError`: non-finite loss, bad
  config, bad data) end the trial WITHOUT raising: it reports ``trial_error`` once, so Tune's
  retries (``max_failures``) are spent only on infrastructure faults (a dead worker or node), after
  which the trial continues from its last checkpoint.
* A trial restarted after it had already finished (its worker finished while the driver was
  dead) trains nothing and reports its last epoch again, so the sweep records it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ray import tune

from ...config import config_from_dict
from ...errors import ConfigError, LesionSweepError, TrainingError
from ...training import run_training
from ..results import EpochRecord
from ..spec import SweepSpec, build_trial_config
from ..storage import SweepLocation
from ..store import read_epochs_of, write_epoch_fragment
from .context import RUNS_DIR, TRAIN_RUNS_DIR
from .searcher import PARAMS_KEY, SPACE_KEY

__all__ = ["trial_fn", "METRIC_MISSING", "root_cause", "epoch_metrics"]

#: marker of the sweep-level error "the objective metric is never reported" (aborts the sweep)
METRIC_MISSING = "are not reported by the trainer"


class _MetricMissing(ConfigError):
    """An objective / early-stopping metric the trainer does not report (aborts the sweep)."""


def _check_metrics(needed: Sequence[str], metrics: Mapping[str, Any]) -> None:
    missing = [m for m in needed if m not in metrics]
    if missing:
        raise _MetricMissing(
            f"objective/early-stopping metric(s) {missing} {METRIC_MISSING}; "
            f"reported: {', '.join(sorted(k for k in metrics if k.startswith('val/')))} ..."
        )


def epoch_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """The metrics of one epoch row (``group/name`` keys and ``lr``; None → NaN)."""
    return {
        k: (float("nan") if v is None else float(v))
        for k, v in row.items()
        if ("/" in k or k == "lr")
        and (v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)))
    }


def _tune_dict(
    metrics: Mapping[str, Any], needed: Sequence[str], epoch: int, total: int
) -> dict[str, Any]:
    out: dict[str, Any] = {k: float(metrics[k]) for k in needed if k in metrics}
    out["epoch"] = int(epoch)
    out["epochs_total"] = int(total)
    return out


class _EpochWriter:
    """Keeps the trial's epoch fragment current (all epochs, incl. those before a resume)."""

    def __init__(
        self, sweep: dict[str, Any], trial_id: str, space: str, method: str, out_dir: Path
    ) -> None:
        self.loc = SweepLocation(sweep["root"])
        self.name = sweep["spec"].name
        self.trial_id, self.space, self.method = trial_id, space, method
        self.jsonl = out_dir / "metrics.jsonl" if self.loc.is_local else None
        self.rows: dict[int, EpochRecord] = {}
        if self.jsonl is None:  # object store: start from the fragment written before
            self.rows = {e.epoch: e for e in read_epochs_of(self.loc, trial_id)}

    def _from_jsonl(self) -> None:
        assert self.jsonl is not None
        elapsed = 0.0
        rows: dict[int, EpochRecord] = {}
        for line in self.jsonl.read_text().splitlines() if self.jsonl.is_file() else []:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            epoch = int(row.get("epoch", 0))
            if epoch < 1:
                continue
            elapsed += float(row.get("time/epoch_s") or 0.0)
            rows[epoch] = self._record(epoch, epoch_metrics(row), elapsed)
        self.rows = rows

    def _record(self, epoch: int, metrics: dict[str, float], elapsed: float) -> EpochRecord:
        metrics.pop("epoch", None)
        return EpochRecord(self.trial_id, self.space, self.method, epoch, elapsed, metrics=metrics)

    def add(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        if self.jsonl is not None:
            self._from_jsonl()  # the trainer wrote this epoch's line before reporting it
        if epoch not in self.rows:
            prev = max((e.elapsed_s for e in self.rows.values()), default=0.0)
            m = epoch_metrics(metrics)
            self.rows[epoch] = self._record(epoch, m, prev + float(m.get("time/epoch_s", 0.0)))
        write_epoch_fragment(self.loc, self.name, self.trial_id, self.rows.values())


class _Reporter:
    """The trainer's reporter: check the needed metrics once, write the epoch fragment, tell
    Tune the needed metrics (``report`` is ``tune.report`` or ``ray.train.report``)."""

    def __init__(
        self,
        needed: Sequence[str],
        total: int,
        writer: _EpochWriter | None,
        report: Any,
        upload: bool = False,
    ) -> None:
        self.needed, self.total, self.writer = list(needed), total, writer
        self.report, self.upload = report, upload
        self.checked = False
        self.calls = 0

    def __call__(self, rep: Any) -> None:
        if not self.checked:
            _check_metrics(self.needed, rep.metrics)
            self.checked = True
        if self.writer is not None:
            self.writer.add(rep.epoch, rep.metrics)
        out = _tune_dict(rep.metrics, self.needed, rep.epoch, self.total)
        self.calls += 1
        if self.upload and rep.checkpoint_dir is not None:
            self.report(out, checkpoint=tune.Checkpoint.from_directory(str(rep.checkpoint_dir)))
        else:
            self.report(out)


def _train_worker(config: dict) -> None:
    """Ray Train worker loop of a multi-worker trial (torch.distributed is initialised)."""
    import ray.train

    cfg = config_from_dict(config["cfg"], source=f"trial {config['trial_id']}")
    rank0 = ray.train.get_context().get_world_rank() == 0
    writer = _EpochWriter(**config["writer"]) if rank0 else None
    reporter = _Reporter(config["needed"], int(config["epochs_total"]), writer, ray.train.report)
    run_training(cfg, Path(config["out_dir"]), reporter=reporter, resume=True)


def root_cause(e: BaseException | str) -> str:
    """The last ``SomethingError: message`` line of an exception's text."""
    text = str(e)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.match(r"^([\w.]+\.)?\w*(Error|Exception)\b.*:", ln):
            return ln[:500]
    return (lines[-1] if lines else type(e).__name__)[:500]


_DETERMINISTIC = re.compile(r"\b(ConfigError|DataError|TrainingError|_MetricMissing)\b")


def _needed(spec: SweepSpec) -> list[str]:
    needed = list(spec.objective.metrics)
    es = spec.early_stopping
    if es.enabled and es.metric is not None and es.metric not in needed:
        needed.append(es.metric)
    return needed


def trial_fn(config: dict, sweep: dict | None = None) -> None:
    """The Tune function trainable: one trial = one :func:`run_training` call.

    Args:
        config: the trial config (``SPACE_KEY``, ``PARAMS_KEY`` and Optuna's raw names).
        sweep: ``{"spec": SweepSpec, "root": sweep folder}`` (via ``tune.with_parameters``).
    """
    assert sweep is not None
    spec: SweepSpec = sweep["spec"]
    loc = SweepLocation(sweep["root"])
    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    needed = _needed(spec)
    try:
        cfg = build_trial_config(spec, config[SPACE_KEY], config[PARAMS_KEY])
    except LesionSweepError as e:
        tune.report({"epoch": 0, "trial_error": f"{type(e).__name__}: {e}"[:500]})
        return
    total = cfg.train.epochs
    if loc.is_local:
        out_dir = Path(loc.join(RUNS_DIR, trial_id))
    else:
        out_dir = Path(ctx.get_trial_dir()) / "run"
        ckpt = tune.get_checkpoint()
        if ckpt is not None and not (out_dir / "checkpoints" / "last.pt").is_file():
            ckpt.to_directory(str(out_dir / "checkpoints"))
    writer_args = {
        "sweep": sweep,
        "trial_id": trial_id,
        "space": str(config[SPACE_KEY]),
        "method": cfg.method.name,
        "out_dir": out_dir,
    }
    if spec.resources.workers == 1:
        reporter = _Reporter(
            needed, total, _EpochWriter(**writer_args), tune.report, not loc.is_local
        )
        try:
            result = run_training(cfg, out_dir, reporter=reporter, resume=True)
        except LesionSweepError as e:
            last = max(reporter.writer.rows, default=0) if reporter.writer else 0
            tune.report({"epoch": last, "trial_error": f"{type(e).__name__}: {e}"[:500]})
            return
        if reporter.calls == 0:  # finished before this (re)start: tell Tune its last epoch
            tune.report(_tune_dict(result.final, needed, result.epochs_run, total))
        return
    _run_train(spec, cfg, out_dir, needed, total, trial_id, writer_args, loc)


def _run_train(
    spec: SweepSpec,
    cfg: Any,
    out_dir: Path,
    needed: list[str],
    total: int,
    trial_id: str,
    writer_args: dict[str, Any],
    loc: SweepLocation,
) -> None:
    from ray.train import FailureConfig as TrainFailureConfig
    from ray.train import RunConfig as TrainRunConfig
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    res = spec.resources
    per_worker: dict[str, float] = {"CPU": res.cpus_per_worker}
    if res.gpus_per_worker > 0:
        per_worker["GPU"] = res.gpus_per_worker
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={
            "cfg": cfg.to_dict(),
            "out_dir": str(out_dir),
            "needed": needed,
            "epochs_total": total,
            "trial_id": trial_id,
            "writer": writer_args,
        },
        scaling_config=ScalingConfig(
            num_workers=res.workers,
            use_gpu=res.gpus_per_worker > 0,
            resources_per_worker=per_worker,
        ),
        run_config=TrainRunConfig(
            name=f"train-{trial_id}",
            storage_path=loc.join(TRAIN_RUNS_DIR),
            failure_config=TrainFailureConfig(max_failures=0),
            callbacks=[TuneReportCallback()],  # type: ignore[list-item]
        ),
    )
    try:
        trainer.fit()
    except Exception as e:  # noqa: BLE001 - re-raised with the worker's root cause first
        cause = root_cause(e)
        if _DETERMINISTIC.search(cause):
            tune.report({"epoch": 0, "trial_error": cause})
            return
        raise TrainingError(f"Ray Train run failed: {cause}") from e
