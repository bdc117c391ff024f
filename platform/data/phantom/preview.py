"""A PNG grid of phantoms with their boxes (``lesionsweep preview``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .render import render_phantom
from .spec import PHANTOM_CLASSES, PhantomSpec, _check_int

_PREVIEW_COLORS = ((255, 80, 80), (255, 190, 40), (80, 200, 255), (90, 230, 90), (220, 110, 255))


def save_preview(
    path: str | Path,
    n: int = 8,
    image_size: int = 256,
    seed: int = 0,
    *,
    prevalence: float | Mapping[str, float] = 0.4,
    difficulty: float = 0.3,
    confounder_class: str | None = "effusion",
) -> Path:
    """Write a PNG grid of ``n`` training phantoms with their lesion boxes drawn.

    Boxes are coloured by class (legend at the bottom); the confounder tube's box, where one was
    drawn, is dashed white. Returns the path written.
    """
    from PIL import Image, ImageDraw

    n = _check_int("n", n, 1, 64)
    spec = PhantomSpec(
        image_size=image_size,
        prevalence=prevalence,
        difficulty=difficulty,
        confounder_class=confounder_class,
        seed=seed,
    )
    cols = min(n, 4)
    rows = -(-n // cols)
    gap, legend = 4, 18
    s = spec.image_size
    sheet = Image.new(
        "RGB", (cols * (s + gap) + gap, rows * (s + gap) + gap + legend), (20, 20, 20)
    )
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        item = render_phantom(spec, 0, i)
        ox, oy = gap + (i % cols) * (s + gap), gap + (i // cols) * (s + gap)
        sheet.paste(Image.fromarray(item.image).convert("RGB"), (ox, oy))
        for cls, x0, y0, x1, y1 in item.boxes.tolist():
            draw.rectangle(
                (ox + x0, oy + y0, ox + x1 - 1, oy + y1 - 1),
                outline=_PREVIEW_COLORS[int(cls)],
                width=max(1, s // 200),
            )
        tb = item.meta["confounder_box"]
        if tb is not None:
            x0, y0, x1, y1 = tb
            for t0 in range(int(x0), int(x1), 6):
                draw.line((ox + t0, oy + y0, ox + min(t0 + 3, x1), oy + y0), fill=(255, 255, 255))
                draw.line((ox + t0, oy + y1, ox + min(t0 + 3, x1), oy + y1), fill=(255, 255, 255))
    x = gap
    y = sheet.height - legend + 3
    for name, col in zip(PHANTOM_CLASSES, _PREVIEW_COLORS, strict=True):
        draw.rectangle((x, y + 2, x + 10, y + 12), outline=col, width=2)
        draw.text((x + 14, y), name, fill=col)
        x += 14 + 7 * len(name) + 12
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
