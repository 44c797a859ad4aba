"""The QC thumbnail of one slide: tissue mask, small fragments, pen ink and kept patches drawn on the thumbnail."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd

from duvflow.core.io import atomic_path
from duvflow.slides.status import TilingStatus
from duvflow.slides.tissue import TissueMask

__all__ = ["render_message", "render_qc", "save_png"]

QC_MAX = 1024  # longest edge of the QC thumbnail PNG


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType
        return ImageFont.load_default()


def render_qc(rgb: np.ndarray, tissue: TissueMask, thumb_ds: float, table: pd.DataFrame, status: TilingStatus,
              pen: np.ndarray | None = None):
    """Thumbnail with the tissue mask (green tint, yellow outline), pen ink (magenta) and kept patches (cyan).

    The mask is shrunk to the QC size so that any covered QC pixel shows tissue: a fragment a few
    thumbnail pixels wide stays visible, and a small one gets a ring drawn around it.
    """
    from PIL import Image, ImageDraw
    from scipy import ndimage

    h, w = tissue.mask.shape
    q = min(1.0, QC_MAX / max(h, w))
    qw, qh = max(1, round(w * q)), max(1, round(h * q))
    base = Image.fromarray(rgb)
    base = base.resize((qw, qh), Image.Resampling.BOX) if q < 1 else base
    m = _shrink(tissue.mask, (qw, qh))
    img = np.asarray(base).astype(np.float32)
    img[m] = img[m] * 0.7 + np.array([0, 255, 0], np.float32) * 0.3
    if pen is not None and pen.any():
        ink = _shrink(pen, (qw, qh))
        img[ink] = img[ink] * 0.4 + np.array([255, 0, 255], np.float32) * 0.6
    outline = m & ~ndimage.binary_erosion(m, np.ones((3, 3), bool), border_value=1)
    img[outline] = (255, 230, 0)
    out = Image.fromarray(img.astype(np.uint8))
    draw = ImageDraw.Draw(out)
    labels, n = ndimage.label(m)
    if 0 < n <= 50 and tissue.fraction < 0.05:  # a slide of small fragments: ring them, a tint alone would hide them
        for sl in ndimage.find_objects(labels):
            ys, xs = sl
            if (ys.stop - ys.start) * (xs.stop - xs.start) < 0.001 * qw * qh:
                cy, cx, r = (ys.start + ys.stop) / 2, (xs.start + xs.stop) / 2, max(8, ys.stop - ys.start, xs.stop - xs.start)
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=(255, 230, 0), width=2)
    s = q / thumb_ds  # QC pixels per level-0 pixel
    for x, y, e in zip(table["x"].to_numpy(), table["y"].to_numpy(), table["size_level0"].to_numpy(), strict=True):
        draw.rectangle([x * s, y * s, (x + e) * s - 1, (y + e) * s - 1], outline=(0, 200, 255))

    mpp = f"{status.mpp:.4g} um/px ({status.mpp_source})" if status.mpp else "no MPP"
    area = (f"{status.tissue_area_mm2:.2f} mm2" if status.tissue_area_mm2 is not None
            else f"{status.tissue_area_px:.3g} px")
    filtered = status.n_filtered_background + status.n_filtered_focus + status.n_filtered_pen
    lines = [(f"{status.slide_id} ({status.label}): {status.status}, {status.n_patches} patches "
             f"of {status.patch_size} px at level {status.level}"
              + (f" ({filtered} dropped by patch QC)" if filtered else "")),
             (f"background {status.background} ({status.background_method}; "
              f"{'found' if status.background_found else 'none in view: all tissue'}), "
              f"tissue {100 * (status.tissue_fraction or 0):.1f}% = {area}, {mpp}"),
             "green: tissue mask, yellow: outline (rings: small fragments), magenta: pen, cyan: kept patches"]
    if status.reason:
        lines.insert(1, status.reason)
    return _with_header(out, lines)


def _shrink(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``mask`` at ``size`` (w, h): a pixel is set when any part of it is covered."""
    from PIL import Image

    if mask.shape[::-1] == size:
        return mask
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BOX)) > 0


def _with_header(img, lines: list[str]):
    from PIL import Image, ImageDraw

    font = _font(14)
    width = max(img.width, 640)
    line_h = 18
    header = 8 + line_h * len(lines)
    canvas = Image.new("RGB", (width, img.height + header), (32, 32, 32))
    canvas.paste(img, (0, header))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((6, 4 + i * line_h), line, fill=(255, 255, 255), font=font)
    return canvas


def render_message(slide_id: str, label: str, title: str, text: str):
    """A QC image that says why there is no thumbnail (the slide could not be read)."""
    from PIL import Image, ImageDraw

    body = [f"{slide_id} ({label}): {title}"]
    for para in text.splitlines():
        body.extend(textwrap.wrap(para, 90) or [""])
    img = Image.new("RGB", (800, max(200, 30 + 20 * len(body))), (60, 20, 20))
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(body):
        draw.text((10, 10 + i * 20), line, fill=(255, 220, 220), font=_font(15 if i == 0 else 13))
    return img


def save_png(img, path) -> None:
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", compress_level=3)
