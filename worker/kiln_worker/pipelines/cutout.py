"""The cut-out (`pixel_images.png`): the object on a transparent background, framed square.

TRELLIS.2's `Trellis2ImageTo3DPipeline.preprocess_image` does three things: it removes
the background (unless the picture already has real alpha), crops a square around the
object, and premultiplies the colour by alpha, dropping alpha. The worker wants the
RGBA picture of the middle step — it is the cut-out kiln shows and relief pairs with the
position map — so it does the first two steps here, the way TRELLIS.2 does them, and
hands the RGBA cut-out to `run(..., preprocess_image=True)`. TRELLIS.2 then takes its
"has alpha" path: the crop finds the same square again and no second background removal
runs.

numpy is imported at module level: this module is only imported by pipelines that run
(TRELLIS.2's environment and the tests' stand-in both have it), not by the worker's core.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .base import JobFailed

#: TRELLIS.2 scales the picture down so that its longer side is at most this.
MAX_SIDE = 1024
#: TRELLIS.2 frames the pixels whose alpha is above this fraction of opaque.
FRAME_ALPHA = 0.8
NO_OBJECT = (
    "No object was found in the picture: the background removal left nothing opaque, "
    "or only a pixel or two."
)


@dataclass
class Cutout:
    """The cut-out, and what to hand to TRELLIS.2's `run` so it reuses it."""

    #: RGBA, square, the object framed as TRELLIS.2 frames it.
    image: Image.Image
    #: Whether the background was removed here (False: the picture's own alpha was used).
    removed_background: bool

    def model_input(self) -> tuple[Image.Image, bool]:
        """The picture for `run` and its `preprocess_image` flag.

        TRELLIS.2 only trusts alpha when some pixel is not opaque; a cut-out whose square
        is entirely opaque (the object fills it) would get a second background removal.
        Its RGB is then exactly what `preprocess_image` would produce (the crop is the
        whole square, the premultiplication multiplies by one), so it goes in as is.
        """
        if has_real_alpha(self.image):
            return self.image, True
        return self.image.convert("RGB"), False


def has_real_alpha(image: Image.Image) -> bool:
    """TRELLIS.2's test: RGBA with at least one pixel that is not fully opaque."""
    if image.mode != "RGBA":
        return False
    return bool(np.asarray(image.getchannel("A")).min() < 255)


def normalise_mode(image: Image.Image) -> Image.Image:
    """RGB or RGBA; palette pictures keep their transparency as alpha."""
    if image.mode in ("RGB", "RGBA"):
        return image
    if "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info):
        return image.convert("RGBA")
    return image.convert("RGB")


def scale_down(image: Image.Image) -> Image.Image:
    """TRELLIS.2's first step: the longer side at most `MAX_SIDE`, Lanczos."""
    scale = min(1, MAX_SIDE / max(image.size))
    if scale >= 1:
        return image
    size = (int(image.width * scale), int(image.height * scale))
    return image.resize(size, Image.Resampling.LANCZOS)


def frame_square(rgba: Image.Image) -> Image.Image:
    """Crop the square TRELLIS.2 crops: centred on the opaque pixels' box, its longer side.

    The arithmetic is TRELLIS.2's, rounding included, so that its own crop of the result
    lands on the same square. Parts of the square outside the picture come out
    transparent (Pillow pads a crop with zeros).
    """
    alpha = np.asarray(rgba.getchannel("A"))
    found = np.argwhere(alpha > FRAME_ALPHA * 255)
    if found.size == 0:
        raise JobFailed(NO_OBJECT)
    left, top = np.min(found[:, 1]), np.min(found[:, 0])
    right, bottom = np.max(found[:, 1]), np.max(found[:, 0])
    center = (left + right) / 2, (top + bottom) / 2
    size = int(max(right - left, bottom - top))
    if size < 2:  # the square would be empty (its half side rounds to 0)
        raise JobFailed(NO_OBJECT)
    box = (
        center[0] - size // 2,
        center[1] - size // 2,
        center[0] + size // 2,
        center[1] + size // 2,
    )
    return rgba.crop(box)  # type: ignore[arg-type]


def cut_out(
    image: Image.Image, remove_background: Callable[[Image.Image], Image.Image]
) -> Cutout:
    """The RGBA cut-out of `image`: its own alpha if it has real alpha, else
    `remove_background(rgb)` (TRELLIS.2's `rembg_model`, which returns RGBA)."""
    image = scale_down(normalise_mode(image))
    if has_real_alpha(image):
        return Cutout(frame_square(image), removed_background=False)
    rgba = remove_background(image.convert("RGB"))
    if rgba.mode != "RGBA":
        raise JobFailed(f"the background removal returned a {rgba.mode} picture, not RGBA")
    return Cutout(frame_square(rgba), removed_background=True)
