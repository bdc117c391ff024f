"""A synthetic frontal chest film with exact lesion boxes and masks: the embedded default dataset.

Every image is rendered from ``(spec, stream, index)`` alone, so no files are needed, item ``i`` of
a split never depends on the order of access or on the split's size, and train/val/test come
from disjoint seed streams.

What is drawn (grayscale, bone and fluid white, air black, as on a chest film): a torso with
shoulders and a rounded soft-tissue profile, two lung fields of varying shape (apex, lateral wall,
costophrenic angle, diaphragm dome), mediastinum with trachea and aortic knob, the heart, spine,
clavicles, posterior and anterior ribs, vascular markings that fade towards the periphery, hila,
a gastric bubble, exposure variation and film grain. Lesion classes, in this order
(:data:`PHANTOM_CLASSES`), differ in size and appearance roughly as the NIH box classes do:

* ``nodule`` -- small round opacity (diameter about 2--8 % of the image side);
* ``mass`` -- larger lobulated opacity (about 8--25 %);
* ``cardiomegaly`` -- an enlarged heart silhouette (cardiothoracic ratio above 0.5); its mask is
  the whole heart;
* ``effusion`` -- basal opacity with a meniscus rising along the lateral chest wall, blunting
  the costophrenic angle (one or both sides);
* ``pneumothorax`` -- a peripheral crescent without lung markings, bounded by a thin visible
  pleural line.

Conventions (those of :mod:`lesionsweep.data.types`): images are ``uint8`` ``[H, W]`` with
``H == W == image_size``; boxes are ``float32`` rows ``(class_index, x0, y0, x1, y1)`` in
continuous pixel coordinates, the tight box of the lesion's mask (``x0`` = min column,
``x1`` = max column + 1, same for rows); masks are ``bool`` ``[K, H, W]``, one plane per class, the
union of that class's lesions. Lesions of one class never touch, so each 8-connected component of
a mask plane is exactly one lesion and has exactly one box.

Knobs (:class:`PhantomSpec`): image size, prevalence per class, difficulty (lower lesion
contrast, more size jitter, more noise) and an optional shortcut confounder: a radio-opaque tube
(chest drain or nasogastric tube) that appears with probability ``confounder_prob`` on images
that carry ``confounder_class`` and with ``confounder_base_rate`` on images that do not. The tube
is drawn from its own random stream, so switching the confounder on or off changes only the tube,
never the anatomy or the lesions.

Speed (``benchmarks/bench_phantom.py``; target >= 500 images/s at 256 px on one core): at these
sizes every numpy call costs about a microsecond whatever its size, so the renderer is written to
make few of them. The anatomy is drawn at half resolution (at least 64 px) on cropped windows and
upsampled bilinearly; fields that are sums or products of a row and a column profile come from
small matrix products (the four terms of both lungs' signed distance are one batched product,
the row profiles of torso, mediastinum and trachea another); clipping uses OpenCV thresholds.
Vessel trees, rib cages, film grain, clavicles, vertebrae and gastric bubbles come from small
per-size banks (fixed seeds, stored as scaled ``float32``) that each image shifts by whole work
pixels, mirrors and mixes; the tone curve is a lookup table. Nodules and masses are drawn at full
resolution. The masks of cardiomegaly, effusion and pneumothorax are cut at full resolution from
the same signed-distance fields that drew them, upsampled exactly like the image (at factor 2
only the block around the window). Item seeds are BLAKE2b hashes of ``(seed, stream, index)``.
"""

from __future__ import annotations

from .dataset import PhantomDataset
from .preview import save_preview
from .render import render_phantom, split_stream
from .spec import PHANTOM_CLASSES, PhantomItem, PhantomSpec

__all__ = [
    "PHANTOM_CLASSES",
    "PhantomSpec",
    "PhantomItem",
    "PhantomDataset",
    "render_phantom",
    "save_preview",
    "split_stream",
]
