"""Exports shared by pipelines: the OBJ + MTL + texture archive (`output3d.zip`).

Seed 004 lists an `output3d.zip` holding the model as OBJ, its MTL and its texture, for
tools that do not read glTF. TRELLIS.2's `o_voxel.postprocess.to_glb` returns a
`trimesh.Trimesh` whose visual is a PBR material; trimesh writes it as OBJ with the base
colour as the diffuse map (`map_Kd`). Metallic and roughness have no standard MTL
statement and are left out; the GLB carries them.

trimesh is imported inside the function: it is in the `gpu` and `test` extras, not in
the worker's base install.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any


def mesh_to_obj_zip(mesh: Any, zip_path: Path, *, stem: str = "model") -> Path:
    """Write `mesh` (a `trimesh.Trimesh`) as `{stem}.obj`, `{stem}.mtl` and textures in a zip."""
    from trimesh.exchange.obj import export_obj

    exported = export_obj(  # type: ignore[no-untyped-call]
        mesh,
        include_normals=True,
        include_color=True,
        include_texture=True,
        return_texture=True,
        mtl_name=f"{stem}.mtl",
    )
    obj_text, assets = exported if isinstance(exported, tuple) else (exported, {})
    zip_path = Path(zip_path)
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{stem}.obj", obj_text)
        for name, data in sorted(assets.items()):
            # Already-compressed images gain nothing from deflate.
            compress = (
                zipfile.ZIP_STORED
                if name.lower().endswith((".png", ".jpg", ".jpeg", ".webp"))
                else zipfile.ZIP_DEFLATED
            )
            archive.writestr(name, data, compress_type=compress)
    return zip_path
