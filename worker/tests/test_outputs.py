"""The files the stand-in produces are real: a valid GLB, a PNG, an OBJ archive.

The GLB goes through the Khronos glTF Validator that kiln's own tests use
(tools/gltf-validate, installed by `make test`); without Node.js or the validator the
check is skipped, and the structural checks below still run.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest

from kiln_worker.export import mesh_to_obj_zip
from tests.standin import _textured_cube

VALIDATOR = Path(__file__).resolve().parents[2] / "tools" / "gltf-validate"


def test_obj_archive_holds_obj_mtl_and_texture(tmp_path: Path) -> None:
    archive = mesh_to_obj_zip(_textured_cube((10, 20, 30)), tmp_path / "output3d.zip")
    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
        obj = z.read("model.obj").decode()
        mtl = z.read("model.mtl").decode()
        textures = [n for n in names if n.endswith(".png")]
        assert textures and z.read(textures[0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mtllib model.mtl" in obj and obj.count("\nf ") == 12 and "\nvt " in obj
    assert f"map_Kd {textures[0]}" in mtl


def test_glb_structure(tmp_path: Path) -> None:
    glb = _textured_cube((200, 100, 50)).export(file_type="glb")
    magic, version, length = struct.unpack_from("<4sII", glb)
    assert (magic, version, length) == (b"glTF", 2, len(glb))
    chunk_length, chunk_type = struct.unpack_from("<I4s", glb, 12)
    assert chunk_type == b"JSON"
    gltf = json.loads(glb[20 : 20 + chunk_length])
    material = gltf["materials"][0]["pbrMetallicRoughness"]
    assert "baseColorTexture" in material and "metallicRoughnessTexture" in material
    assert (
        gltf["images"]
        and gltf["meshes"][0]["primitives"][0]["attributes"]["TEXCOORD_0"] is not None
    )


@pytest.mark.skipif(
    shutil.which("node") is None or not (VALIDATOR / "node_modules" / "gltf-validator").is_dir(),
    reason="the glTF validator is not installed (make test installs it)",
)
def test_glb_passes_the_khronos_validator(tmp_path: Path) -> None:
    path = tmp_path / "model.glb"
    path.write_bytes(_textured_cube((200, 100, 50)).export(file_type="glb"))
    result = subprocess.run(
        ["node", str(VALIDATOR / "validate.mjs"), "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    issues = json.loads(result.stdout)["issues"]
    assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, issues["messages"]


def test_preview_is_a_png() -> None:
    from PIL import Image

    from tests.standin import _draw_preview

    buffer = io.BytesIO()
    _draw_preview((1, 2, 3)).save(buffer, format="PNG")
    preview = Image.open(io.BytesIO(buffer.getvalue()))
    assert preview.size == (256, 256) and preview.mode == "RGBA"
    # Transparent around the cube, opaque on it (kiln shows it on any background).
    assert preview.getpixel((0, 0))[3] == 0 and preview.getpixel((255, 255))[3] == 0
    assert preview.getpixel((128, 128))[3] == 255
