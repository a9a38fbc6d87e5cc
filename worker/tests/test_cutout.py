"""The cut-out (`pixel_images.png`): whose alpha, and TRELLIS.2's framing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from kiln_worker.pipelines import JobFailed
from kiln_worker.pipelines.cutout import Cutout, cut_out, frame_square, has_real_alpha


class Rembg:
    """Stands in for TRELLIS.2's `rembg_model`: records its calls, adds a disc of alpha."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, tuple[int, int]]] = []

    def __call__(self, image: Image.Image) -> Image.Image:
        self.seen.append((image.mode, image.size))
        mask = Image.new("L", image.size, 0)
        ImageDraw.Draw(mask).ellipse((10, 20, 49, 59), fill=255)
        image.putalpha(mask)
        return image


def trellis_preprocess_crop(rgba: Image.Image) -> Image.Image:
    """TRELLIS.2's preprocess_image crop, verbatim (trellis2_image_to_3d.py), without the
    premultiplication, to compare against."""
    output_np = np.array(rgba)
    alpha = output_np[:, :, 3]
    bbox = np.argwhere(alpha > 0.8 * 255)
    bbox = np.min(bbox[:, 1]), np.min(bbox[:, 0]), np.max(bbox[:, 1]), np.max(bbox[:, 0])
    center = (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
    size = max(bbox[2] - bbox[0], bbox[3] - bbox[1])
    size = int(size * 1)
    bbox = (
        center[0] - size // 2,
        center[1] - size // 2,
        center[0] + size // 2,
        center[1] + size // 2,
    )
    return rgba.crop(bbox)


def test_a_picture_without_alpha_goes_through_rembg_once() -> None:
    rembg = Rembg()
    picture = Image.new("RGB", (80, 70), (200, 30, 30))
    cutout = cut_out(picture, rembg)
    assert rembg.seen == [("RGB", (80, 70))]
    assert cutout.removed_background
    assert cutout.image.mode == "RGBA" and cutout.image.width == cutout.image.height
    alpha = np.asarray(cutout.image.getchannel("A"))
    assert alpha.min() == 0 and alpha.max() == 255, "rembg's alpha is kept"
    # What TRELLIS.2 gets is RGBA with real alpha: its own preprocessing takes the alpha
    # path, and its crop of the cut-out finds the same square, give or take the pixel
    # its arithmetic trims from the longer side each time (it frames the object's
    # extent minus one).
    image, preprocess = cutout.model_input()
    assert image.mode == "RGBA" and preprocess is True and has_real_alpha(image)
    again = trellis_preprocess_crop(image)
    assert again.width == again.height and image.width - 2 <= again.width <= image.width


def test_an_opaque_rgba_picture_is_treated_as_without_alpha() -> None:
    rembg = Rembg()
    cut_out(Image.new("RGBA", (60, 80), (1, 2, 3, 255)), rembg)
    assert rembg.seen == [("RGB", (60, 80))]


def test_a_picture_with_its_own_alpha_skips_rembg() -> None:
    rembg = Rembg()
    picture = Image.new("RGBA", (90, 60), (0, 0, 0, 0))
    ImageDraw.Draw(picture).rectangle((30, 10, 59, 49), fill=(10, 200, 10, 255))
    cutout = cut_out(picture, rembg)
    assert rembg.seen == []
    assert not cutout.removed_background
    expected = trellis_preprocess_crop(picture)
    assert cutout.image.size == expected.size
    assert np.array_equal(np.asarray(cutout.image), np.asarray(expected))


def test_a_palette_picture_keeps_its_transparency() -> None:
    rembg = Rembg()
    picture = Image.new("P", (40, 40), 0)
    picture.putpalette([0, 0, 0, 250, 0, 0])
    ImageDraw.Draw(picture).rectangle((10, 10, 29, 29), fill=1)
    picture.info["transparency"] = 0
    cutout = cut_out(picture, rembg)
    assert rembg.seen == [] and not cutout.removed_background
    # The square inside the opaque square is opaque throughout: TRELLIS.2 would remove
    # its background again, so it goes in as RGB, already preprocessed.
    assert cutout.image.size == (18, 18)
    assert cutout.model_input()[1] is False


def test_the_crop_is_trellis_crop() -> None:
    rembg = Rembg()
    picture = Image.new("RGB", (80, 70), (120, 120, 120))
    cutout = cut_out(picture, rembg)
    reference = Image.new("RGB", (80, 70), (120, 120, 120))
    expected = trellis_preprocess_crop(Rembg()(reference))
    assert np.array_equal(np.asarray(cutout.image), np.asarray(expected))


def test_large_pictures_are_scaled_like_trellis() -> None:
    rembg = Rembg()
    cut_out(Image.new("RGB", (2048, 1536), (9, 9, 9)), rembg)
    assert rembg.seen == [("RGB", (1024, 768))]


def test_a_square_filled_by_the_object_goes_in_as_rgb_without_preprocessing() -> None:
    cutout = Cutout(Image.new("RGBA", (32, 32), (5, 6, 7, 255)), removed_background=True)
    image, preprocess = cutout.model_input()
    assert image.mode == "RGB" and preprocess is False


def test_nothing_opaque_is_a_clear_failure() -> None:
    with pytest.raises(JobFailed, match="No object"):
        frame_square(Image.new("RGBA", (16, 16), (0, 0, 0, 100)))


@pytest.mark.parametrize("pixels", [[(5, 5)], [(5, 5), (6, 5)], [(5, 5), (6, 6)]])
def test_a_speck_is_no_object(pixels: list[tuple[int, int]]) -> None:
    """A pixel or two above the threshold would frame an empty square."""
    picture = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    for xy in pixels:
        picture.putpixel(xy, (200, 100, 50, 255))
    with pytest.raises(JobFailed, match="No object"):
        cut_out(picture, Rembg())


def test_the_smallest_object_is_framed() -> None:
    picture = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    for xy in ((5, 5), (7, 5)):
        picture.putpixel(xy, (200, 100, 50, 255))
    assert cut_out(picture, Rembg()).image.size == (2, 2)
