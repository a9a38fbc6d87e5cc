"""The preview's transparent background (`preview.png`)."""

from __future__ import annotations

import numpy as np

from kiln_worker.pipelines.preview import transparent_preview


def test_coverage_becomes_alpha_and_edges_lose_the_black() -> None:
    shaded = np.zeros((4, 4, 3), dtype=np.uint8)
    coverage = np.zeros((4, 4, 3), dtype=np.uint8)
    shaded[1:3, 1:3] = (200, 100, 50)
    coverage[1:3, 1:3] = 255
    # An edge pixel half covered: the render blended (200, 100, 50) with black.
    shaded[0, 1] = (100, 50, 25)
    coverage[0, 1] = 128

    rgba = np.asarray(transparent_preview(shaded, coverage))
    assert rgba.shape == (4, 4, 4)
    assert rgba[0, 0].tolist() == [0, 0, 0, 0], "background: transparent"
    assert rgba[1, 1].tolist() == [200, 100, 50, 255], "inside: unchanged and opaque"
    edge = rgba[0, 1]
    assert edge[3] == 128
    assert np.abs(edge[:3].astype(int) - [199, 100, 50]).max() <= 1
