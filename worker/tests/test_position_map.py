"""The position map's encoding (`xyz_images.png`) and the front camera."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from kiln_worker.pipelines import position_map
from tests.png16 import read_png16


def test_known_positions_come_back_within_one_step() -> None:
    rng = np.random.default_rng(7)
    points = rng.uniform(-0.5, 0.5, size=(37, 53, 3))
    points[0, 0] = (-0.5, -0.5, -0.5)
    points[0, 1] = (0.5, 0.5, 0.5)
    inside = rng.uniform(size=(37, 53)) > 0.3
    inside[0, :2] = True

    data = position_map.png16_bytes(position_map.encode(points, inside))
    decoded = read_png16(data)
    xyz, found = position_map.decode(decoded)

    assert decoded.shape == (37, 53, 4)
    assert np.array_equal(found, inside)
    assert np.abs(xyz[inside] - points[inside]).max() <= 1 / 65535
    # The documented numpy decoding, on the file as read.
    assert np.abs(decoded[..., :3] / 65535.0 - 0.5 - points)[inside].max() <= 1 / 65535
    assert set(np.unique(decoded[..., 3])) == {0, 65535}
    assert not decoded[~inside].any(), "outside: A = 0 and R = G = B = 0"
    # The extremes of the cube are the extremes of the samples.
    assert decoded[0, 0, :3].tolist() == [0, 0, 0]
    assert decoded[0, 1, :3].tolist() == [65535, 65535, 65535]


def test_the_file_is_a_16_bit_rgba_png_other_readers_accept() -> None:
    samples = np.array([[[0x1234, 0xABCD, 0xFFFF, 0xFFFF], [0, 0, 0, 0]]], dtype=np.uint16)
    data = position_map.png16_bytes(samples)
    assert data[24:26] == bytes([16, 6]), "IHDR: bit depth 16, colour type 6 (RGBA)"
    image = Image.open(io.BytesIO(data))
    image.load()
    # Pillow checks the structure and reads the high byte of each sample.
    assert image.size == (2, 1)
    assert np.asarray(image).tolist() == [[[0x12, 0xAB, 0xFF, 0xFF], [0, 0, 0, 0]]]


def test_positions_outside_the_cube_are_clamped_not_wrapped() -> None:
    points = np.array([[[0.7, -0.9, np.nan]]])
    encoded = position_map.encode(points, np.ones((1, 1), dtype=bool))
    assert encoded[0, 0].tolist() == [65535, 0, 0, 65535]


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError):
        position_map.encode(np.zeros((4, 4, 3)), np.zeros((4, 5), dtype=bool))


def test_trellis_z_up_becomes_gltf_y_up_as_to_glb_writes_it() -> None:
    # o_voxel.postprocess.to_glb: vertices[:, 1], vertices[:, 2] = vertices[:, 2], -vertices[:, 1]
    trellis = np.array([[0.1, 0.2, 0.3]])
    expected = trellis.copy()
    expected[:, 1], expected[:, 2] = trellis[:, 2], -trellis[:, 1]
    assert np.allclose(position_map.trellis_to_gltf(trellis), expected)


def project(camera: position_map.FrontCamera, point: np.ndarray) -> tuple[float, float, float]:
    """OpenCV projection: (u, v) in [0, 1]² with v down, and the depth."""
    x, y, z = (camera.extrinsics @ np.append(point, 1.0))[:3]
    k = camera.intrinsics
    return k[0, 0] * x / z + k[0, 2], k[1, 1] * y / z + k[1, 2], z


def test_the_front_camera_sits_on_gltf_plus_z_and_frames_the_model() -> None:
    lower, upper = np.array([-0.3, -0.2, -0.4]), np.array([0.3, 0.25, 0.4])
    camera = position_map.front_camera(lower, upper)

    def seen(gltf: tuple[float, float, float]) -> tuple[float, float, float]:
        # A glTF point, as TRELLIS.2 holds it: (x, y, z)_glTF = (x, z, −y)_TRELLIS.
        x, y, z = gltf
        return project(camera, np.array([x, -z, y]))

    centre = seen((0.0, 0.0, 0.0))
    right, up, towards = seen((0.1, 0.0, 0.0)), seen((0.0, 0.1, 0.0)), seen((0.0, 0.0, 0.1))
    assert right[0] > centre[0], "glTF +X is to the right"
    assert up[1] < centre[1], "glTF +Y is up (rows run top to bottom)"
    assert towards[2] < centre[2], "glTF +Z is towards the camera"

    # The front face's corners span the picture along the longer side (Z, 0.8), centred.
    top_left = project(camera, np.array([lower[0], lower[1], upper[2]]))
    bottom_right = project(camera, np.array([upper[0], lower[1], lower[2]]))
    assert top_left[1] == pytest.approx(0.0) and bottom_right[1] == pytest.approx(1.0)
    assert top_left[0] == pytest.approx(0.5 - 0.3 / 0.8)
    assert bottom_right[0] == pytest.approx(0.5 + 0.3 / 0.8)
    # Everything lies between the clipping planes, and the back looks at most 1 % smaller.
    for y in (lower[1], upper[1]):
        depth = project(camera, np.array([0.0, y, 0.0]))[2]
        assert camera.near < depth < camera.far
    back = project(camera, np.array([lower[0], upper[1], upper[2]]))
    assert 0 < back[1] < 0.01
