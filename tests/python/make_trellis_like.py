"""Writes a GLB shaped like TRELLIS.2's output, for tests and benchmarks of
crates/formats: trimesh exports it exactly as TRELLIS.2's `example.py` does
(`mesh.export(..., extension_webp=True)`), so its textures are WebP behind
`EXT_texture_webp` (required, with no core `source`), with a PBR material holding an RGBA
base colour and a metallic-roughness texture, vertex normals and split UV seams.

The shape is a displaced UV sphere: a grid of n × n quads (2n² − 2n triangles, as the
poles' rows lose one each), closed once welded by position, deterministic
(no random numbers), about 1 m across, Y up.

    make_trellis_like.py OUT.glb [--triangles 500000] [--texture 2048]
"""

import argparse
import math

import numpy as np
import trimesh
from PIL import Image


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--triangles", type=int, default=500_000)
    parser.add_argument("--texture", type=int, default=2048)
    args = parser.parse_args()

    n = max(4, int(math.sqrt(args.triangles / 2)))
    theta = np.linspace(0.0, math.pi, n + 1)  # pole to pole
    phi = np.linspace(0.0, 2.0 * math.pi, n + 1)  # the seam column is duplicated
    t, p = np.meshgrid(theta, phi, indexing="ij")
    bumps = 1.0 + 0.04 * np.sin(7 * t) * np.cos(5 * p) + 0.02 * np.sin(19 * p)
    radius = 0.5 * bumps
    vertices = np.stack([
        radius * np.sin(t) * np.cos(p),
        radius * np.cos(t),
        radius * np.sin(t) * np.sin(p),
    ], axis=-1).reshape(-1, 3)
    # The seam column repeats the first one, and each pole's row repeats one point: the
    # same floats exactly, so the surface is closed once welded by position.
    grid = vertices.reshape(n + 1, n + 1, 3)
    grid[:, n] = grid[:, 0]
    vertices[: n + 1] = [0.0, 0.5 * bumps[0, 0], 0.0]
    vertices[-(n + 1):] = [0.0, -0.5 * bumps[-1, 0], 0.0]
    uv = np.stack([p / (2 * math.pi), 1.0 - t / math.pi], axis=-1).reshape(-1, 2)

    rows = np.arange(n)[:, None] * (n + 1)
    cols = np.arange(n)[None, :]
    a = (rows + cols).ravel()
    b, c, d = a + 1, a + n + 1, a + n + 2
    faces = np.concatenate([np.stack([a, c, b], 1), np.stack([b, c, d], 1)])
    # The triangles touching a pole with two corners have no area: left out, the surface
    # is closed (2n² − 2n triangles remain).
    corners = vertices[faces]
    flat = (np.all(corners[:, 0] == corners[:, 1], axis=1)
            | np.all(corners[:, 1] == corners[:, 2], axis=1)
            | np.all(corners[:, 0] == corners[:, 2], axis=1))
    faces = faces[~flat]

    side = args.texture
    y, x = np.mgrid[0:side, 0:side] / side
    base = np.stack([
        128 + 100 * np.sin(12 * x),
        128 + 100 * np.cos(9 * y),
        128 + 60 * np.sin(5 * (x + y)),
        np.full_like(x, 255),
    ], axis=-1).astype(np.uint8)
    roughness = (128 + 100 * np.sin(4 * x) * np.cos(6 * y)).astype(np.uint8)
    metallic = (200 * (x > 0.5)).astype(np.uint8)
    mr = np.stack([np.zeros_like(roughness), roughness, metallic], axis=-1)

    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=Image.fromarray(base, "RGBA"),
        metallicRoughnessTexture=Image.fromarray(mr, "RGB"),
        metallicFactor=1.0,
        roughnessFactor=1.0,
        alphaMode="OPAQUE",
        doubleSided=False,
    )
    # Vertex normals: the area-weighted sum of the faces' normals, computed here with
    # numpy; trimesh's own needs scipy, and without it falls back to a slow path that
    # takes many minutes at 500 000 triangles.
    corners = vertices[faces]
    face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(normals, faces[:, k], face_normals)
    # Seam and pole copies share their normal, as one welded vertex would have it.
    keys = np.unique(vertices, axis=0, return_inverse=True)[1].ravel()
    welded = np.zeros((keys.max() + 1, 3))
    np.add.at(welded, keys, normals)
    normals = welded[keys]
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    mesh = trimesh.Trimesh(
        vertices=vertices,
        faces=faces,
        vertex_normals=normals,
        visual=trimesh.visual.TextureVisuals(uv=uv, material=material),
        process=False,
    )
    mesh.export(args.out, file_type="glb", extension_webp=True)


if __name__ == "__main__":
    main()
