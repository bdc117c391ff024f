"""Viniavskyi et al. 2020 (methods.md section 4): CAM -> IRNet -> segmentation, as one method.

The registered method ``wsmis`` (:mod:`lesionsweep.methods.wsmis`) is the stage-1 classifier; it
declares ``runner = "wsmis"`` in the method contract, so :func:`lesionsweep.training.run_training`
hands the run to :class:`WsmisRunner` (registered here under that name), which runs the three
stages end to end inside one trial:

1. **Classifier** (``train.epochs`` epochs, ``optim.*``): timm backbone with output stride 8 and
   one :class:`~.dropblock.DropBlock2D` applied after each of the last two stages (the same
   instance, as the authors' ``resnet50_dropblock``), its ``drop_prob`` warmed up linearly from 0
   over ``dropblock_warmup_steps`` training steps; global average pooling, a linear head, the
   configured classification loss (BCE by default). Class maps by ``cam_kind``
   (:mod:`.cams`), normalised by ReLU + per-map maximum.
2. **IRNet** (``stage2_epochs``, ``stage2_lr``): the boundary/displacement branches over a frozen
   backbone (:mod:`.irnet`), trained on the positive train images with grid labels from their
   CAMs (``ir_labels``: ``confident`` = conf_fg/conf_bg with an ignore band, the IRNet paper;
   ``raw`` = CAM > ``cam_threshold``, no ignore band, the authors' pneumothorax code; the open
   question of methods.md section 4.5), and the losses of :mod:`.affinity`. The default is
   ``raw``: it won on the phantom (pneumothorax, test_resnet, seed 0; pseudo-mask Dice 0.25 vs
   0.12 at 96 px and 0.37 vs 0.30 at 128 px; final Dice 0.31 vs 0.12 and 0.41 vs 0.32). With
   ``confident`` labels too few pixels of the blobby maps fall below ``conf_bg``, IRNet sees
   almost no negative pairs, learns no boundary and the walk floods the image. SGD without
   momentum, ``stage2_lr`` for the boundary branch and 10x for the displacement branch, weight
   decay 1e-4, polynomial decay (power 0.9), as the reference. Pseudo masks: random walk of the
   CAMs with ``(1 - B)^beta`` affinities, ``2^exp_times`` steps, radius ``rw_radius``, then
   ``bg_threshold`` (:func:`.affinity.masks_from_random_walk`) on every positive train image
   (negative images get empty masks).
3. **Segmentation** (``stage3_epochs``, ``stage3_lr``): :class:`~.unet.UNet` over the same timm
   backbone (standard stride) trained with per-pixel BCE on the pseudo masks; the platform's
   optimiser (:func:`lesionsweep.training.build_optimizer`: ``optim.name``, ``optim.momentum``,
   ``optim.weight_decay`` on weights of rank >= 2), ``stage3_lr`` for the decoder and a tenth of
   it for the encoder (the reference's 1e-3 / 1e-4), polynomial decay.

Small images: pairs live on the 1/4 grid, and ``radius`` / ``rw_radius`` are read on the
reference's 128-pixel grid (512-px input) and scaled with the grid:
``max(2, round(r * min(grid) / 128))`` (:func:`effective_radius`; 512 px keeps 10 and 5, a 128-px
image gets 3 and 2 on its 32-pixel grid). Without the scaling the 2^8-step walk spreads over the
whole of a small grid; on the phantom (96 px, raw IR labels) the pseudo-mask Dice was 0.25
scaled against 0.13 clipped.

Evaluation and reports: classification AUROC on ``eval.split``; Dice (``sigmoid > 0.5`` /
masks, TP/FP/FN pooled over every known (image, class) pair, negatives with empty masks
included, and the per-image mean; :mod:`lesionsweep.metrics.dice`) on ``eval.split`` if it has
masks, else on ``val-loc`` when the dataset has it. Every report carries ``epoch``, a step counter
increasing across the stages (stage-1 epochs, then stage-2, then stage-3), and the latest value
of every metric so far. ``val/dice_pooled`` / ``val/dice_per_image`` are always the Dice of the
masks the pipeline would output at that point: stage-1 CAMs thresholded at ``cam_threshold`` on
images the classifier calls positive (``sigmoid(logit) > 0.5``) during stages 1 and 2, the U-Net
during stage 3. Stage keys: ``stage1/loss``, ``stage1/auroc``, ``stage1/cam_dice`` (that gated
CAM Dice), ``stage1/cam_dice_oracle`` (CAMs gated by the true labels), ``stage2/loss`` (+ its four
terms), ``stage2/pseudo_dice`` / ``stage2/pseudo_dice_per_image`` (random-walk masks with the
true labels on the Dice split), ``stage3/loss``.

Files (``out_dir``), written only once the datasets, the method and the selection metric are
known to build (a bad knob leaves no run folder), each atomically (temp file + rename, so a
crash never leaves a torn file): ``config.yaml``, ``metrics.jsonl``, ``tensorboard/`` (a scalar
per key measured at each step, and the ``val/*`` keys at every step), and per stage
``stageN/done.json`` (metrics, history and a fingerprint of the config keys the stage depends on),
``stageN/checkpoint/model.pt`` (rewritten every epoch; the folder is what the reporter gets),
``stage1/classifier.pt``, ``stage1/cams_train.npy`` (positive train images) and
``stage1/cams_loc.npy`` (the Dice split), float16 ``[n, K, h, w]`` normalised CAMs at stride 8,
each with ``cams_*_index.npy`` (dataset indices), ``stage1/logits_loc.npy``,
``stage2/irnet.pt``, ``stage2/pseudo_masks_train.npy`` (``np.packbits`` along the width of bool
``[n, K, H, W]``) with its index file, ``stage3/segmenter.pt``. With ``resume=True`` a stage whose
``done.json`` fingerprint matches the current config is loaded instead of re-run (a changed knob
re-runs its stage and the later ones); an interrupted stage restarts from its beginning. Before
stage N runs, the ``done.json`` of stages N..3 are removed, so after a crash inside it no later
stage counts as finished over inputs it was not made from.

Test splits: :func:`lesionsweep.training.evaluate` on a run folder calls the runner's
:func:`~.evaluation.evaluate_run`, which
scores the stage-1 classifier's logits (AUROC) and the stage-3
U-Net's masks (Dice, PxAP, ...) on any split with the platform's ``LocalizationSuite``.

Single process only: under an initialised multi-rank ``torch.distributed`` the pipeline refuses.
Mixed precision: bf16 autocast on CUDA when ``train.amp`` (and the GPU has bf16; otherwise fp32,
since the stages use no gradient scaler); CAMs, the IRNet losses and the random walk are float32.
"""

from __future__ import annotations

from ..runners import register_runner
from .evaluation import evaluate_run
from .fingerprint import STAGE_KNOBS
from .runner import WsmisRunner, reported_keys

__all__ = ["STAGE_KNOBS", "WsmisRunner", "evaluate_run", "reported_keys", "run_pipeline"]

run_pipeline = WsmisRunner.run_pipeline

register_runner("wsmis", WsmisRunner)
