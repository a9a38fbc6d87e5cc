"""Reads meshes with trimesh, an implementation independent of kiln's writers, and prints
what crates/formats/tests/roundtrip.rs compares (one JSON object per line).

    mesh_check.py stats FILE...           faces, vertices, bounds, watertightness
    mesh_check.py uv SOURCE.glb OTHER     largest UV difference between vertices at the
                                          same position (seams: the closest UV counts)
    mesh_check.py colors SOURCE.glb OTHER.ply
                                          vertex colours against trimesh's own sampling of
                                          the source's texture, matched by position

Faces are counted as written (process=False); watertightness is judged on the geometry
alone after merging vertices by position (process=True), as a slicer would: with UVs or
normals attached, trimesh would keep a textured model's seam vertices apart.
"""

import json
import sys

import numpy as np
import trimesh


def load(path, process):
    """One mesh from any file, a scene's geometry concatenated in world space."""
    loaded = trimesh.load(path, process=process, force="mesh")
    if not isinstance(loaded, trimesh.Trimesh):
        raise SystemExit(f"{path}: trimesh read {type(loaded).__name__}, not a mesh")
    return loaded


def stats(paths):
    for path in paths:
        raw = load(path, process=False)
        merged = trimesh.Trimesh(vertices=raw.vertices, faces=raw.faces, process=True)
        print(json.dumps({
            "file": path,
            "faces": int(len(raw.faces)),
            "vertices": int(len(raw.vertices)),
            "bounds": raw.bounds.tolist(),
            "watertight": bool(merged.is_watertight),
        }))


class Near:
    """Values of the source's vertices, found by position. The transforms of a node tree
    are computed in float32 by kiln and in float64 by trimesh, so the same vertex can
    differ in its last bits: positions are bucketed in cells of 1e-4, neighbouring cells
    searched too, and anything within 1e-5 matches."""

    CELL = 1e-4
    OFFSETS = [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)]

    def __init__(self, positions, values):
        self.cells = {}
        for position, value in zip(positions, values):
            key = tuple(np.floor(position / self.CELL).astype(np.int64))
            self.cells.setdefault(key, []).append((position, value))

    def values(self, position):
        key = np.floor(position / self.CELL).astype(np.int64)
        return [
            value
            for offset in self.OFFSETS
            for candidate, value in self.cells.get(tuple(key + offset), [])
            if np.abs(candidate - position).max() <= 1e-5
        ]


def closest(source_positions, source_values, other_positions, other_values):
    """Per vertex of the other file, the smallest difference to a source vertex at the
    same position; None for vertices with no source vertex there. Exact float32 matches
    (every vertex of a model without node transforms) are looked up directly; only the
    rest go through the slower search within 1e-5."""
    exact = {}
    for position, value in zip(source_positions.astype(np.float32), source_values):
        exact.setdefault(position.tobytes(), []).append(value)
    near = None
    out = []
    for position, value in zip(other_positions, other_values):
        candidates = exact.get(position.astype(np.float32).tobytes())
        if candidates is None:
            if near is None:
                near = Near(source_positions, source_values)
            candidates = near.values(position)
        out.append(min(float(np.abs(c - value).max()) for c in candidates)
                   if candidates else None)
    return out


def uvs(source_path, other_path):
    source = load(source_path, process=False)
    other = load(other_path, process=False)
    differences = closest(source.vertices, np.asarray(source.visual.uv, dtype=np.float64),
                          other.vertices, np.asarray(other.visual.uv, dtype=np.float64))
    matched = [d for d in differences if d is not None]
    print(json.dumps({"max_uv_difference": max(matched, default=0.0),
                      "unmatched": len(differences) - len(matched),
                      "vertices": len(differences)}))


def colors(source_path, other_path):
    source = load(source_path, process=False)
    other = load(other_path, process=False)
    # trimesh's own texture lookup, independent of kiln's bilinear sampling.
    expected = np.asarray(source.visual.to_color().vertex_colors, dtype=np.int64)[:, :3]
    actual = np.asarray(other.visual.vertex_colors, dtype=np.int64)[:, :3]
    differences = closest(source.vertices, expected, other.vertices, actual)
    matched = [d for d in differences if d is not None]
    print(json.dumps({
        "median_difference": float(np.median(matched)) if matched else None,
        "p95_difference": float(np.percentile(matched, 95)) if matched else None,
        "unmatched": len(differences) - len(matched),
        "vertices": len(differences),
    }))


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "stats":
        stats(args)
    elif mode == "uv" and len(args) == 2:
        uvs(*args)
    elif mode == "colors" and len(args) == 2:
        colors(*args)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
