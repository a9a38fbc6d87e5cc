"""The position map (`xyz_images.png`): where each pixel of a front view lies on the model.

The encoding (kiln's docs/formats.md says the same):

- PNG, 16 bits per channel, RGBA (colour type 6, bit depth 16).
- Inside the object (A = 65535): `(X, Y, Z) = (R, G, B) / 65535 − 0.5`, in `model.glb`'s
  frame — glTF's: +X right, +Y up, +Z towards the camera of the view, the model in the
  cube [−0.5, 0.5]³. Only the front surface is seen.
- Outside: A = 0 and R = G = B = 0.

TRELLIS.2 works in Blender's frame, Z up; `o_voxel.postprocess.to_glb` writes glTF's Y
up as `(x, y, z) → (x, z, −y)`. The view is taken from glTF's +Z, TRELLIS.2's −Y: the side
a glTF viewer shows first, and the one for which "+Z towards the camera" holds without
rotating the coordinates. The camera is far away with a narrow field of view (almost
orthographic) and frames the model's silhouette square, the way TRELLIS.2's
preprocessing frames the cut-out, so that the map and `pixel_images.png` overlap as
well as the model allows.

Pillow writes no 16-bit RGBA PNG, so the file is written here with zlib (a dozen lines
of the PNG specification); no other dependency is needed.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FULL = 65535
#: How far the camera stands from the model's front, in model units (the cube is 1).
#: Far enough that the back of the model looks at most 1 % smaller than its front.
CAMERA_DISTANCE = 100.0


def trellis_to_gltf(points: np.ndarray) -> np.ndarray:
    """TRELLIS.2's Z-up coordinates (…, 3) → glTF's Y-up ones, as `to_glb` converts them."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    return np.stack([x, z, -y], axis=-1)


def encode(points: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """(H, W, 3) glTF coordinates and an (H, W) inside mask → (H, W, 4) uint16 RGBA."""
    if points.shape[:2] != inside.shape or points.shape[-1] != 3:
        raise ValueError(f"points {points.shape} and mask {inside.shape} do not match")
    inside = inside.astype(bool)
    rgb = np.rint((points.astype(np.float64) + 0.5) * FULL)
    rgb = np.clip(np.nan_to_num(rgb, nan=0.0), 0, FULL).astype(np.uint16)
    rgb[~inside] = 0
    alpha = np.where(inside, FULL, 0).astype(np.uint16)
    return np.concatenate([rgb, alpha[..., None]], axis=-1)


def decode(rgba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 4) uint16 RGBA → (glTF coordinates, inside mask): the documented decoding."""
    return rgba[..., :3] / float(FULL) - 0.5, rgba[..., 3] > 0


def png16_bytes(rgba: np.ndarray) -> bytes:
    """A 16-bit RGBA PNG of an (H, W, 4) uint16 array (no filtering, one IDAT)."""
    if rgba.ndim != 3 or rgba.shape[2] != 4:
        raise ValueError(f"expected an (H, W, 4) array, got {rgba.shape}")
    height, width = rgba.shape[:2]
    rows = np.ascontiguousarray(rgba, dtype=">u2").reshape(height, width * 4).view(np.uint8)
    raw = np.concatenate([np.zeros((height, 1), dtype=np.uint8), rows], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def write_png16(rgba: np.ndarray, path: Path) -> Path:
    path.write_bytes(png16_bytes(rgba))
    return path


@dataclass
class FrontCamera:
    """A camera in TRELLIS.2's conventions (OpenCV: x right, y down, z forward)."""

    #: (4, 4) world → camera.
    extrinsics: np.ndarray
    #: (3, 3) normalised intrinsics (the image is [0, 1]²), as `MeshRenderer` takes them.
    intrinsics: np.ndarray
    near: float
    far: float


def front_camera(lower: np.ndarray, upper: np.ndarray) -> FrontCamera:
    """The camera looking at the model's front (TRELLIS.2's −Y side) along +Y, Z up,
    framing the bounding box `lower`–`upper` (TRELLIS.2 coordinates) square: the box's
    longer side in the picture (X or Z) fills the picture, centred."""
    lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    center_x, center_z = (lower[0] + upper[0]) / 2, (lower[2] + upper[2]) / 2
    half = max(upper[0] - lower[0], upper[2] - lower[2], 1e-6) / 2
    eye = np.array([center_x, lower[1] - CAMERA_DISTANCE, center_z])
    # Rows: the camera's right (+X), down (−Z) and forward (+Y) in world coordinates.
    rotation = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    extrinsics = np.eye(4)
    extrinsics[:3, :3] = rotation
    extrinsics[:3, 3] = -rotation @ eye
    # The nearest points (at CAMERA_DISTANCE) span exactly the picture; farther ones a bit less.
    focal = CAMERA_DISTANCE / (2 * half)
    intrinsics = np.array([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]])
    depth = upper[1] - lower[1]
    return FrontCamera(
        extrinsics=extrinsics,
        intrinsics=intrinsics,
        near=CAMERA_DISTANCE / 2,
        far=CAMERA_DISTANCE + depth + 1.0,
    )
