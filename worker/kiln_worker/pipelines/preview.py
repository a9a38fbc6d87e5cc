"""The preview (`preview.png`): one shaded view of the model on a transparent background.

TRELLIS.2's PBR renderer composites the shaded layers over black (its `bg_color` option
is not used) and returns the coverage of the first layer as `mask` (anti-aliased by the
supersampling); `render_frames` hands both over as 8-bit (H, W, 3) arrays. The coverage
becomes the PNG's alpha, and the colour is divided by it where it is partial, so that
the edges do not carry a dark fringe from the black they were blended with (PNG alpha is
straight, not premultiplied). Tone mapping comes after the blend in TRELLIS.2, so the
division is an approximation at the edges only; inside, coverage is 1 and nothing
changes.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def transparent_preview(shaded: np.ndarray, coverage: np.ndarray) -> Image.Image:
    """RGBA preview from a shaded (H, W, 3) uint8 render over black and its coverage,
    (H, W) or (H, W, C) uint8 (the first channel is taken)."""
    if coverage.ndim == 3:
        coverage = coverage[..., 0]
    if shaded.shape[:2] != coverage.shape:
        raise ValueError(f"render {shaded.shape} and coverage {coverage.shape} do not match")
    alpha = coverage.astype(np.float64) / 255.0
    rgb = shaded[..., :3].astype(np.float64)
    partial = alpha > 0
    rgb[partial] = rgb[partial] / alpha[partial, None]
    rgb[~partial] = 0
    rgba = np.concatenate(
        [np.clip(np.rint(rgb), 0, 255), coverage[..., None].astype(np.float64)], axis=-1
    ).astype(np.uint8)
    return Image.fromarray(rgba)  # (H, W, 4) uint8 is RGBA
