"""The single-run training loop (no Ray: runs on a bare machine with torch + timm).

:func:`run_training` trains ``cfg.method`` on the ``train`` split and, after every epoch,
evaluates the validation split ``cfg.eval.split`` with the :class:`LocalizationSuite`, and, where
``cfg.eval.loc_split`` resolves to a split (:func:`resolve_loc_split`: by default ``val-loc``
when the ``eval.split`` items carry no boxes or masks, as NIH / RSNA / SIIM ``val``), that
localization split too, so each epoch reports the validation AUROC and the localization metrics
the dataset supports. It writes

* ``out_dir/config.yaml``: the resolved config (:func:`lesionsweep.config.load_config` reads it);
* ``out_dir/checkpoints/last.pt`` (every epoch; resumable: weights, optimizer, schedule, RNG)
  and, with ``train.keep_checkpoint: best`` (default), a weights-only ``best.pt`` (when
  ``eval.select_metric`` improves), loadable with ``torch.load(weights_only=True)`` (see
  :mod:`.checkpoint`). When the last epoch is done the policy is applied: by default only
  ``best.pt`` stays (``keep_checkpoint: last | none``, ``keep_resumable: true`` keep otherwise);
  resuming such a finished run returns its result from ``metrics.jsonl`` without training;
* ``out_dir/tensorboard/``: a scalar per metric and map overlays of ``train.log_images`` fixed
  validation images (see :mod:`.tensorboard`), taken from ``eval.split`` unless it has neither
  boxes nor masks and a localization split is evaluated, then from that split;
* ``out_dir/metrics.jsonl``: one JSON object per epoch (rewritten atomically each epoch;
  non-finite values as null).

Every epoch's metrics are one flat dict: ``epoch``, ``train/loss`` (mean over steps),
``train/images_per_s`` (all ranks together, data loading included), ``time/epoch_s`` (train +
validation), ``lr`` (learning rate at the epoch's first step), ``val/loss`` and ``val/<key>`` for
every suite key of ``eval.split``, and ``<loc>/loss`` and ``<loc>/<key>`` (e.g.
``val-loc/point_acc_micro``) for every suite key of the localization split ``<loc>`` when one is
evaluated. ``eval.select_metric`` may name any of them; the plateau schedule and the divergence
check use ``val/loss``. With ``eval.loc_every = k`` the localization keys are computed on epochs
``k, 2k, ...`` and the last one, NaN on the others (the losses and AUROC every epoch): a
localization ``select_metric`` then picks the best among the evaluated epochs only. A sweep that
early-stops on a localization metric sees NaN in between: Ray's ASHA lets a trial whose value at a
rung is NaN pass that rung and leaves NaN out of the rung's cutoff, so put the rungs
(``grace_period``, ``reduction_factor``) on multiples of ``k`` to prune on measured values.

Determinism: the run seed fixes the model initialisation; every epoch reseeds Python, numpy and
torch from ``(seed, epoch, rank)`` and the shuffling from ``(seed, epoch)``, so on the CPU the same
config gives the same metrics, and a resumed run the same metrics as an uninterrupted one (with
``data.num_workers > 0``, worker-side randomness is seeded when the persistent workers start, so
resume equality then holds only for deterministic datasets).

Distributed data parallel: when ``torch.distributed`` is initialised (e.g. by Ray Train's
TorchTrainer), the model is wrapped in DDP on ``cuda:$LOCAL_RANK`` (or the CPU), the train split
is sharded with a :class:`DistributedSampler`, rank 0 alone evaluates the full validation
split(s) and writes files, the metrics are broadcast from rank 0, and the ``reporter`` is called
on every rank with the same metrics (``checkpoint_dir`` only on rank 0).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

from ..config import RunConfig, config_from_dict, dump_config, load_config
from ..data import build_dataset
from ..errors import ConfigError, DataError, TrainingError, refuse_test_split
from ..fileio import atomic_write_text
from ..methods import method_class
from ..ranking import is_better
from .checkpoint import (
    CHECKPOINT_FORMAT,
    capture_rng_state,
    finalize_checkpoints,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    unwrap_model,
    weights_only,
)
from .evaluate import json_safe
from .optim import LRSchedule, build_optimizer
from .reports import EpochReport, TrainResult
from .runners import runner_for
from .runtime import (
    autocast_dtype,
    build_method,
    check_training_split,
    derive_seed,
    make_loader,
    resolve_device,
    seed_everything,
)
from .steps import train_epoch
from .tensorboard import TensorBoardLogger
from .validation import EvalTarget, evaluate_targets, resolve_loc_split, setup_validation

__all__ = ["EpochReport", "TrainResult", "Trainer", "resolve_loc_split", "run_training"]

#: config keys that may change between an interrupted run and its resumption
RESUMABLE_CHANGES = frozenset(
    {
        "train.epochs",
        "train.device",
        "train.log_images",
        "data.num_workers",
        "data.root",
        "data.cache",
        "eval.batch_size",
        "eval.loc_every",
        "train.keep_checkpoint",
        "train.keep_resumable",
    }
)


Reporter = Callable[[EpochReport], None]


def run_training(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    reporter: Reporter | None = None,
    resume: bool = True,
    progress: bool = False,
) -> TrainResult:
    """Train one config and evaluate it on its validation split after every epoch.

    A method whose class declares a staged runner (``runner = "<name>"`` in the method
    contract, e.g. the WSMIS pipeline) is run by that runner
    (:mod:`lesionsweep.training.runners`) with the same arguments.

    Args:
        cfg: the run config (``eval.split`` must not be a test split).
        out_dir: the run folder (created; see the module docstring for its layout).
        reporter: called after every epoch (on every rank) with an :class:`EpochReport`.
        resume: continue after ``out_dir/checkpoints/last.pt`` when it exists (its config must
            match ``cfg`` except for :data:`RESUMABLE_CHANGES`).
        progress: print progress lines to stderr.

    Raises:
        ConfigError: a bad config value (unknown method kwarg, test split, ...), naming the key.
        TrainingError: a non-finite loss (naming epoch, step and value).
    """
    try:
        cls = method_class(cfg.method.name)
    except KeyError as e:
        raise ConfigError(f"method.name = {cfg.method.name!r}: {e.args[0]}") from None
    staged = runner_for(cls)
    if staged is not None:
        return staged.run_pipeline(cfg, Path(out_dir), reporter, resume, progress=progress)
    return Trainer(cfg, out_dir, progress=progress).fit(reporter=reporter, resume=resume)


def _dist_info() -> tuple[bool, int, int]:
    if dist.is_available() and dist.is_initialized():
        return True, dist.get_rank(), dist.get_world_size()
    return False, 0, 1


def _broadcast(obj: Any, distributed: bool) -> Any:
    if not distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


class Trainer:
    """The training loop behind :func:`run_training`.

    ``datasets`` (``(train, val)`` or ``(train, val, loc)``) replaces the datasets built from
    ``cfg.data``; the benchmark uses it to feed preloaded data. Each must have ``.info``
    (:class:`DatasetInfo`) and return :class:`~lesionsweep.data.types.Sample`. ``loc`` (may be
    None) is the localization split's dataset (see :func:`resolve_loc_split`); without it,
    ``eval.loc_split = "auto"`` adds no split and an explicit ``eval.loc_split`` is built from
    ``cfg.data``.
    """

    def __init__(
        self,
        cfg: RunConfig,
        out_dir: str | Path,
        *,
        progress: bool = False,
        datasets: tuple[Dataset[Any], ...] | None = None,
    ) -> None:
        check_training_split(cfg.eval.split)
        if cfg.eval.loc_split not in (None, "auto", "none"):
            refuse_test_split(cfg.eval.loc_split, "eval.loc_split")
        if datasets is not None and len(datasets) not in (2, 3):
            raise ConfigError(
                f"Trainer(datasets=...): expected (train, val) or (train, val, loc), got "
                f"{len(datasets)} datasets"
            )
        if cfg.eval.select_mode not in ("max", "min"):
            raise ConfigError(f"eval.select_mode = {cfg.eval.select_mode!r}: choose 'max' or 'min'")
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.datasets = datasets
        self.distributed, self.rank, self.world_size = _dist_info()
        self.is_main = self.rank == 0
        self.device = resolve_device(cfg.train.device)

    # ------------------------------------------------------------------ helpers
    def _log(self, msg: str) -> None:
        if self.progress and self.is_main:
            print(f"[lesionsweep] {msg}", file=sys.stderr, flush=True)

    def _check_resume_config(self, stored: Mapping[str, Any], path: Path) -> None:
        old = _flatten(config_from_dict(stored, source=str(path)).to_dict())
        new = _flatten(self.cfg.to_dict())
        diff = sorted(
            k
            for k in set(old) | set(new)
            if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES
        )
        if diff:
            desc = ", ".join(f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in diff)
            raise ConfigError(
                f"cannot resume from {path}: it was written with a different config: {desc}; "
                "use a new out_dir or resume=False"
            )

    def _on_main(self, fn: Callable[[], Any], share: bool) -> Any:
        """Run ``fn`` on rank 0 only; a failure there is raised on every rank (no rank is left
        waiting in a collective). ``share``: broadcast the result to every rank."""
        result: Any = None
        error: BaseException | None = None
        if self.is_main:
            try:
                result = fn()
            except Exception as e:  # noqa: BLE001 - re-raised below
                error = e
        if self.distributed:
            msg = None if error is None else f"{type(error).__name__}: {error}"
            shared, msg = _broadcast((result if share else None, msg), True)
            if share:
                result = shared
            if error is None and msg is not None:
                raise TrainingError(f"rank 0 failed during setup: {msg}")
        if error is not None:
            raise error
        return result

    # ------------------------------------------------------------------ main loop
    def fit(self, reporter: Reporter | None = None, resume: bool = True) -> TrainResult:
        """Run the remaining epochs (see :func:`run_training`)."""
        t_call = time.perf_counter()
        cfg, dev = self.cfg, self.device
        ckpt_dir = self.out_dir / "checkpoints"
        last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"

        def read_state() -> dict[str, Any] | None:
            state = None
            if resume and last_path.is_file():
                state = load_checkpoint(last_path)
                self._check_resume_config(state["config"], last_path)
            elif resume:
                state = self._finished_run()
            return state

        state: dict[str, Any] | None = self._on_main(read_state, share=True)
        if state is not None and "model" not in state:  # finished, resumable state removed
            return self._result(state["history"], t_call, ckpt_dir)

        seed_everything(cfg.train.seed)  # the same initial weights on every rank
        train_ds: Any = self.datasets[0] if self.datasets else build_dataset(cfg.data, "train")
        info = train_ds.info
        model = build_method(cfg, info).to(dev)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(model, cfg.optim)

        # ---- data
        bs = cfg.train.batch_size
        n_train = len(train_ds)
        if n_train == 0:
            raise DataError(f"the train split of {info.name!r} is empty")
        per_rank = math.ceil(n_train / self.world_size)
        drop_last = per_rank >= bs  # no ragged (possibly size-1) last batch when avoidable
        gen = torch.Generator()
        sampler: DistributedSampler[Any] | None = None
        if self.distributed:
            sampler = DistributedSampler(
                train_ds,
                num_replicas=self.world_size,
                rank=self.rank,
                shuffle=True,
                seed=cfg.train.seed,
                drop_last=True,
            )
        train_loader = make_loader(
            train_ds,
            batch_size=bs,
            num_workers=cfg.data.num_workers,
            device=dev,
            shuffle=sampler is None,
            sampler=sampler,
            generator=gen,
            drop_last=drop_last,
            labels_only=True,
        )
        steps_per_epoch = len(train_loader)
        if cfg.train.max_steps_per_epoch > 0:
            steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
        if steps_per_epoch == 0:
            raise DataError(
                f"the train split ({n_train} images over {self.world_size} rank(s)) gives no "
                f"batch of train.batch_size = {bs}"
            )

        def setup() -> list[EvalTarget]:
            return setup_validation(cfg, self.datasets, info, dev, self._log)

        eval_targets: list[EvalTarget] = self._on_main(setup, share=False) or []

        def write_run_folder() -> None:
            # only now that data, method and metrics are known to build: a bad config or a
            # missing dataset file leaves no half-written run folder behind
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, self.out_dir / "config.yaml")

        self._on_main(write_run_folder, share=False)

        schedule = LRSchedule(optimizer, cfg.optim, cfg.train.epochs, steps_per_epoch)
        amp_dtype = autocast_dtype(dev, cfg.train.amp)
        scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

        history: list[dict[str, float]] = []
        best: dict[str, Any] | None = None
        start_epoch = 0
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            history = [dict(h) for h in state["history"]]
            best = dict(state["best"]) if state.get("best") else None
            start_epoch = int(state["epoch"])
            restore_rng_state(state["rng"])
            self._log(f"resuming {self.out_dir} after epoch {start_epoch}")
        del state

        net: nn.Module = model
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            net = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)

        tb = None
        if self.is_main and start_epoch < cfg.train.epochs:
            tb = TensorBoardLogger(self.out_dir / "tensorboard", purge_step=start_epoch + 1)

        try:
            for epoch in range(start_epoch + 1, cfg.train.epochs + 1):
                t_epoch = time.perf_counter()
                seed_everything(derive_seed(cfg.train.seed, epoch, self.rank))
                gen.manual_seed(derive_seed(cfg.train.seed, epoch, 0x5EED))
                if sampler is not None:
                    sampler.set_epoch(epoch)
                lr = schedule.lr
                train_loss, ips = train_epoch(
                    net, model, train_loader, optimizer, schedule, scaler, amp_dtype,
                    epoch, steps_per_epoch,
                    cfg=cfg, dev=dev, distributed=self.distributed,
                )  # fmt: skip
                metrics: dict[str, float] | None = None
                overlays: list[Any] = []
                failure: BaseException | None = None
                if self.is_main:
                    loc_now = epoch % cfg.eval.loc_every == 0 or epoch == cfg.train.epochs
                    try:
                        evaluated, overlays = evaluate_targets(
                            model, eval_targets, cfg, dev, amp_dtype, loc_now
                        )
                    except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
                        failure = e
                    else:
                        metrics = {
                            "epoch": float(epoch),
                            "train/loss": train_loss,
                            "train/images_per_s": ips,
                            "time/epoch_s": time.perf_counter() - t_epoch,
                            "lr": lr,
                        }
                        metrics.update(evaluated)
                # every rank learns the outcome of rank 0's validation (no rank left waiting)
                metrics, error = _broadcast(
                    (metrics, None if failure is None else f"{type(failure).__name__}: {failure}"),
                    self.distributed,
                )
                if failure is not None:
                    if isinstance(failure, TrainingError):
                        raise TrainingError(f"epoch {epoch} validation: {failure}") from failure
                    raise failure
                if error is not None:
                    raise TrainingError(f"epoch {epoch} validation failed on rank 0: {error}")
                assert metrics is not None
                if not math.isfinite(metrics["val/loss"]):
                    raise TrainingError(
                        f"non-finite validation loss {metrics['val/loss']} after epoch {epoch}: "
                        "the weights diverged (lower optim.lr or set train.grad_clip)"
                    )
                schedule.end_epoch(metrics["val/loss"])
                key = cfg.eval.select_metric
                value = float(metrics[key])
                is_best = is_better(value, None if best is None else best["value"],
                                     cfg.eval.select_mode)  # fmt: skip
                if is_best:
                    best = {"epoch": epoch, "value": value}
                history.append(metrics)
                if self.is_main:
                    self._save(
                        last_path, best_path, is_best, model, optimizer, schedule, scaler,
                        epoch, history, best,
                    )  # fmt: skip
                    assert tb is not None
                    tb.log_scalars(metrics, epoch)
                    if overlays:
                        tb.log_overlays(overlays, info.classes, epoch)
                    tb.flush()
                    self._log(
                        f"epoch {epoch}/{cfg.train.epochs} train/loss {train_loss:.4f} "
                        f"val/loss {metrics['val/loss']:.4f} {key} {value:.4f}"
                        + (" (best)" if is_best else "")
                    )
                if reporter is not None:
                    reporter(
                        EpochReport(
                            epoch=epoch,
                            metrics=dict(metrics),
                            checkpoint_dir=ckpt_dir if self.is_main else None,
                            is_best=is_best,
                        )
                    )
        finally:
            if tb is not None:
                tb.close()

        if not history:
            raise TrainingError(f"{self.out_dir}: no epoch was run (train.epochs = 0?)")
        if self.is_main:
            keep, resumable = cfg.train.keep_checkpoint, cfg.train.keep_resumable
            kept = finalize_checkpoints(ckpt_dir, keep, resumable)
            self._log(f"checkpoints kept: {kept or 'none'} (bytes)")
        return self._result(history, t_call, ckpt_dir)

    def _finished_run(self) -> dict[str, Any] | None:
        """``{"history": [...]}`` of a run in ``out_dir`` that ended and whose resumable
        checkpoint the policy removed; None when ``out_dir`` holds no such run."""
        jsonl, cfg_path = self.out_dir / "metrics.jsonl", self.out_dir / "config.yaml"
        if not (jsonl.is_file() and cfg_path.is_file()):
            return None
        self._check_resume_config(load_config(cfg_path).to_dict(), cfg_path)
        rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
        history = [{k: math.nan if v is None else v for k, v in r.items()} for r in rows]
        done = int(history[-1]["epoch"]) if history else 0
        if done < self.cfg.train.epochs:
            raise TrainingError(
                f"cannot resume {self.out_dir}: it ran {done} epoch(s) and its resumable "
                "checkpoints/last.pt was removed (train.keep_resumable = false); use a new "
                "out_dir or resume=False"
            )
        return {"history": history[: self.cfg.train.epochs]}

    def _result(self, history: list[dict[str, float]], t_call: float, ckpt: Path) -> TrainResult:
        key, mode = self.cfg.eval.select_metric, self.cfg.eval.select_mode
        best: tuple[int, float] | None = None
        for h in history:
            value = float(h.get(key, math.nan))
            if is_better(value, None if best is None else best[1], mode):
                best = (int(h["epoch"]), value)
        assert best is not None
        by_epoch = {int(h["epoch"]): h for h in history}
        return TrainResult(
            final=dict(history[-1]),
            best=dict(by_epoch.get(best[0], history[-1])),
            best_epoch=best[0],
            epochs_run=len(history),
            history=[dict(h) for h in history],
            wall_time_s=time.perf_counter() - t_call,
            out_dir=self.out_dir,
            checkpoint_bytes=sum(p.stat().st_size for p in ckpt.glob("*.pt")),
        )

    def _save(
        self,
        last_path: Path,
        best_path: Path,
        is_best: bool,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: LRSchedule,
        scaler: torch.amp.GradScaler | None,
        epoch: int,
        history: list[dict[str, float]],
        best: dict[str, Any] | None,
    ) -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "model": unwrap_model(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "history": [dict(h) for h in history],
            "best": dict(best) if best else None,
            "rng": capture_rng_state(),
            "config": self.cfg.to_dict(),
        }
        save_checkpoint(last_path, state)
        if is_best and self.cfg.train.keep_checkpoint == "best":
            save_checkpoint(best_path, weights_only(state))
        lines = "".join(json.dumps(json_safe(h)) + "\n" for h in history)
        atomic_write_text(self.out_dir / "metrics.jsonl", lines)
